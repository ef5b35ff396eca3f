"""A ViT trained by MAE exports and embeds like any backbone: the model dir holds the encoder alone, which sees
every patch; ONNX matches it, and `sslforge embed` gives the same vectors through the torch and ONNX backends."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from shared_helpers import make_tiny_config

from export.embeddings import load_embeddings
from export.onnx_export import export_onnx
from pretrain.cli import main
from pretrain.ground.modeldir import load_model_dir
from pretrain.train.trainer import Trainer


def test_a_tiny_mae_vit_exports_to_onnx_and_embeds_the_same_through_both_backends(image_folder: Path,
                                                                                   tmp_path: Path, capsys) -> None:
    cfg = make_tiny_config(image_folder, tmp_path / "mae", method="mae", backbone="test_vit", epochs=1,
                           backbone_args={"img_size": 32, "patch_size": 8}, optimizer="adamw", lr=1e-3,
                           method_args={"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2})
    trainer = Trainer(cfg, progress=False)
    run = trainer.fit()
    model = load_model_dir(run)
    saved = load_file(run / "backbone.safetensors")
    assert not any(k.startswith(("decoder", "mask_token")) for k in saved)  # the encoder alone
    for key, value in trainer.model.backbone.state_dict().items():
        assert torch.equal(saved[key], value.cpu()), key
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():  # all 16 patches: the backbone's own forward, as trained
        torch.testing.assert_close(model.load_backbone()(x), trainer.model.backbone.eval()(x))

    result = export_onnx(model)  # the export's own parity check against the torch backbone
    assert result.reports["embedding"].max_abs < 1e-4
    common = ["--model", str(run), "--images", str(image_folder), "--batch-size", "8", "--workers", "0", "--quiet"]
    assert main(["embed", *common, "--out", str(tmp_path / "torch"), "--backend", "torch", "--device", "cpu"]) == 0
    assert main(["embed", *common, "--out", str(tmp_path / "onnx"), "--backend", "onnx"]) == 0
    capsys.readouterr()
    v_torch, ids_torch, _ = load_embeddings(tmp_path / "torch")
    v_onnx, ids_onnx, manifest = load_embeddings(tmp_path / "onnx")
    assert ids_torch == ids_onnx and len(ids_onnx) == 24 and manifest["backend"] == "onnx"
    assert v_torch.shape == (24, model.embedding_dim)
    assert np.abs(v_torch - v_onnx).max() < 1e-4
