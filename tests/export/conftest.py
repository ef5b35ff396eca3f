"""Model dirs for export tests, written directly (no training): timm's tiny test models at 32 px."""
from __future__ import annotations

import pytest
from export_helpers import make_model_dir

from pretrain.ground.modeldir import ModelDir


@pytest.fixture(scope="session")
def resnet_dir(tmp_path_factory: pytest.TempPathFactory) -> ModelDir:
    """test_resnet with a 3-class head, exported to ONNX once for the whole session (read-only for tests)."""
    from export.onnx_export import export_onnx

    md = make_model_dir(tmp_path_factory.mktemp("resnet"), classes=["class_0", "class_1", "class_2"])
    export_onnx(md)
    return md
