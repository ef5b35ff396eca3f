"""TensorRT: what can run without it (sidecar, checks, profile, FP16 graph, parity harness against the
onnxruntime backend), and a real build-and-parity test where TensorRT and a GPU are present."""
import importlib.util
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.errors import BackendUnavailable, ExportError, ParityError
from export.onnx_export import export_onnx
from export.onnxfile import to_fp16
from export.parity import check_parity, parity_batches
from export.runtimes import OnnxRunner, TorchRunner
from export.tensorrt import (
    EngineInfo,
    batch_profile,
    build_engine,
    check_engine,
    import_tensorrt,
    read_sidecar,
    write_sidecar,
)
from pretrain.cli import main

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def engine_info(model, **changes) -> EngineInfo:
    info = EngineInfo(model_fingerprint=model.fingerprint, onnx_sha256="sha256:00", tensorrt_version="11.4.0",
                      gpu="NVIDIA H100", compute_capability="9.0", precision="fp16",
                      profile=batch_profile(32, 64, 16))
    return replace(info, **changes)


def test_sidecar_round_trip_and_engine_checks(resnet_dir, tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    info = engine_info(resnet_dir)
    write_sidecar(plan, info)
    assert (tmp_path / "model.plan.json").is_file()
    assert read_sidecar(plan) == info
    check_engine(info, resnet_dir, "11.4.0", "NVIDIA H100", plan)
    for changes, message in (({"model_fingerprint": "sha256:beef"}, "built from other weights"),
                             ({"tensorrt_version": "10.9.0"}, "built with TensorRT 10.9.0, this is 11.4.0"),
                             ({"gpu": "NVIDIA L4"}, "built for NVIDIA L4, this GPU is NVIDIA H100")):
        with pytest.raises(ExportError, match=message + ".*sslforge export tensorrt"):
            check_engine(engine_info(resnet_dir, **changes), resnet_dir, "11.4.0", "NVIDIA H100", plan)
    (tmp_path / "model.plan.json").write_text('{"sidecar_version": 99}')
    with pytest.raises(ExportError, match="sidecar version 99"):
        read_sidecar(plan)
    with pytest.raises(ExportError, match="missing: rebuild"):
        read_sidecar(tmp_path / "other.plan")


def test_batch_profile() -> None:
    assert batch_profile(224, 128, 32) == {"min": [1, 3, 224, 224], "opt": [32, 3, 224, 224],
                                           "max": [128, 3, 224, 224]}
    assert batch_profile(32, 8)["opt"] == [8, 3, 32, 32]
    with pytest.raises(ExportError, match="--max-batch"):
        batch_profile(32, 0)


def test_fp16_graph_for_tensorrt_passes_the_checker_and_the_parity_harness(resnet_dir, tmp_path: Path) -> None:
    """What `export tensorrt --fp16` feeds TensorRT, checked with the same harness, onnxruntime standing in."""
    graph = to_fp16(onnx.load(str(resnet_dir.path / "model.onnx")))
    onnx.checker.check_model(graph, full_check=True)
    path = tmp_path / "fp16.onnx"
    onnx.save(graph, str(path))
    batches = parity_batches(resnet_dir.preprocessing)  # random-pixel batches of 1 and 3
    reference = TorchRunner(resnet_dir.load_backbone(), channels_last=False)
    report = check_parity(reference, OnnxRunner(path), batches, precision="fp16", name="fp16 graph")
    assert report.ok and report.min_cosine > 0.995 and report.rows == 4
    with pytest.raises(ParityError, match=r"fp32.*FAILED"):  # fp16 results are not fp32-exact
        check_parity(reference, lambda x: OnnxRunner(path)(x) + 1e-2, batches, precision="fp32", name="fp16 graph")


def test_export_tensorrt_without_tensorrt_is_one_line(resnet_dir, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailable, match="pip install tensorrt"):
        import_tensorrt()
    assert main(["export", "tensorrt", str(resnet_dir.path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sslforge: error: TensorRT is not installed") and err.count("\n") == 1


@pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT and a CUDA GPU (not installable on the dev machines)")
def test_real_engine_build_and_parity(tmp_path: Path) -> None:
    from export_helpers import make_model_dir

    from export.embedder import Embedder

    model = make_model_dir(tmp_path / "run")
    export_onnx(model)
    for fp16 in (False, True):
        assert main(["export", "tensorrt", str(model.path), "--max-batch", "8"] + (["--fp16"] if fp16 else [])) == 0
        info = read_sidecar(model.path / "model.plan")
        assert info.precision == ("fp16" if fp16 else "fp32") and info.profile["max"][0] == 8
    x = np.random.default_rng(0).normal(size=(11, 3, 32, 32)).astype(np.float32)  # > max batch: split
    trt = Embedder.load(model.path, "tensorrt").embed_batch(x)
    ref = Embedder.load(model.path, "torch", device="cuda").embed_batch(x)
    assert (trt * ref).sum(1).min() > 0.995


class FakeTensorRT(types.ModuleType):
    """Stands in for the tensorrt module (11.x surface): records what build_engine asks of it."""

    __version__ = "11.4.0.106"

    def __init__(self):
        super().__init__("tensorrt")
        calls = self.calls = {}

        class Logger:
            WARNING = "warning"

            def __init__(self, level):
                calls["logger"] = level

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                calls["profile"] = (name, lo, opt, hi)

        class Config:
            def set_memory_pool_limit(self, pool, size):
                calls["workspace"] = (pool, size)

            def add_optimization_profile(self, profile):
                calls["profiles"] = calls.get("profiles", 0) + 1

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                calls["network_flags"] = flags
                return "network"

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"serialized engine"

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse(self, data):
                calls["graph"] = onnx.load_from_string(data)
                return True

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")


def test_engine_build_orchestration_with_a_stand_in_tensorrt(resnet_dir, tmp_path: Path, monkeypatch) -> None:
    """Which graph TensorRT parses, the network flags, the profile, and the files written (no real TensorRT)."""
    export_onnx(resnet_dir, tmp_path / "half.onnx", fp16=True)
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(name="NVIDIA H100", major=9, minor=0))
    plan, info = build_engine(resnet_dir, fp16=True, max_batch=16, opt_batch=4, workspace_gib=0.5,
                              out=tmp_path / "model.plan")
    assert plan.read_bytes() == b"serialized engine" and read_sidecar(plan) == info
    assert (info.precision, info.tensorrt_version, info.gpu, info.compute_capability) == (
        "fp16", "11.4.0.106", "NVIDIA H100", "9.0")
    assert fake.calls["network_flags"] == 1 << 1  # strongly typed
    assert fake.calls["profile"] == ("image", (1, 3, 32, 32), (4, 3, 32, 32), (16, 3, 32, 32))
    assert fake.calls["workspace"] == ("workspace", 1 << 29) and fake.calls["profiles"] == 1
    graph = fake.calls["graph"]  # FP16 inside, float32 at the edges
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    _, fp32 = build_engine(resnet_dir, max_batch=8, out=tmp_path / "fp32.plan")
    assert fp32.precision == "fp32"
    assert not any(t.data_type == onnx.TensorProto.FLOAT16 for t in fake.calls["graph"].graph.initializer)
    with pytest.raises(ExportError, match="is already fp16: export an fp32 ONNX graph"):
        build_engine(resnet_dir, onnx_path=tmp_path / "half.onnx", out=tmp_path / "x.plan")
