"""`sslforge export onnx`: write runs/NAME/model.onnx and prove it reproduces the PyTorch backbone.

The graph maps a preprocessed batch `image` (n, 3, crop, crop) float32 to raw backbone features
`embedding` (n, D) (and, with the linear-probe head, `logits` (n, C)); L2-normalisation stays in
the runtime so the head keeps working on raw features. The model's preprocessing and fingerprint
are stored in the ONNX metadata, so a runtime can refuse a graph that belongs to another model.
The file appears only after onnx.checker and the parity check passed (written to a temporary
file, then renamed).
"""
from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from export.errors import ExportError
from export.onnxfile import EMBEDDING, INPUT, LOGITS, ONNX_FILE, OnnxInfo, strip_source_paths, to_fp16
from export.parity import ParityReport, check_parity, parity_batches
from export.quantize import Int8Check, check_int8, gate, quantize, split_images
from export.runtimes import OnnxRunner, TorchRunner
from pretrain.ground.atomic import atomic_path
from pretrain.ground.modeldir import ModelDir


class ExportModule(nn.Module):
    """Backbone (+ optional linear head on the raw features) with a forward argument named like the ONNX input."""

    def __init__(self, backbone: nn.Module, head: nn.Linear | None = None):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, image: torch.Tensor):
        features = self.backbone(image)
        return features if self.head is None else (features, self.head(features))


def _torch_export(module: ExportModule, size: int, *, opset: int | None, dynamic_batch: bool, batch_size: int):
    outputs = [EMBEDDING] if module.head is None else [EMBEDDING, LOGITS]
    example = torch.zeros(batch_size if not dynamic_batch else 2, 3, size, size)
    dynamic = {INPUT: {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates its steps on stdout
        program = torch.onnx.export(module, (example,), None, input_names=[INPUT], output_names=outputs,
                                    opset_version=opset, dynamo=True, dynamic_shapes=dynamic, verbose=False)
    return strip_source_paths(program.model_proto), outputs


@dataclass
class ExportResult:
    path: Path
    info: OnnxInfo
    reports: dict[str, ParityReport]  # output name -> parity against PyTorch (of the fp32 or fp16 graph)
    int8: Int8Check | None = None  # with int8: the gate's figures


def _int8_images(model: ModelDir, calibration: str | Path | None, count: int, check: int):
    """(calibration paths, check paths, check labels) from `calibration` or the model's training folder."""
    from export.images import find_images, label_of

    folder = calibration or (model.info.get("training") or {}).get("data")
    if not folder or not Path(folder).is_dir():
        raise ExportError(f"--int8 calibrates on the model's training images, but {folder or 'no folder'} is not "
                          f"there: pass --calibration DIR (images like the ones you will embed)")
    source = find_images(folder)
    calib, held_out = split_images(source.paths, count, check)
    return calib, held_out, [label_of(source.relative(p)) for p in held_out]


def export_onnx(model: ModelDir, out: str | Path | None = None, *, opset: int | None = None, fp16: bool = False,
                dynamic_batch: bool = True, batch_size: int = 1, with_head: bool = False,
                parity_images: list[Path] | tuple = (), int8: bool = False, calibration: str | Path | None = None,
                calibration_images: int = 256, check_images: int = 1000) -> ExportResult:
    """Export, check with onnx.checker, verify parity on random and `parity_images`; then write `out`.

    With `int8`, the checked fp32 graph is quantized (export/quantize.py) and written only if it passes its gate."""
    import onnx

    if not dynamic_batch and batch_size < 1:
        raise ExportError("--batch-size must be >= 1 for a fixed-batch export")
    if int8 and fp16:
        raise ExportError("--int8 and --fp16 exclude each other: int8 is quantized from the fp32 graph")
    if int8 and (calibration_images < 1 or check_images < 2):
        raise ExportError("--calibration-images must be >= 1 and --check-images >= 2")
    path = Path(out) if out else model.path / ONNX_FILE
    head = model.load_head() if with_head else None
    module = ExportModule(model.load_backbone(), head).eval()
    preprocessing = model.preprocessing
    proto, outputs = _torch_export(module, preprocessing.crop, opset=opset, dynamic_batch=dynamic_batch,
                                   batch_size=batch_size)
    precision = "fp16" if fp16 else "fp32"
    if fp16:
        proto = to_fp16(proto)
    info = OnnxInfo(fingerprint=model.fingerprint, preprocessing=model.info["preprocessing"],
                    embedding_dim=model.embedding_dim, precision=precision, outputs=outputs,
                    classes=model.classes if with_head else None,
                    opset=next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")))
    onnx.helper.set_model_props(proto, info.to_metadata())
    reports = {}
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as e:
            raise ExportError(f"onnx.checker rejected the exported graph of {model.path}: {e}") from None
        batches = parity_batches(preprocessing, parity_images)
        references = {EMBEDDING: module.backbone, LOGITS: nn.Sequential(module.backbone, head) if head else None}
        for name in outputs:
            reports[name] = check_parity(TorchRunner(references[name], channels_last=False),
                                         OnnxRunner(tmp, ["CPUExecutionProvider"], output=name), batches,
                                         precision=precision, name=f"ONNX output {name!r}")
        if not int8:
            return ExportResult(path, info, reports)
        calib, held_out, labels = _int8_images(model, calibration, calibration_images, check_images)
        with tempfile.TemporaryDirectory() as work:
            fp32 = Path(work) / "fp32.onnx"
            shutil.copyfile(tmp, fp32)
            quantize(fp32, tmp, preprocessing, calib, INPUT)
            quantized = onnx.load(str(tmp))
            info = replace(info, precision="int8")
            onnx.helper.set_model_props(quantized, info.to_metadata())
            onnx.save(quantized, str(tmp))
            check = check_int8(TorchRunner(module.backbone, channels_last=False),
                               OnnxRunner(fp32, ["CPUExecutionProvider"]), OnnxRunner(tmp, ["CPUExecutionProvider"]),
                               preprocessing, held_out, labels, len(calib))
        gate(check)
    return ExportResult(path, info, reports, check)

