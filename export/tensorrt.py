"""`sslforge export tensorrt`: build runs/NAME/model.plan from the ONNX graph, and run it.

UNVERIFIED HERE: TensorRT cannot be installed on the machines this project is developed on (its
libs wheel downloads from a host they cannot reach), so the engine build and execution below are
written against the TensorRT 10/11 Python API documentation but have never run. What is tested:
the FP16 ONNX conversion, the JSON sidecar, the parity harness, and the missing-TensorRT error.

Version notes (TensorRT 11): every network is strongly typed and the FP16/INT8 builder flags are
gone, so FP16 means parsing an FP16 ONNX graph (float32 I/O, fp16 inside); EXPLICIT_BATCH no longer
exists; the dynamic batch range is one optimisation profile. TensorRT 10 takes the same path with
the STRONGLY_TYPED creation flag. Engines are tied to the TensorRT version and the GPU: the sidecar
records both and the runner refuses a mismatch instead of failing deep inside TensorRT.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from export.errors import BackendUnavailable, ExportError
from export.onnxfile import EMBEDDING, INPUT, ONNX_FILE, check_onnx_matches, to_fp16
from pretrain.ground.atomic import write_json, write_with
from pretrain.ground.modeldir import ModelDir
from pretrain.ground.schema import read_json

PLAN_FILE = "model.plan"
SIDECAR_SUFFIX = ".json"
SIDECAR_VERSION = 1
INSTALL_HINT = ("TensorRT is not installed: on a machine with an NVIDIA GPU and CUDA, pip install tensorrt "
                "(it fetches its libraries from pypi.nvidia.com); or use --backend onnx")


def import_tensorrt():
    """The tensorrt module, or a one-line BackendUnavailable error saying what to install."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable(INSTALL_HINT) from None
    return tensorrt


def _cuda_torch():
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT needs a CUDA GPU and none is visible here: use --backend onnx")
    return torch


@dataclass(frozen=True)
class EngineInfo:
    """The JSON sidecar next to model.plan: what the engine was built from, with what, for which GPU."""

    model_fingerprint: str
    onnx_sha256: str
    tensorrt_version: str
    gpu: str
    compute_capability: str
    precision: str  # "fp32" or "fp16" (fp16 = built from an FP16 ONNX graph, strongly typed)
    profile: dict  # {"min": [..], "opt": [..], "max": [..]} shapes of the input
    input: str = INPUT
    output: str = EMBEDDING
    sidecar_version: int = SIDECAR_VERSION


def sidecar_path(plan: str | Path) -> Path:
    return Path(str(plan) + SIDECAR_SUFFIX)


def write_sidecar(plan: str | Path, info: EngineInfo) -> None:
    write_json(sidecar_path(plan), asdict(info))


def read_sidecar(plan: str | Path) -> EngineInfo:
    path = sidecar_path(plan)
    if not path.is_file():
        raise ExportError(f"{path} is missing: rebuild the engine with `sslforge export tensorrt {Path(plan).parent}`")
    data = read_json(path, ExportError, "an engine sidecar")
    try:
        if data.get("sidecar_version") != SIDECAR_VERSION:
            raise ExportError(f"{path} has sidecar version {data.get('sidecar_version')}, this sslforge reads "
                              f"{SIDECAR_VERSION}: rebuild the engine")
        return EngineInfo(**data)
    except (AttributeError, TypeError) as e:
        raise ExportError(f"{path} is not a valid engine sidecar ({e}): rebuild the engine") from None


def check_engine(info: EngineInfo, model: ModelDir, tensorrt_version: str, gpu: str, plan: Path) -> None:
    """Refuse an engine built from other weights, by another TensorRT, or for another GPU."""
    rebuild = f"rebuild it with `sslforge export tensorrt {model.path}`"
    if info.model_fingerprint != model.fingerprint:
        raise ExportError(f"{plan} was built from other weights ({info.model_fingerprint} != {model.fingerprint}): "
                          + rebuild)
    if info.tensorrt_version != tensorrt_version:
        raise ExportError(f"{plan} was built with TensorRT {info.tensorrt_version}, this is {tensorrt_version}: "
                          + rebuild)
    if info.gpu != gpu:
        raise ExportError(f"{plan} was built for {info.gpu}, this GPU is {gpu}: " + rebuild)


def batch_profile(crop: int, max_batch: int, opt_batch: int | None = None) -> dict:
    """The optimisation profile of the dynamic batch axis (kernels are tuned for `opt`)."""
    if max_batch < 1:
        raise ExportError("--max-batch must be >= 1")
    opt = min(opt_batch or max_batch, max_batch)
    return {k: [n, 3, crop, crop] for k, n in (("min", 1), ("opt", opt), ("max", max_batch))}


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _network_flags(trt) -> int:
    """Strongly typed networks: the default (and only kind) in TensorRT 11, a creation flag in TensorRT 10."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def build_engine(model: ModelDir, *, fp16: bool = False, max_batch: int = 256, opt_batch: int | None = None,
                 workspace_gib: float = 4.0, onnx_path: str | Path | None = None,
                 out: str | Path | None = None) -> tuple[Path, EngineInfo]:
    """Parse the fp32 ONNX graph (converted to FP16 first with `fp16`), build with a batch profile, save
    the plan and its sidecar atomically."""
    trt = import_tensorrt()
    torch = _cuda_torch()
    import onnx

    onnx_path = Path(onnx_path) if onnx_path else model.path / ONNX_FILE
    onnx_info = check_onnx_matches(onnx_path, model)
    if onnx_info.precision != "fp32":
        raise ExportError(f"{onnx_path} is already {onnx_info.precision}: export an fp32 ONNX graph "
                          f"(`sslforge export onnx {model.path}`) and pass --fp16 here")
    graph = onnx.load(str(onnx_path))
    if fp16:
        graph = to_fp16(graph)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(graph.SerializeToString()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile_shapes = batch_profile(model.preprocessing.crop, max_batch, opt_batch)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, *(tuple(profile_shapes[k]) for k in ("min", "opt", "max")))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    path = Path(out) if out else model.path / PLAN_FILE
    data = bytes(plan)
    write_with(path, lambda tmp: tmp.write_bytes(data))
    props = torch.cuda.get_device_properties(0)
    info = EngineInfo(model_fingerprint=model.fingerprint, onnx_sha256=_sha256(onnx_path),
                      tensorrt_version=trt.__version__, gpu=props.name,
                      compute_capability=f"{props.major}.{props.minor}", precision="fp16" if fp16 else "fp32",
                      profile=profile_shapes)
    write_sidecar(path, info)
    return path, info


class TensorRTRunner:
    """Execute a serialized engine on torch CUDA tensors; batches above the profile's max are split."""

    def __init__(self, model: ModelDir, plan: str | Path | None = None):
        trt = import_tensorrt()
        self.torch = _cuda_torch()
        self.plan = Path(plan) if plan else model.path / PLAN_FILE
        if not self.plan.is_file():
            raise ExportError(f"{self.plan} does not exist: run `sslforge export tensorrt {model.path}` first")
        self.info = read_sidecar(self.plan)
        check_engine(self.info, model, trt.__version__, self.torch.cuda.get_device_properties(0).name, self.plan)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if self.engine is None:
            raise ExportError(f"TensorRT could not load {self.plan}: rebuild it on this machine")
        self.context = self.engine.create_execution_context()
        self.max_batch = self.info.profile["max"][0]
        self.output_dtype = self.torch.float16 if self.engine.get_tensor_dtype(self.info.output) == trt.DataType.HALF \
            else self.torch.float32

    def _run(self, x):
        torch = self.torch
        self.context.set_input_shape(self.info.input, tuple(x.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.info.output)), device="cuda",
                          dtype=self.output_dtype)
        self.context.set_tensor_address(self.info.input, x.data_ptr())
        self.context.set_tensor_address(self.info.output, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ExportError(f"TensorRT execution of {self.plan} failed")
        stream.synchronize()
        return out.float().cpu().numpy()

    def __call__(self, batch) -> np.ndarray:
        x = self.torch.as_tensor(np.asarray(batch, dtype=np.float32)).cuda().contiguous()
        return np.concatenate([self._run(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)])
