"""ONNX export: round trips for a ResNet, a ViT and a ConvNeXt with parity checked independently,
metadata read back, FP16, the optional head, fixed batches, and loud failures."""
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_helpers import make_model_dir

from export import parity
from export.errors import ExportError, ParityError
from export.onnx_export import export_onnx
from export.onnxfile import check_onnx_matches, read_onnx_info
from export.parity import check_parity, compare
from export.runtimes import OnnxRunner, TorchRunner


def normalized(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ort_run(path: Path, x: np.ndarray, output: str = "embedding") -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([output], {"image": x})[0]


@pytest.mark.parametrize("backbone", ["test_resnet", "test_vit", "test_convnext"])
def test_export_round_trip_matches_pytorch(backbone: str, tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "run", backbone)
    result = export_onnx(model)
    path = tmp_path / "run" / "model.onnx"
    assert result.path == path and result.reports["embedding"].max_abs < 1e-4
    onnx.checker.check_model(str(path), full_check=True)

    x = torch.randn(5, 3, 32, 32)  # a batch size the export never saw: the batch axis is dynamic
    with torch.no_grad():
        expected = model.load_backbone()(x).numpy()
    got = ort_run(path, x.numpy())
    assert np.abs(normalized(got) - normalized(expected)).max() < 1e-4
    dim0 = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value

    info = read_onnx_info(path)
    assert info.fingerprint == model.fingerprint
    assert info.preprocessing == model.info["preprocessing"]
    assert (info.embedding_dim, info.precision, info.outputs, info.classes) == (model.embedding_dim, "fp32",
                                                                                ["embedding"], None)
    assert info.opset >= 17
    assert check_onnx_matches(path, model) == info


def test_fp16_export_keeps_float32_io_and_is_close(resnet_dir, tmp_path: Path) -> None:
    fp32 = resnet_dir.path / "model.onnx"
    fp16 = export_onnx(resnet_dir, tmp_path / "fp16.onnx", fp16=True).path
    proto = onnx.load(str(fp16))
    assert read_onnx_info(fp16).precision == "fp16"
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    assert fp16.stat().st_size < 0.7 * fp32.stat().st_size
    x = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
    a, b = normalized(ort_run(fp32, x)), normalized(ort_run(fp16, x))
    assert (a * b).sum(1).min() > 0.995


def test_head_output_and_fixed_batch_fed_in_padded_chunks(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path / "run", classes=["cat", "dog"])
    result = export_onnx(model, with_head=True, dynamic_batch=False, batch_size=2)
    assert result.info.outputs == ["embedding", "logits"] and result.info.classes == ["cat", "dog"]
    assert onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        features = model.load_backbone()(x)
        logits = model.load_head()(features)
    runner = OnnxRunner(result.path, output="logits")
    assert runner.fixed_batch == 2
    np.testing.assert_allclose(runner(x.numpy()), logits.numpy(), atol=1e-4)  # 5 rows = 2 + 2 + 1 padded
    np.testing.assert_allclose(OnnxRunner(result.path)(x.numpy()), features.numpy(), atol=1e-4)


def test_parity_failure_is_loud_and_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    model = make_model_dir(tmp_path / "run")
    monkeypatch.setitem(parity.TOLERANCES, "fp32", {"max_abs": 0.0, "min_cosine": 1.1})
    with pytest.raises(ParityError, match=r"parity ONNX output 'embedding' vs PyTorch .*FAILED"):
        export_onnx(model)
    assert not (tmp_path / "run" / "model.onnx").exists()
    assert not list((tmp_path / "run").glob(".model.onnx.*"))


def test_parity_harness_measures_the_difference() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 8)).astype(np.float32)
    b = a.copy()
    b[2, 3] += 0.5
    report = compare(a, b)
    an, bn = normalized(a), normalized(b)
    assert report.max_abs == pytest.approx(np.abs(an - bn).max(), rel=1e-5)
    assert report.min_cosine == pytest.approx((an * bn).sum(1).min(), rel=1e-5)
    assert not report.ok and compare(a, a).ok
    with pytest.raises(ParityError, match="FAILED"):
        check_parity(lambda x: x, lambda x: x + rng.normal(size=x.shape), [a])
    assert not compare(a, np.full_like(a, np.nan)).ok


def test_onnx_of_another_model_is_refused(tmp_path: Path, resnet_dir) -> None:
    other = make_model_dir(tmp_path / "other", seed=1)
    with pytest.raises(ExportError, match="was exported from other weights .* run `sslforge export onnx"):
        check_onnx_matches(resnet_dir.path / "model.onnx", other)
    with pytest.raises(ExportError, match="does not exist: run `sslforge export onnx"):
        read_onnx_info(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ExportError, match="junk.onnx"):
        read_onnx_info(tmp_path / "junk.onnx")


def test_torch_runner_matches_the_module_in_eval_mode(resnet_dir) -> None:
    x = torch.randn(3, 3, 32, 32)
    backbone = resnet_dir.load_backbone()
    with torch.no_grad():
        expected = backbone(x).numpy()
    np.testing.assert_allclose(TorchRunner(resnet_dir.load_backbone())(x), expected, atol=1e-5)


def test_the_file_names_no_path_of_the_machine_that_exported(resnet_dir, tmp_path: Path) -> None:
    """The exporter records a Python traceback per node; it is dropped, so the same model gives the same bytes from
    any checkout and the file does not tell where it was built."""
    import export

    checkout = str(Path(export.__file__).resolve().parents[1])
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    export_onnx(resnet_dir, first)
    export_onnx(resnet_dir, second)
    data = first.read_bytes()
    assert checkout.encode() not in data and b"site-packages" not in data
    assert data == second.read_bytes()
    proto = onnx.load(str(first))
    assert proto.graph.node and all(p.key != "pkg.torch.onnx.stack_trace" for n in proto.graph.node
                                    for p in n.metadata_props)
    assert any(p.key == "namespace" for n in proto.graph.node for p in n.metadata_props)  # the scopes stay
