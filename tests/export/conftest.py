"""Model dirs for export tests, written directly (no training): timm's tiny test models at 32 px."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pretrain.backbones import build_backbone, resolve_spec
from pretrain.modeldir import ModelDir, load_model_dir, write_model_dir
from pretrain.preprocess import Preprocessing


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


@pytest.fixture(scope="session")
def resnet_dir(tmp_path_factory: pytest.TempPathFactory) -> ModelDir:
    """test_resnet with a 3-class head, exported to ONNX once for the whole session (read-only for tests)."""
    from export.onnx_export import export_onnx

    md = make_model_dir(tmp_path_factory.mktemp("resnet"), classes=["class_0", "class_1", "class_2"])
    export_onnx(md)
    return md
