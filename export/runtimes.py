"""Runners: callables mapping a preprocessed batch (n, 3, H, W) float32 to raw backbone features (n, D).

Every backend of the Embedder and every side of a parity check is one of these, so the
preprocessing and the normalisation around them are written once (in embedder.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.errors import BackendUnavailable, ExportError

ONNX_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class TorchRunner:
    """The PyTorch module in eval mode under inference_mode, channels-last on 4-D inputs (faster convs on CPU)."""

    def __init__(self, module: nn.Module, device: str | torch.device = "cpu", channels_last: bool = True):
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.module = module.to(self.device).eval()
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        x = torch.as_tensor(batch).to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.module(x).float().cpu().numpy()


def preferred_providers(available: list[str]) -> list[str]:
    """The onnxruntime execution providers the Embedder asks for, best first, among those `available`."""
    return [p for p in ONNX_PROVIDERS if p in available]


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed: pip install 'sslforge[export]' "
                                 "(or onnxruntime-gpu for CUDA)") from None
    return onnxruntime


class OnnxRunner:
    """An onnxruntime session; providers default to the best available (TensorRT, CUDA, then CPU).

    A model exported with a fixed batch size is fed in chunks of that size, the last one padded.
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None,
                 output: str = "embedding"):
        ort = _import_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"{path} does not exist: run `sslforge export onnx {path.parent}` first")
        available = ort.get_available_providers()
        providers = providers or preferred_providers(available)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: provider fallbacks are reported through `providers`
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.providers = self.session.get_providers()
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.fixed_batch = first.shape[0] if isinstance(first.shape[0], int) else None
        names = [o.name for o in self.session.get_outputs()]
        if output not in names:
            raise ExportError(f"{path} has no output {output!r} (outputs: {', '.join(names)}): export it again")
        self.output = output

    def __call__(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(batch, dtype=np.float32))
        if self.fixed_batch is None:
            return self.session.run([self.output], {self.input_name: x})[0].astype(np.float32, copy=False)
        out = []
        for start in range(0, len(x), self.fixed_batch):
            chunk = x[start:start + self.fixed_batch]
            n = len(chunk)
            if n < self.fixed_batch:
                chunk = np.concatenate([chunk, np.zeros((self.fixed_batch - n, *chunk.shape[1:]), np.float32)])
            out.append(self.session.run([self.output], {self.input_name: chunk})[0][:n])
        return np.concatenate(out).astype(np.float32, copy=False)
