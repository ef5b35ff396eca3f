"""INT8 against fp32 ONNX on this CPU: images/s, file size, and the int8 gate's cosine and kNN figures.

    python bench/int8_speed.py --model runs/NAME --calibration /tmp/cifar/train --out /tmp/int8-speed

Two ResNet-18s: `--model` (a trained model dir, at its own crop, e.g. 32 px) and a random-weight torchvision
ResNet-18 at 224 px (weights do not change speed; its kNN figures are a random network's). Each is exported
twice with `export_onnx`: fp32, and `int8=True` calibrated on `--calibration` (its gate prints the cosine with
PyTorch and the kNN top-1 of both graphs on held-out images). Then onnxruntime (CPU provider, default threads)
runs both graphs on preprocessed random batches of 32 and 1, alternating fp32 / int8 within each round so
machine noise hits both alike. Prints a Markdown table of medians and writes results.json to --out.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed_speed import random_model_dir, timed  # noqa: E402

from export.onnx_export import export_onnx  # noqa: E402
from export.runtimes import OnnxRunner  # noqa: E402
from pretrain.ground.modeldir import load_model_dir  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="trained model dir (copied into --out)")
    p.add_argument("--calibration", type=Path, required=True, help="labelled image folder to calibrate and check on")
    p.add_argument("--out", type=Path, default=Path("/tmp/int8-speed"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0, help="minimum time per measurement")
    p.add_argument("--check-images", type=int, default=1000)
    args = p.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    trained = args.out / "trained"
    shutil.rmtree(trained, ignore_errors=True)
    trained.mkdir()
    for name in ("model.json", "backbone.safetensors"):
        shutil.copy(args.model / name, trained / name)
    models = {"trained": load_model_dir(trained), "random 224 px": random_model_dir(args.out / "random-224", 224)}
    results: dict = {"graphs": {}, "model_call": {}}
    for label, model in models.items():
        fp32 = export_onnx(model, model.path / "fp32.onnx")
        int8 = export_onnx(model, model.path / "int8.onnx", int8=True, calibration=args.calibration,
                           check_images=args.check_images)
        print(f"{label}: {int8.int8.line()}")
        results["graphs"][label] = {
            "crop": model.preprocessing.crop, "fp32_mb": fp32.path.stat().st_size / 2**20,
            "int8_mb": int8.path.stat().st_size / 2**20, "min_cosine": int8.int8.parity.min_cosine,
            "knn_fp32": int8.int8.knn_fp32, "knn_int8": int8.int8.knn_int8}
    rng = np.random.default_rng(0)
    for label, model in models.items():
        runners = {kind: OnnxRunner(model.path / f"{kind}.onnx", ["CPUExecutionProvider"]) for kind in ("fp32", "int8")}
        crop = model.preprocessing.crop
        for batch in (32, 1):
            x = rng.normal(size=(batch, 3, crop, crop)).astype(np.float32)
            for _ in range(args.rounds):
                for kind, runner in runners.items():
                    key = f"{label}|{batch}|{kind}"
                    results["model_call"].setdefault(key, []).append(timed(runner, x, args.seconds))
                    print(f"{label} batch {batch} {kind}: {results['model_call'][key][-1]:.1f} images/s", flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))

    med = {k: statistics.median(v) for k, v in results["model_call"].items()}
    print("\n| model | crop | batch | fp32 images/s | int8 images/s | int8 / fp32 | size fp32 -> int8 MB "
          "| min cosine | kNN top-1 fp32 -> int8 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, g in results["graphs"].items():
        for batch in (32, 1):
            a, b = med[f"{label}|{batch}|fp32"], med[f"{label}|{batch}|int8"]
            knn = f"{g['knn_fp32']:.4f} -> {g['knn_int8']:.4f}" if g["knn_fp32"] is not None else "n/a"
            print(f"| {label} | {g['crop']} | {batch} | {a:.1f} | {b:.1f} | {b / a:.2f}x | {g['fp32_mb']:.1f} -> "
                  f"{g['int8_mb']:.1f} | {g['min_cosine']:.4f} | {knn} |")


if __name__ == "__main__":
    main()
