"""The method registry: `--method NAME` -> class, default views and recipes (optimizer, lr, hyper-parameters).

Adding a method is one file in this folder and one line in METHODS.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from torch import nn

from pretrain.ground.errors import ConfigError
from pretrain.methods.barlowtwins import BarlowTwins
from pretrain.methods.base import Method
from pretrain.methods.byol import BYOL
from pretrain.methods.cpc import CPC
from pretrain.methods.deepcluster import DeepCluster
from pretrain.methods.dino import DINO
from pretrain.methods.distill import Distill
from pretrain.methods.distill_features import DistillFeatures
from pretrain.methods.drlim import DrLIM
from pretrain.methods.mae import MAE
from pretrain.methods.moco import MoCo
from pretrain.methods.nnclr import NNCLR
from pretrain.methods.npid import NPID
from pretrain.methods.pirl import PIRL
from pretrain.methods.sela import SeLA
from pretrain.methods.simclr import SimCLR
from pretrain.methods.simclr2 import SimCLRv2
from pretrain.methods.simsiam import SimSiam
from pretrain.methods.swav import SwAV
from pretrain.methods.vicreg import VICReg
from pretrain.methods.vicregl import VICRegL
from pretrain.train.config import RECIPES


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
    source: str = "sweep on one CPU, batch 128 (docs/benchmarks.md)"


# The papers' own large-batch recipes (8+ GPUs, batches of 1024-4096); `--recipe paper`.
def _paper(optimizer: str, lr: float, weight_decay: float, source: str, **method_args) -> Recipe:
    return Recipe(optimizer, lr, weight_decay, method_args=method_args, source=source)


# The 8192-d, 3-layer projectors of Barlow Twins and VICReg cost 3x a SimCLR step on one device; 2048-d with
# 2 layers learns faster per minute there (docs/benchmarks.md); the paper's size is `--recipe paper`.
_SMALL_PROJECTOR = Recipe(method_args={"proj_dim": 2048, "proj_layers": 2})
_LARS_SIMCLR = _paper("lars", 0.3, 1e-6, "Chen et al. 2020, sec. B.1", temperature=0.1)
# BYOL and SimSiam leave their slow start with LARS and a predictor trained 10x faster (Tian et al. 2021).
_FAST_PREDICTOR = Recipe("lars", 1.0, 1e-5, method_args={"predictor_lr": 10.0},
                         source="LARS and a 10x predictor: learns within 30 min at batch 64 on one CPU core "
                                "(docs/benchmarks.md)")


# MAE's views (He et al. 2022): one random crop of 20-100% of the image and a flip, no colour changes
_MAE_VIEWS = {"views": 1, "min_scale": 0.2, "jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0}


@dataclass(frozen=True)
class MethodSpec:
    """A registry row: the class, then only what differs from these defaults."""

    cls: type[Method]
    transform: str = "simclr"  # the default views
    default: Recipe = Recipe()  # one device, batches of 64-512
    paper: Recipe = Recipe(source="no large-batch recipe published: same as default")

    def recipe(self, name: str) -> Recipe:
        if name not in RECIPES:
            raise ConfigError(f"recipe must be one of {', '.join(RECIPES)} (got {name!r})")
        return getattr(self, name)


# Adding a method is one line here (its default recipe: docs/benchmarks.md shows how each was chosen).
METHODS: dict[str, MethodSpec] = {
    "simclr": MethodSpec(SimCLR, paper=_LARS_SIMCLR),
    "simclr2": MethodSpec(SimCLRv2, paper=_LARS_SIMCLR),
    "moco": MethodSpec(MoCo, paper=_paper("sgd", 0.03, 1e-4, "Chen et al. 2020 (MoCo v2)", momentum=0.999,
                                          queue_size=65536)),
    "byol": MethodSpec(BYOL, default=_FAST_PREDICTOR,
                       paper=_paper("lars", 0.2, 1.5e-6, "Grill et al. 2020, sec. 3.2", momentum_base=0.996)),
    "simsiam": MethodSpec(SimSiam, default=_FAST_PREDICTOR, paper=_paper("sgd", 0.05, 1e-4, "Chen & He 2021, sec. 4")),
    "swav": MethodSpec(SwAV, "multicrop", default=Recipe(
        "sgd", 0.12, 5e-4, transform_args={"local_views": 0}, method_args={"prototypes": 512},
        source="SGD with weight decay 5e-4, 2 global crops, 512 prototypes, no queue: +0.115 over random init in "
               "30 min at batch 64 on one CPU core (docs/benchmarks.md)"),
                       paper=_paper("lars", 0.3, 1e-6, "Caron et al. 2020, sec. A.1")),
    "barlowtwins": MethodSpec(BarlowTwins, default=_SMALL_PROJECTOR,
                              paper=_paper("lars", 0.2, 1.5e-6, "Zbontar et al. 2021, sec. 4")),
    "vicreg": MethodSpec(VICReg, default=_SMALL_PROJECTOR,
                         paper=_paper("lars", 0.2, 1e-6, "Bardes et al. 2022, sec. 4.1")),
    "vicregl": MethodSpec(VICRegL, "vicregl", default=Recipe(method_args=_SMALL_PROJECTOR.method_args,
                                                             transform_args={"local_views": 0}),
                          paper=_paper("lars", 0.3, 1e-6, "Bardes et al. 2022 (VICRegL), sec. 4")),
    "dino": MethodSpec(DINO, "multicrop", default=Recipe(
        "sgd", 0.12, 5e-4, transform_args={"local_views": 0},
        method_args={"out_dim": 2048, "head_bn": True, "head_layers": 2, "momentum_base": 0.99, "teacher_temp": 0.04,
                     "warmup_teacher_temp": 0.04, "freeze_last_layer_epochs": 0.0},
        source="SGD with weight decay 5e-4, 2 global crops, a 2-layer head onto 2048 prototypes: +0.077 over random "
               "init in 30 min at batch 64 on one CPU core (docs/benchmarks.md)"),
                       paper=_paper("adamw", 5e-4, 0.04, "Caron et al. 2021, sec. 4 (ViT)")),
    "nnclr": MethodSpec(NNCLR, default=Recipe(method_args={"queue_size": 4096, "temperature": 0.2},
                                              source="SimCLR's optimiser and temperature, a 4096-row support set "
                                                     "(docs/benchmarks.md)"),
                        paper=_paper("lars", 0.3, 1e-6, "Dwibedi et al. 2021, sec. 4 (batch 4096)")),
    "npid": MethodSpec(NPID, default=Recipe(transform_args={"views": 1},
                                            source="SimCLR's optimiser, one view: +0.145 over random init in 10 min "
                                                   "(docs/benchmarks.md)"),
                       paper=Recipe("sgd", 0.03, 5e-4, transform_args={"views": 1}, source="Wu et al. 2018, sec. 4")),
    "pirl": MethodSpec(PIRL, "jigsaw", default=Recipe(method_args={"grid": 2}, transform_args={"grid": 2},
                                                      source="SimCLR's optimiser, a 2 x 2 jigsaw (docs/benchmarks.md)"),
                       paper=_paper("sgd", 0.12, 1e-4, "Misra & van der Maaten 2020, sec. 4.1", negatives=32000)),
    "deepcluster": MethodSpec(DeepCluster, default=Recipe(method_args={"clusters": 100, "recluster_every": 5},
                                                          transform_args={"views": 1},
                                                          source="SimCLR's optimiser, 100 clusters, k-means every "
                                                                 "5 epochs, one view (docs/benchmarks.md)"),
                              paper=Recipe("sgd", 0.05, 1e-5, transform_args={"views": 1},
                                           source="Caron et al. 2018, sec. 4 (k = 10000)")),
    "sela": MethodSpec(SeLA, default=Recipe(method_args={"clusters": 128, "label_every": 5},
                                            transform_args={"views": 1},
                                            source="SimCLR's optimiser, 128 clusters, labels every 5 epochs, one view "
                                                   "(docs/benchmarks.md)"),
                       paper=Recipe("sgd", 0.05, 1e-5, transform_args={"views": 1},
                                    source="Asano et al. 2020, sec. 4 (K = 3000, one head)")),
    "cpc": MethodSpec(CPC, "patchgrid",
                      default=Recipe(method_args={"grid": 2, "steps": 1},
                                     transform_args={"grid": 2, "patch_size": -1, "patch_colour": True},
                                     source="SimCLR's optimiser, 2 x 2 patches at the image size, a colour per patch "
                                            "(docs/benchmarks.md)"),
                      paper=Recipe("adamw", 2e-4, 0.0,
                                   source="van den Oord et al. 2018, sec. 3.2 (Adam; its 7 x 7 grid of 64 px patches: "
                                          "transform_args grid=7 at 256 px)")),
    "drlim": MethodSpec(DrLIM),
    "distill": MethodSpec(Distill, default=Recipe(source="SimCLR's optimiser: +0.145 over random init in 10 min "
                                                        "(docs/benchmarks.md)")),
    "distill_features": MethodSpec(DistillFeatures, default=Recipe(
        source="SimCLR's optimiser and views; not tuned for distillation yet (docs/pretrained.md)")),
    "mae": MethodSpec(MAE, default=Recipe("adamw", 1.5e-3, 0.05, transform_args=_MAE_VIEWS,
                                          source="AdamW with MAE's weight decay 0.05 and 10x its base lr for short "
                                                 "runs; one crop (scale >= 0.2) and a flip (docs/pretrained.md)"),
                      paper=Recipe("adamw", 1.5e-4, 0.05, transform_args=_MAE_VIEWS,
                                   source="He et al. 2022, sec. A.1 (batch 4096, 800-1600 epochs, 40 warm-up)")),
}


def method_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(sorted(METHODS))} (got {name!r})")
    return METHODS[name]


# constructor arguments the trainer fills in from the data (not hyper-parameters: not in configs or tables)
DATA_ARGS = ("num_images",)


def method_hparams(name: str, overrides: dict | None = None, recipe: str = "default") -> dict:
    """The method's hyper-parameters: its constructor defaults, then the recipe's, then `overrides` (checked)."""
    params = inspect.signature(method_spec(name).cls.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k not in ("self", "backbone", "feature_dim", *DATA_ARGS)}
    for key in overrides or {}:
        if key not in defaults:
            raise ConfigError(f"method {name} has no option {key!r}; its options are {', '.join(defaults)}")
    return {**defaults, **method_spec(name).recipe(recipe).method_args, **(overrides or {})}


def build_method(name: str, backbone: nn.Module, feature_dim: int, hparams: dict,
                 num_images: int | None = None) -> Method:
    """The method; `num_images` (the training set's size) goes to methods with per-image state (a memory bank)."""
    cls = method_spec(name).cls
    param = inspect.signature(cls.__init__).parameters.get("num_images")
    data = {"num_images": num_images} if param is not None else {}
    if param is not None and param.default is inspect.Parameter.empty and num_images is None:
        raise ConfigError(f"method {name} keeps per-image state: build it with the training set's num_images")
    try:
        return cls(backbone, feature_dim, **hparams, **data)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"method {name}: {e}") from None


def recipe_table(recipe: str = "default") -> str:
    """`sslforge methods`: one Markdown row per method with the recipe's optimisation and every hyper-parameter
    (those the recipe sets instead of the paper's constructor default are marked *)."""
    rows = ["| method | views | optimizer | lr (per 256) | weight decay | hyper-parameters | source |",
            "|---|---|---|---|---|---|---|"]
    for name, spec in sorted(METHODS.items()):
        r = spec.recipe(recipe)
        hp = method_hparams(name, recipe=recipe)
        params = ", ".join(f"{k}={v}{'*' if k in r.method_args else ''}" for k, v in hp.items())
        views = spec.transform + "".join(f" {k}={v}*" for k, v in r.transform_args.items())
        rows.append(f"| {name} | {views} | {r.optimizer} | {r.lr:g} | {r.weight_decay:g} | {params} | {r.source} |")
    return "\n".join(rows)
