"""Distillation with unlabeled data (SimCLRv2, Chen et al. 2020b): a student matches a teacher's predictions.

The teacher is a model dir with a classifier head (`sslforge eval linear` writes one); the student,
any backbone plus a linear classifier, learns from unlabeled images to reproduce the teacher's
softened class distribution at temperature t. The student's classifier becomes its model dir's head,
so the student can classify (and be served) without ever seeing a label.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.ground.modeldir import load_model_dir
from pretrain.methods.base import Method
from pretrain.methods.ema import frozen_copy
from pretrain.methods.losses import distillation_loss
from pretrain.methods.recipe import Recipe


class Distill(Method):
    name = "distill"
    default_recipe = Recipe(source="SimCLR's optimiser: +0.145 over random init in 10 min "
                                   "(docs/benchmarks/learning.md)")

    def __init__(self, backbone: nn.Module, feature_dim: int, teacher: str = "", temperature: float = 1.0):
        super().__init__(backbone, feature_dim)
        if not teacher:
            raise ValueError("distillation needs a teacher: `sslforge distill --teacher RUN_DIR` (a model dir with "
                             "a head from `sslforge eval linear`)")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive (got {temperature})")
        model = load_model_dir(teacher)
        head = model.load_head()
        self.classes = list(model.classes)
        self.teacher = frozen_copy(nn.Sequential(model.load_backbone(), head)).eval()
        self.teacher_size = model.preprocessing.crop
        self.classifier = nn.Linear(feature_dim, len(self.classes))
        self.temperature = temperature

    def train(self, mode: bool = True) -> "Distill":
        super().train(mode)
        self.teacher.eval()  # the teacher's batch norms keep their statistics
        return self

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        x = torch.cat(views[:2])
        with torch.no_grad():
            t_in = x if x.shape[-1] == self.teacher_size else F.interpolate(
                x, size=(self.teacher_size, self.teacher_size), mode="bilinear", antialias=True, align_corners=False)
            teacher_logits = self.teacher(t_in)
        student_logits = self.classifier(self.backbone(x))
        agreement = (student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean()
        return distillation_loss(student_logits, teacher_logits, self.temperature), {"agreement": float(agreement)}

    def trained_head(self) -> tuple[nn.Linear, list[str]]:
        return self.classifier, self.classes
