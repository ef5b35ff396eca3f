"""Feature distillation: a student learns, with no labels, to reproduce a frozen teacher's features.

The teacher is any pretrained model (a timm or torchvision name, a model dir, a weights file:
pretrain/methods/teacher.py), CNN or ViT, and sees the same view as the student (resized and renormalised to its
own input). Two terms:
- the student's pooled features, through a small projector (2-layer MLP), against the teacher's embedding;
- where both give spatial features (a CNN's last feature map, a ViT's patch tokens), the student's map through a
  1x1 projection against the teacher's map resampled to the student's grid (averaged over the teacher cells a
  student cell covers, or bilinear when the teacher's grid is coarser), location by location,
  weighted by `patch_weight`.
Both use `loss`: cosine (1 - cosine similarity, the default) or smooth_l1 (pretrain/methods/losses.py).

The teacher runs under no_grad, in bf16 autocast on a GPU that supports it (`teacher_precision`), and is kept out
of the method's modules: no checkpoint, optimizer or model dir holds it; the model dir's backbone is the student.
`cache_teacher` keeps the teacher's outputs of every (image, view) once computed, for fixed views (no random
augmentation); the first cached values met are checked against a fresh computation, and random views are refused.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.ground.backbones import FeatureMapTap
from pretrain.ground.distributed import all_reduce
from pretrain.ground.errors import ConfigError
from pretrain.ground.heads import ProjectionHead
from pretrain.methods.base import Method
from pretrain.methods.losses import FEATURE_LOSSES, feature_distillation_loss
from pretrain.methods.recipe import Recipe
from pretrain.methods.teacher import load_teacher

CACHE_TOLERANCE = 1e-3  # relative difference between a cached and a fresh teacher output of a fixed view


def _tap(net: nn.Module) -> FeatureMapTap | None:
    try:
        return FeatureMapTap(net)
    except ConfigError:
        return None


def resample(fmap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A teacher's map [B, C, h, w] on the student's grid: averaged over the cells each student cell covers when
    the teacher's grid is finer (adaptive average pooling), bilinear when it is coarser."""
    if tuple(fmap.shape[-2:]) == tuple(size):
        return fmap
    if fmap.shape[-2] >= size[0] and fmap.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(fmap, size)
    return F.interpolate(fmap, size=size, mode="bilinear", align_corners=False)


class DistillFeatures(Method):
    name = "distill_features"
    default_recipe = Recipe(source="SimCLR's optimiser and views; not tuned for distillation yet (docs/pretrained.md)")

    def __init__(self, backbone: nn.Module, feature_dim: int, teacher: str = "", teacher_backbone: str = "",
                 teacher_image_size: int = 0, loss: str = "cosine", patch_weight: float = 1.0,
                 proj_hidden_dim: int = 1024, teacher_precision: str = "auto", cache_teacher: bool = False,
                 num_images: int | None = None):
        super().__init__(backbone, feature_dim)
        if loss not in FEATURE_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(FEATURE_LOSSES)} (got {loss!r})")
        if teacher_precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"teacher_precision must be auto, bf16 or fp32 (got {teacher_precision!r})")
        if patch_weight < 0:
            raise ValueError(f"patch_weight must be >= 0 (got {patch_weight})")
        net, self.teacher_input = load_teacher(teacher, teacher_backbone, teacher_image_size)
        object.__setattr__(self, "teacher", net)  # not a sub-module: never trained, saved or wrapped by DDP
        self.teacher_tap = _tap(net) if patch_weight else None
        self.student_tap = _tap(backbone) if patch_weight else None
        size = self.teacher_input["size"]
        with torch.no_grad():
            probe = net(torch.zeros(1, 3, size, size))
        self.teacher_dim = int(probe.shape[1])
        self.patch = self.teacher_tap is not None and self.student_tap is not None
        if patch_weight and not self.patch:
            which = "teacher" if self.teacher_tap is None else "student"
            warnings.warn(f"feature distillation: the {which} gives no spatial features; only the embedding is "
                          f"distilled", stacklevel=2)
        self.projector = ProjectionHead(feature_dim, proj_hidden_dim, self.teacher_dim, layers=2)
        if self.patch:
            self.patch_projector = nn.Conv2d(feature_dim, self.teacher_tap.map.shape[1], 1)
        self.loss, self.patch_weight, self.precision = loss, patch_weight, teacher_precision
        self.cache_teacher = cache_teacher
        self.needs = ("index",) if cache_teacher else ()
        if cache_teacher and not num_images:
            raise ValueError("cache_teacher keeps one entry per image: build it with the training set's num_images")
        self.num_images = num_images or 0
        self.cache: dict[int, tuple[torch.Tensor, ...]] = {}  # per view position: (filled, embedding[, map])
        self.cache_checked = False

    # -- the teacher -----------------------------------------------------------------------------
    def _teacher_input(self, x: torch.Tensor) -> torch.Tensor:
        mean0, std0 = (torch.tensor(v, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
                       for v in self.normalisation)
        mean, std = (torch.tensor(self.teacher_input[k], device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
                     for k in ("mean", "std"))
        x = (x.float() * std0 + mean0 - mean) / std
        size = self.teacher_input["size"]
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=x.shape[-1] > size,
                              align_corners=False)
        return x

    @torch.no_grad()
    def teacher_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher's embedding [B, D] and (with the patch term) its feature map [B, C, h, w], in float32."""
        if next(self.teacher.parameters()).device != x.device:
            self.teacher.to(x.device)
        bf16 = self.precision == "bf16" or (self.precision == "auto" and x.device.type == "cuda"
                                            and torch.cuda.is_bf16_supported())
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            emb = self.teacher(self._teacher_input(x)).float()
        fmap = self.teacher_tap.map.float() if self.patch else None
        return emb, fmap

    def _cached(self, view: int, x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher outputs for view position `view` of images `index`: from the cache where filled, else computed
        and stored. Until a cached value has been met (in any process) every output is computed, and the cached
        ones met are compared with it: views that are not fixed stop the run."""
        entry = self.cache.get(view)
        if entry is not None and self.cache_checked:
            filled, *stores = entry
            hit = filled[index]
            outs = [store[index] for store in stores]  # advanced indexing: copies
            if not hit.all():
                for out, computed in zip(outs, self.teacher_features(x[~hit])):
                    out[~hit] = computed
        else:
            outs = [t for t in self.teacher_features(x) if t is not None]
            if entry is None:
                entry = self.cache[view] = (torch.zeros(self.num_images, dtype=torch.bool, device=x.device),
                                            *[torch.zeros(self.num_images, *t.shape[1:], device=x.device)
                                              for t in outs])
            filled, *stores = entry
            hit = filled[index]
            worst = max(float((s[index][hit] - o[hit]).abs().max() / o[hit].abs().max().clamp_min(1e-6))
                        for s, o in zip(stores, outs)) if hit.any() else 0.0
            met, worst = all_reduce(torch.tensor([float(hit.sum()), worst], device=x.device), op="max").tolist()
            if met and worst > CACHE_TOLERANCE:
                raise ConfigError("cache_teacher needs fixed views, but the teacher's output for a view of an image "
                                  f"changed between epochs (relative difference {worst:.3g}): drop cache_teacher, "
                                  "or make the views fixed (--transform-arg min_scale=1 --transform-arg hflip_p=0 "
                                  "--transform-arg jitter_p=0 --transform-arg gray_p=0)")
            self.cache_checked = bool(met)
        for store, out in zip(stores, outs):
            store[index] = out
        filled[index] = True
        return outs[0], (outs[1] if len(outs) > 1 else None)

    # -- the loss --------------------------------------------------------------------------------
    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
        emb_losses, patch_losses = [], []
        for v, x in enumerate(views):
            student = self.backbone(x)
            s_map = self.student_tap.map if self.patch else None
            t_emb, t_map = self._cached(v, x, index) if self.cache_teacher else self.teacher_features(x)
            emb_losses.append(feature_distillation_loss(self.projector(student), t_emb, self.loss))
            if self.patch:
                s = self.patch_projector(s_map.to(self.patch_projector.weight.dtype))
                t = resample(t_map, s.shape[-2:])
                patch_losses.append(feature_distillation_loss(s.flatten(2).transpose(1, 2).flatten(0, 1),
                                                              t.flatten(2).transpose(1, 2).flatten(0, 1), self.loss))
        embedding = sum(emb_losses) / len(emb_losses)
        logs = {"embedding_loss": float(embedding.detach())}
        if not self.patch:
            return embedding, logs
        patch = sum(patch_losses) / len(patch_losses)
        logs["patch_loss"] = float(patch.detach())
        return embedding + self.patch_weight * patch, logs
