"""Recipes: what `--recipe NAME` fills in for every optimisation option a user leaves unset, and the recipes
several methods share. Each method states its own on its class (`default_recipe`, `paper_recipe`)."""
from __future__ import annotations

from dataclasses import dataclass, field

SWEEPS = "docs/benchmarks/learning.md"  # where the one-device sweeps that chose the default recipes are shown


@dataclass(frozen=True)
class Recipe:
    """What `--recipe NAME` fills in for every optimisation option the user leaves unset.

    `method_args` override the method's constructor defaults (the paper's hyper-parameters) and
    `transform_args` the options of the method's default views; `--method-arg` and `--transform-arg`
    override both. The learning rate is for a batch of 256 (the trainer scales it by batch/256).
    """

    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    method_args: dict = field(default_factory=dict)
    transform_args: dict = field(default_factory=dict)
    source: str = f"sweep on one CPU, batch 128 ({SWEEPS})"


def paper(optimizer: str, lr: float, weight_decay: float, source: str, **method_args) -> Recipe:
    """A paper's own large-batch recipe (8+ GPUs, batches of 1024-4096): `--recipe paper`."""
    return Recipe(optimizer, lr, weight_decay, method_args=method_args, source=source)


NO_PAPER = Recipe(source="no large-batch recipe published: same as default")
# The 8192-d, 3-layer projectors of Barlow Twins and VICReg cost 3x a SimCLR step on one device; 2048-d with
# 2 layers learns faster per minute there; the paper's size is `--recipe paper`.
SMALL_PROJECTOR = Recipe(method_args={"proj_dim": 2048, "proj_layers": 2})
LARS_SIMCLR = paper("lars", 0.3, 1e-6, "Chen et al. 2020, sec. B.1", temperature=0.1)
# BYOL and SimSiam leave their slow start with LARS and a predictor trained 10x faster (Tian et al. 2021).
FAST_PREDICTOR = Recipe("lars", 1.0, 1e-5, method_args={"predictor_lr": 10.0},
                        source=f"LARS and a 10x predictor: learns within 30 min at batch 64 on one CPU core ({SWEEPS})")
# MAE's views (He et al. 2022): one random crop of 20-100% of the image and a flip, no colour changes
MAE_VIEWS = {"views": 1, "min_scale": 0.2, "jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0}
