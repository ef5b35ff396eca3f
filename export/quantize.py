"""INT8 ONNX: static quantization calibrated on real images, written only when it keeps the embeddings.

`sslforge export onnx RUN_DIR --int8` exports the fp32 graph as usual (with its own parity check), then:
1. prepares it for quantization (onnxruntime's pre-processing: shape inference, batch norms folded into convs);
2. quantizes it statically (onnxruntime.quantization: QDQ format, int8 weights per output channel in 7 bits so
   that CPUs without VNNI do not saturate, uint8 activations) with activation ranges calibrated (min-max) on
   `calibration` images of the model's training folder;
3. checks it on `check` other images of that folder (none of them seen by the calibration): every
   embedding's cosine with PyTorch's >= 0.99, and, when the folder has class sub-folders, the kNN top-1
   (half of those images as the bank, half as queries, k=20, T=0.1) within 0.01 of the fp32 graph's.
Only then is model.onnx (precision "int8" in its metadata) written; otherwise ExportError (exit 2) and nothing.
The Embedder, `sslforge embed` and the service load it like any model.onnx (`--backend onnx`).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export.errors import ExportError, ParityError
from export.parity import ParityReport, compare
from pretrain.data.images import load_rgb
from pretrain.ground.knn import knn_vote, l2_normalize, label_codes, topk_accuracy
from pretrain.ground.preprocess import Preprocessing

MIN_COSINE = 0.99
MAX_KNN_DROP = 0.01
KNN_K, KNN_T = 20, 0.1


@dataclass
class Int8Check:
    """What the gate measured: parity with PyTorch and, with labels, the kNN top-1 of fp32 and int8."""

    parity: ParityReport
    images: int
    knn_fp32: float | None
    knn_int8: float | None
    calibration_images: int

    @property
    def knn_drop(self) -> float | None:
        return None if self.knn_fp32 is None else self.knn_fp32 - self.knn_int8

    def line(self) -> str:
        knn = (f"kNN top-1 {self.knn_int8:.4f} vs fp32 {self.knn_fp32:.4f} (drop {self.knn_drop:+.4f}, limit "
               f"{MAX_KNN_DROP})" if self.knn_fp32 is not None else "kNN check skipped: the folder has no class "
                                                                  "sub-folders")
        return (f"int8 check on {self.images} held-out images (calibrated on {self.calibration_images}): min cosine "
                f"{self.parity.min_cosine:.4f} with PyTorch (limit {MIN_COSINE}); {knn}")


def split_images(paths: list[Path], calibration: int, check: int) -> tuple[list[Path], list[Path]]:
    """Evenly spaced calibration images, and evenly spaced check images among the others (disjoint, fixed)."""
    if len(paths) < 2:
        raise ExportError(f"--int8 needs at least 2 images to calibrate and check on (found {len(paths)})")
    calibration = max(1, min(calibration, len(paths) // 2))
    step = len(paths) / calibration
    chosen = {int(i * step) for i in range(calibration)}
    calib = [paths[i] for i in sorted(chosen)]
    rest = [p for i, p in enumerate(paths) if i not in chosen]
    step = max(1.0, len(rest) / max(1, check))
    return calib, [rest[int(i * step)] for i in range(min(check, len(rest)))]


def _batches(preprocessing: Preprocessing, paths: list[Path], batch: int = 32):
    for start in range(0, len(paths), batch):
        yield torch.stack([preprocessing(load_rgb(p)) for p in paths[start:start + batch]]).numpy()


def quantize(fp32: Path, out: Path, preprocessing: Preprocessing, calibration: list[Path], input_name: str) -> None:
    """Pre-process and statically quantize the fp32 graph at `fp32` into `out` (QDQ, per-channel int8 weights)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = _batches(preprocessing, calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        # reduce_range: 7-bit weights, so CPUs without VNNI (whose u8 x s8 products can saturate 16 bits) compute the
        # same graph correctly; the file runs on whatever CPU serves it, not the one that exported it
        quantize_static(prepared, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


def check_int8(reference, fp32_runner, int8_runner, preprocessing: Preprocessing, check: list[Path],
               labels: list[str | None], calibration_images: int) -> Int8Check:
    """Embeddings of the check images from PyTorch, the fp32 graph and the int8 graph; the gate's figures."""
    ref, fp32, int8 = [], [], []
    for batch in _batches(preprocessing, check):
        ref.append(reference(batch))
        fp32.append(fp32_runner(batch))
        int8.append(int8_runner(batch))
    ref, fp32, int8 = np.concatenate(ref), np.concatenate(fp32), np.concatenate(int8)
    parity = compare(ref, int8, "int8")
    knn_fp32 = knn_int8 = None
    classes = sorted({c for c in labels if c is not None})
    if len(classes) >= 2 and all(c is not None for c in labels) and len(check) >= 4:
        codes = label_codes(labels, classes)
        knn_fp32, knn_int8 = (_knn_top1(x, codes, len(classes)) for x in (fp32, int8))
    return Int8Check(parity, len(check), knn_fp32, knn_int8, calibration_images)


def _knn_top1(features: np.ndarray, codes: np.ndarray, num_classes: int) -> float:
    """Weighted kNN top-1 with the even rows as the bank and the odd rows as the queries."""
    x = l2_normalize(features)
    bank, queries = x[0::2], x[1::2]
    sims = queries @ bank.T
    k = min(KNN_K, len(bank))
    nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    scores = knn_vote(np.take_along_axis(sims, nearest, axis=1), codes[0::2][nearest], num_classes, KNN_T)
    return topk_accuracy(scores, codes[1::2], ks=(1,))["top1"]


def gate(result: Int8Check) -> None:
    """Raise ParityError (exit 2, nothing written) when the int8 graph does not keep the embeddings."""
    problems = []
    if not result.parity.min_cosine >= MIN_COSINE:
        problems.append(f"min cosine {result.parity.min_cosine:.4f} < {MIN_COSINE}")
    if result.knn_drop is not None and result.knn_drop > MAX_KNN_DROP:
        problems.append(f"kNN top-1 drops by {result.knn_drop:.4f} > {MAX_KNN_DROP}")
    if problems:
        raise ParityError(result.line() + ": FAILED (" + "; ".join(problems) + "): the int8 graph was not written; "
                          "keep the fp32 model.onnx, or calibrate on more or other images (--calibration-images, "
                          "--calibration DIR)")
