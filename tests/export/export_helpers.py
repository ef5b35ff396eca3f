"""Model dirs for export tests, written directly (no training): timm's tiny test models at 32 px."""
from __future__ import annotations

from pathlib import Path

import torch

from pretrain.ground.backbones import build_backbone, resolve_spec
from pretrain.ground.modeldir import ModelDir, load_model_dir, write_model_dir
from pretrain.ground.preprocess import Preprocessing


def make_model_dir(path: Path, backbone: str = "test_resnet", size: int = 32, seed: int = 0,
                   classes: list[str] | None = None) -> ModelDir:
    """A model dir with random weights (seeded), and a random linear-probe head when `classes` is given."""
    torch.manual_seed(seed)
    kwargs = {"img_size": size} if "vit" in backbone else {}
    spec = resolve_spec(backbone, small_stem=None, image_size=size, kwargs=kwargs)
    model, dim = build_backbone(spec, size)
    write_model_dir(path, model, spec=spec, embedding_dim=dim, preprocessing=Preprocessing.for_size(size),
                    method={"name": "none"}, training={})
    md = load_model_dir(path)
    if classes:
        md.save_head(torch.nn.Linear(dim, len(classes)), classes, {"top1": 0.0})
    return md
