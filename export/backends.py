"""The embedding runtimes, as one table: name -> how to load its runner for a model dir and say where it runs.

The Embedder, `sslforge embed`, `sslforge serve`, `sslforge index add` and `sslforge doctor` all read BACKENDS;
a new runtime is one entry here (and its runner), nothing else. Nothing heavy is imported until a backend loads.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.ground.cliargs import add_device


@dataclass(frozen=True)
class LoadOptions:
    """What the caller may choose for a backend; each loader reads the fields it needs."""

    device: str = "auto"
    onnx_path: str | Path | None = None
    providers: list[str] | None = None
    threads: int | None = None


@dataclass(frozen=True)
class Backend:
    name: str
    description: str  # for --help and docs
    load: Callable[[Any, LoadOptions], Any]  # (ModelDir, options) -> runner: a callable batch -> raw features
    runs_on: Callable[[Any], str]  # runner -> where it computes, in words


def _load_torch(model, options: LoadOptions):
    from export.runtimes import TorchRunner
    from pretrain.ground.device import select_device

    return TorchRunner(model.load_backbone(), select_device(options.device))


def _torch_runs_on(runner) -> str:
    import torch

    device = runner.device
    name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    return f"torch on {device}{name}"


def _load_onnx(model, options: LoadOptions):
    from export.onnxfile import ONNX_FILE, check_onnx_matches
    from export.runtimes import OnnxRunner

    path = Path(options.onnx_path) if options.onnx_path else model.path / ONNX_FILE
    check_onnx_matches(path, model)
    return OnnxRunner(path, options.providers, options.threads)


def _load_tensorrt(model, options: LoadOptions):
    from export.tensorrt import TensorRTRunner

    return TensorRTRunner(model)


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("torch", "the model dir's weights in PyTorch, on --device", _load_torch, _torch_runs_on),
    Backend("onnx", "model.onnx from `sslforge export onnx`, on the best onnxruntime providers that load",
            _load_onnx, lambda runner: "onnxruntime with " + ", ".join(runner.providers)),
    Backend("tensorrt", "model.plan from `sslforge export tensorrt` (NVIDIA GPU only)", _load_tensorrt,
            lambda runner: "a TensorRT engine on the GPU"),
)}


def backend_help() -> str:
    """The --backend help every command shows, from the table."""
    return "embedding runtime: " + "; ".join(f"{b.name} ({b.description})" for b in BACKENDS.values()) + \
        " (default: torch)"


def add_backend(parser: argparse.ArgumentParser) -> None:
    """--backend of every command that embeds (`embed`, `serve`, `demo`, `index add`), and --device for its torch
    backend."""
    parser.add_argument("--backend", choices=tuple(BACKENDS), default="torch", help=backend_help())
    add_device(parser, note="; --backend torch only")
