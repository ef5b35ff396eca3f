"""DINO (Caron et al. 2021): self-distillation with no labels.

A student (backbone + DINO head) matches an EMA teacher's centred and sharpened outputs: the teacher
sees the 2 global crops, the student every crop (the one-device default recipe has no local crops). The
teacher temperature warms up linearly, the teacher momentum rises to 1 on a cosine schedule, and the head's
last layer is frozen for the first epochs; all three read the training progress, so none needs code in the
trainer.
"""
from __future__ import annotations

import torch
from torch import nn

from pretrain.ground.heads import DINOHead
from pretrain.methods.base import Method, encode_views
from pretrain.methods.ema import cosine_momentum, ema_update, frozen_copy
from pretrain.methods.losses import DINOLoss
from pretrain.methods.recipe import Recipe, paper

GLOBAL_VIEWS = 2


class DINO(Method):
    name = "dino"
    default_views = "multicrop"
    default_recipe = Recipe(
        "sgd", 0.12, 5e-4, transform_args={"local_views": 0},
        method_args={"out_dim": 2048, "head_bn": True, "head_layers": 2, "momentum_base": 0.99, "teacher_temp": 0.04,
                     "warmup_teacher_temp": 0.04, "freeze_last_layer_epochs": 0.0},
        source="SGD with weight decay 5e-4, 2 global crops, a 2-layer head onto 2048 prototypes: +0.077 over random "
               "init in 30 min at batch 64 on one CPU core (docs/benchmarks/learning.md)")
    paper_recipe = paper("adamw", 5e-4, 0.04, "Caron et al. 2021, sec. 4 (ViT)")
    skips_parameters = True  # frozen last layer

    def __init__(self, backbone: nn.Module, feature_dim: int, out_dim: int = 65536, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, student_temp: float = 0.1, teacher_temp: float = 0.07,
                 warmup_teacher_temp: float = 0.04, warmup_teacher_temp_epochs: float = 30.0,
                 center_momentum: float = 0.9, momentum_base: float = 0.996, freeze_last_layer_epochs: float = 1.0,
                 head_bn: bool = False, head_layers: int = 3):
        super().__init__(backbone, feature_dim)
        self.head = DINOHead(feature_dim, out_dim, hidden_dim, bottleneck_dim, batch_norm=head_bn,
                             mlp_layers=head_layers)
        self.teacher_backbone = frozen_copy(backbone)
        self.teacher_head = frozen_copy(self.head)
        self.criterion = DINOLoss(out_dim, student_temp, center_momentum)
        self.teacher_temp, self.warmup_teacher_temp = teacher_temp, warmup_teacher_temp
        self.warmup_teacher_temp_epochs, self.momentum_base = warmup_teacher_temp_epochs, momentum_base
        self.freeze_last_layer_epochs = freeze_last_layer_epochs

    def current_teacher_temp(self) -> float:
        ramp = min(1.0, self.progress.epoch / self.warmup_teacher_temp_epochs) if self.warmup_teacher_temp_epochs else 1
        return self.warmup_teacher_temp + ramp * (self.teacher_temp - self.warmup_teacher_temp)

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        freeze = self.progress.epoch < self.freeze_last_layer_epochs
        student = encode_views(lambda x: self.head(self.backbone(x), freeze_last=freeze), views)
        with torch.no_grad():
            teacher = encode_views(lambda x: self.teacher_head(self.teacher_backbone(x)), views[:GLOBAL_VIEWS])
        temp = self.current_teacher_temp()
        return self.criterion(student, teacher, temp), {"teacher_temp": temp}

    def after_step(self, step: int, total_steps: int) -> None:
        momentum = cosine_momentum(step + 1, total_steps, self.momentum_base)
        ema_update(self.teacher_backbone, self.backbone, momentum)
        ema_update(self.teacher_head, self.head, momentum)
