"""The errors of the export stage; the CLI prints them as one line and exits with status 2."""
from __future__ import annotations


class ExportError(ValueError):
    """Bad input to an export or embedding command (missing file, mismatched model, wrong option)."""


class BackendUnavailable(ExportError):
    """A runtime (onnxruntime, TensorRT, CUDA) is not installed or not usable here; the message says what to do."""


class ParityError(ExportError):
    """An exported model does not reproduce the PyTorch embeddings within tolerance."""
