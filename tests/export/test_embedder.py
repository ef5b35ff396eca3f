"""The Embedder: the same image gives the same embedding through every backend, and the same as an
independent computation with the model dir's preprocessing; predictions use the linear-probe head."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from export.embedder import Embedder
from export.errors import BackendUnavailable, ExportError
from pretrain.data.images import load_rgb


def reference_features(model, paths: list[Path]) -> np.ndarray:
    with torch.no_grad():
        return model.load_backbone()(torch.stack([model.preprocessing(load_rgb(p)) for p in paths])).numpy()


def image_inputs(paths: list[Path]) -> list:
    """The images as every accepted input type: a Path, a PIL image, a uint8 array and a str path."""
    return [paths[0], Image.open(paths[1]).convert("RGB"), np.asarray(load_rgb(paths[2])), str(paths[3])]


def test_backends_agree_with_an_independent_computation(resnet_dir, image_folder: Path) -> None:
    paths = sorted(image_folder.rglob("*.jpg"))[:4]
    raw = reference_features(resnet_dir, paths)
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    results = {}
    for backend in ("torch", "onnx"):
        embedder = Embedder.load(resnet_dir.path, backend)
        vectors = embedder.embed(image_inputs(paths))
        assert vectors.dtype == np.float32 and vectors.shape == (4, resnet_dir.embedding_dim)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(vectors, expected, atol=1e-4)
        results[backend] = vectors
    assert np.abs(results["torch"] - results["onnx"]).max() < 1e-4
    assert Embedder.load(resnet_dir.path, "onnx").embed([]).shape == (0, resnet_dir.embedding_dim)


def test_predict_applies_the_head_to_raw_features(resnet_dir, image_folder: Path) -> None:
    paths = sorted(image_folder.rglob("*.jpg"))[:3]
    with torch.no_grad():
        logits = resnet_dir.load_head()(torch.as_tensor(reference_features(resnet_dir, paths)))
    expected = torch.softmax(logits, dim=1).numpy()
    for backend in ("torch", "onnx"):
        embedder = Embedder.load(resnet_dir.path, backend)
        assert embedder.classes == ["class_0", "class_1", "class_2"]
        np.testing.assert_allclose(embedder.predict(paths), expected, atol=1e-5)


def test_onnx_backend_refuses_a_graph_of_other_weights(resnet_dir, tmp_path: Path) -> None:
    from export_helpers import make_model_dir

    other = make_model_dir(tmp_path / "other", seed=3)
    with pytest.raises(ExportError, match="exported from other weights"):
        Embedder.load(other.path, "onnx", onnx_path=resnet_dir.path / "model.onnx")
    with pytest.raises(ExportError, match=r"model.onnx does not exist: run `sslforge export onnx"):
        Embedder.load(other.path, "onnx")


def test_tensorrt_missing_is_one_clear_line(resnet_dir, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as if not installed, even where it is
    with pytest.raises(BackendUnavailable, match=r"^TensorRT is not installed: .*pip install tensorrt") as e:
        Embedder.load(resnet_dir.path, "tensorrt")
    assert "\n" not in str(e.value)


def test_bad_inputs_are_clear(resnet_dir) -> None:
    with pytest.raises(ExportError, match="unknown backend 'openvino'"):
        Embedder.load(resnet_dir.path, "openvino")
    embedder = Embedder.load(resnet_dir.path, "torch")
    with pytest.raises(ExportError, match="must be uint8"):
        embedder.embed([np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ExportError, match="cannot embed a int"):
        embedder.embed([3])
