"""The method registry: `--method NAME` -> class, default hyper-parameters of the optimisation, default views.

Adding a method is one file in this folder and one line in METHODS.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

from torch import nn

from pretrain.config import ConfigError
from pretrain.methods.barlowtwins import BarlowTwins
from pretrain.methods.base import Method
from pretrain.methods.byol import BYOL
from pretrain.methods.dino import DINO
from pretrain.methods.distill import Distill
from pretrain.methods.drlim import DrLIM
from pretrain.methods.moco import MoCo
from pretrain.methods.simclr import SimCLR
from pretrain.methods.simclr2 import SimCLRv2
from pretrain.methods.simsiam import SimSiam
from pretrain.methods.swav import SwAV
from pretrain.methods.vicreg import VICReg
from pretrain.methods.vicregl import VICRegL


@dataclass(frozen=True)
class MethodSpec:
    cls: type[Method]
    transform: str
    optimizer: str
    lr: float  # base learning rate for a batch of 256
    weight_decay: float


# Defaults suit single-device batches (<= 512 images); docs/benchmarks.md shows how they were chosen.
# For batches in the thousands the papers' own recipe applies, e.g. SimCLR with
# --optimizer lars --lr 0.3 --weight-decay 1e-6 --method-arg temperature=0.1.
METHODS: dict[str, MethodSpec] = {
    "simclr": MethodSpec(SimCLR, transform="simclr", optimizer="adamw", lr=2e-3, weight_decay=1e-4),
    # Pending the per-method learning check of issue 3: the same optimizer recipe as SimCLR.
    "byol": MethodSpec(BYOL, transform="simclr", optimizer="adamw", lr=2e-3, weight_decay=1e-4),
    "simsiam": MethodSpec(SimSiam, transform="simclr", optimizer="adamw", lr=2e-3, weight_decay=1e-4),
    "barlowtwins": MethodSpec(BarlowTwins, transform="simclr", optimizer="adamw", lr=2e-3, weight_decay=1e-4),
    "vicreg": MethodSpec(VICReg, transform="simclr", optimizer="adamw", lr=2e-3, weight_decay=1e-4),
    "moco": MethodSpec(MoCo, transform="simclr", optimizer="adamw", lr=2e-3, weight_decay=1e-4),
    "drlim": MethodSpec(DrLIM, transform="simclr", optimizer="adamw", lr=2e-3, weight_decay=1e-4),
    "swav": MethodSpec(SwAV, transform="multicrop", optimizer="adamw", lr=2e-3, weight_decay=1e-4),
    "dino": MethodSpec(DINO, transform="multicrop", optimizer="adamw", lr=2e-3, weight_decay=1e-4),
    "simclr2": MethodSpec(SimCLRv2, transform="simclr", optimizer="adamw", lr=2e-3, weight_decay=1e-4),
    "distill": MethodSpec(Distill, transform="simclr", optimizer="adamw", lr=2e-3, weight_decay=1e-4),
    "vicregl": MethodSpec(VICRegL, transform="vicregl", optimizer="adamw", lr=2e-3, weight_decay=1e-4),
}


def method_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(sorted(METHODS))} (got {name!r})")
    return METHODS[name]


def method_hparams(name: str, overrides: dict | None = None) -> dict:
    """The method's hyper-parameters (its constructor defaults) with `overrides` applied and checked."""
    params = inspect.signature(method_spec(name).cls.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k not in ("self", "backbone", "feature_dim")}
    for key in overrides or {}:
        if key not in defaults:
            raise ConfigError(f"method {name} has no option {key!r}; its options are {', '.join(defaults)}")
    return {**defaults, **(overrides or {})}


def build_method(name: str, backbone: nn.Module, feature_dim: int, hparams: dict) -> Method:
    try:
        return method_spec(name).cls(backbone, feature_dim, **hparams)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"method {name}: {e}") from None
