"""A fine-tuned model dir (simclr2 backbone + kept head layer + fine-tuned classifier) exports to ONNX with its head,
parity checked by the exporter and again here, and the Embedder's onnx backend classifies like PyTorch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from shared_helpers import make_tiny_config, make_tiny_finetune_config, write_image_folder

from export.embedder import Embedder
from export.onnx_export import export_onnx
from export.onnxfile import read_onnx_info
from pretrain.finetune.run import finetune
from pretrain.ground.modeldir import load_model_dir
from pretrain.train.trainer import Trainer


def test_a_finetuned_model_dir_exports_with_its_head_and_parity(tmp_path: Path) -> None:
    train = write_image_folder(tmp_path / "train", per_class=8)
    ssl = Trainer(make_tiny_config(train, tmp_path / "ssl", method="simclr2", epochs=1,
                                   method_args={"out_dim": 16, "hidden_dim": 24}), progress=False).fit()
    model = load_model_dir(finetune(make_tiny_finetune_config(ssl, train, tmp_path / "ft", epochs=1), progress=False))
    assert model.info["neck"] == [24] and model.info["method"]["name"] == "finetune"
    result = export_onnx(model, with_head=True)
    assert result.reports["logits"].max_abs < 1e-4 and result.reports["embedding"].max_abs < 1e-4
    info = read_onnx_info(result.path)
    assert info.outputs == ["embedding", "logits"] and info.classes == model.classes and info.embedding_dim == 24

    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model.load_head()(model.load_backbone()(x)).numpy()
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["logits"], {"image": x.numpy()})[0], expected, atol=1e-4)
    files = sorted(train.rglob("*.jpg"))[:5]
    np.testing.assert_allclose(Embedder.load(model.path, backend="onnx").predict(files),
                               Embedder.load(model.path, backend="torch").predict(files), atol=1e-5)
