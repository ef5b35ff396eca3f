"""INT8 ONNX export: quantized from the checked fp32 graph, calibrated on real images, written only past its gate."""
from __future__ import annotations

import numpy as np
import pytest
from export_helpers import make_model_dir

from export.embedder import Embedder
from export.errors import ExportError, ParityError
from export.onnx_export import export_onnx
from export.onnxfile import ONNX_FILE, read_onnx_info
from export.quantize import _knn_top1, split_images
from pretrain.cli import main


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory):
    from shared_helpers import write_image_folder

    root = tmp_path_factory.mktemp("int8")
    images = write_image_folder(root / "images", classes=3, per_class=12)
    md = make_model_dir(root / "model")
    result = export_onnx(md, int8=True, calibration=images, calibration_images=8, check_images=24)
    return md, images, result


def test_int8_graph_is_written_smaller_and_loads_as_onnx(int8_dir):
    md, images, result = int8_dir
    path = md.path / ONNX_FILE
    assert result.path == path and read_onnx_info(path).precision == "int8"
    assert result.int8.images == 24 and result.int8.calibration_images == 8
    assert result.int8.parity.min_cosine >= 0.99 and result.int8.knn_drop <= 0.01
    int8 = Embedder.load(md, "onnx")
    assert "QuantizeLinear" in {n.op_type for n in __import__("onnx").load(str(path)).graph.node}
    files = sorted(images.rglob("*.jpg"))[:6]
    a, b = Embedder.load(md, "torch").embed(files), int8.embed(files)
    assert np.all((a * b).sum(axis=1) >= 0.99)  # the Embedder normalises; each row keeps its direction
    fp32 = export_onnx(md, md.path / "fp32.onnx")
    assert path.stat().st_size < fp32.path.stat().st_size / 2


def test_failing_the_gate_writes_nothing_and_keeps_the_fp32_graph(int8_dir, tmp_path, monkeypatch):
    import export.quantize as quantize

    _, images, _ = int8_dir
    md = make_model_dir(tmp_path / "model")
    export_onnx(md)
    before = (md.path / ONNX_FILE).read_bytes()
    monkeypatch.setattr(quantize, "MIN_COSINE", 1.01)  # unreachable
    with pytest.raises(ParityError, match="min cosine .* < 1.01.*was not written"):
        export_onnx(md, int8=True, calibration=images, calibration_images=8, check_images=12)
    monkeypatch.setattr(quantize, "MIN_COSINE", 0.99)
    monkeypatch.setattr(quantize, "MAX_KNN_DROP", -1.0)  # any kNN result fails
    with pytest.raises(ParityError, match="kNN top-1 drops"):
        export_onnx(md, int8=True, calibration=images, calibration_images=8, check_images=12)
    assert (md.path / ONNX_FILE).read_bytes() == before
    assert not list(md.path.glob("*.tmp")) and not list(md.path.glob(".*.tmp"))


def test_calibration_and_check_images_are_disjoint_and_fixed(tmp_path):
    paths = [tmp_path / f"{i:03d}.jpg" for i in range(100)]
    calib, check = split_images(paths, 10, 30)
    assert len(calib) == 10 and len(check) == 30 and not set(calib) & set(check)
    assert (calib, check) == split_images(paths, 10, 30)
    calib, check = split_images(paths[:5], 256, 1000)  # a small folder: half calibrates, the rest checks
    assert len(calib) == 2 and len(check) == 3
    with pytest.raises(ExportError, match="at least 2 images"):
        split_images(paths[:1], 8, 8)


def test_knn_top1_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    codes = rng.integers(0, 3, 40)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    bank, queries, bank_codes = x[0::2], x[1::2], codes[0::2]
    correct = 0
    for q, label in zip(queries, codes[1::2]):
        sims = bank @ q
        votes = np.zeros(3)
        for j in np.argsort(-sims)[:20]:
            votes[bank_codes[j]] += np.exp(sims[j] / 0.1)
        correct += int(np.argmax(votes) == label)
    assert _knn_top1(x, codes, 3) == pytest.approx(correct / len(queries))


def test_cli_int8_and_its_errors(int8_dir, tmp_path, capsys):
    _, images, _ = int8_dir
    md = make_model_dir(tmp_path / "model")
    assert main(["export", "onnx", str(md.path), "--int8", "--calibration", str(images), "--calibration-images", "8",
                 "--check-images", "12", "--parity-images", "0"]) == 0
    out = capsys.readouterr().out
    assert "int8 check on 12 held-out images (calibrated on 8)" in out and ": ok" in out and ", int8, " in out
    assert main(["export", "onnx", str(md.path), "--int8", "--fp16"]) == 2
    assert "--int8 and --fp16 exclude each other" in capsys.readouterr().err
    assert main(["export", "onnx", str(md.path), "--int8"]) == 2  # no training folder recorded, none given
    assert "pass --calibration DIR" in capsys.readouterr().err
