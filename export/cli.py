"""The export stage's commands, added to `sslforge` through the `sslforge.commands` entry point:

    sslforge export onnx RUN_DIR [--opset N] [--fp16 | --int8 [--calibration DIR]] [--no-dynamic-batch] [--with-head]
    sslforge export tensorrt RUN_DIR [--fp16] [--max-batch N]
    sslforge embed --model RUN_DIR --images DIR --out EMB_DIR [--backend onnx] [--shard i/n] ...
    sslforge embed merge --out EMB_DIR PART_DIR...
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from export.errors import ExportError
from pretrain.ground.cliargs import add_batch_size, add_model, add_quiet, add_workers


def _parity_images(folder: str | None, count: int) -> list[Path]:
    """`count` evenly spaced images of `folder` (default: the bundled CIFAR-10 sample's test images)."""
    from export.images import find_images
    from pretrain.data.images import sample_dir

    if count <= 0:
        return []
    paths = find_images(folder or sample_dir() / "test").paths
    step = max(1, len(paths) // count)
    return paths[::step][:count]


def cmd_export_onnx(args: argparse.Namespace) -> None:
    from export.onnx_export import export_onnx
    from pretrain.ground.modeldir import load_model_dir

    model = load_model_dir(args.model)
    result = export_onnx(model, args.out, opset=args.opset, fp16=args.fp16, dynamic_batch=args.dynamic_batch,
                         batch_size=args.batch_size, with_head=args.with_head,
                         parity_images=_parity_images(args.images, args.parity_images), int8=args.int8,
                         calibration=args.calibration, calibration_images=args.calibration_images,
                         check_images=args.check_images)
    for name, report in result.reports.items():
        print(report.line(f"ONNX {name}") + ": ok")
    if result.int8:
        print(result.int8.line() + ": ok")
    batch = "dynamic batch" if args.dynamic_batch else f"batch {args.batch_size}"
    print(f"wrote {result.path} (opset {result.info.opset}, {result.info.precision}, {batch}, "
          f"outputs {', '.join(result.info.outputs)})")


def cmd_export_tensorrt(args: argparse.Namespace) -> None:
    from export.parity import check_parity, parity_batches
    from export.runtimes import TorchRunner
    from export.tensorrt import TensorRTRunner, build_engine, import_tensorrt
    from pretrain.ground.modeldir import load_model_dir

    import_tensorrt()  # fail first, in one line, when TensorRT is missing
    model = load_model_dir(args.model)
    path, info = build_engine(model, fp16=args.fp16, max_batch=args.max_batch, opt_batch=args.opt_batch,
                              workspace_gib=args.workspace_gib, onnx_path=args.onnx)
    batches = parity_batches(model.preprocessing, _parity_images(args.images, args.parity_images))
    report = check_parity(TorchRunner(model.load_backbone("cuda"), "cuda", channels_last=False),
                          TensorRTRunner(model, path), batches, precision=info.precision, name="TensorRT")
    print(report.line("TensorRT") + ": ok")
    print(f"wrote {path} and {path.name}.json (TensorRT {info.tensorrt_version}, {info.gpu}, {info.precision}, "
          f"batch {info.profile['min'][0]}..{info.profile['max'][0]})")


def _torchrun_part(args: argparse.Namespace) -> tuple[tuple[int, int] | None, str, str]:
    """--shard, else the rank under torchrun (WORLD_SIZE > 1): each rank embeds its slice into OUT-partR."""
    from export.embed import parse_part

    if args.shard:
        return parse_part(args.shard), args.out, args.device
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None, args.out, args.device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local}" if args.device == "auto" and _cuda() else args.device
    return (rank, world), f"{args.out.rstrip('/')}-part{rank}", device


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cmd_embed(args: argparse.Namespace) -> None:
    import torch

    from pretrain.ground import distributed

    missing = [flag for flag in ("model", "images", "out") if not getattr(args, flag)]
    if missing:
        raise ExportError(f"sslforge embed needs {', '.join('--' + m for m in missing)} "
                          f"(or `sslforge embed merge` to join parts)")
    part, out, device = _torchrun_part(args)
    if part is None or args.shard or not distributed.has_rendezvous():  # no job to join: parts merged by hand
        _embed(args, part, out, device)
        return
    created = distributed.init(torch.device(device if device.startswith("cuda") else "cpu"))
    try:
        _embed_under_torchrun(args, part, out, device)
    finally:
        distributed.shutdown(created)


def _embed_under_torchrun(args: argparse.Namespace, part: tuple[int, int], out: str, device: str) -> None:
    """Each rank embeds its slice into OUT-partRANK; once all have, rank 0 merges them into OUT and removes
    the parts. A merged OUT from an earlier run is left as it is."""
    import shutil

    from export.embed import merge_parts
    from export.embeddings import read_manifest
    from pretrain.ground import distributed
    from pretrain.ground.embeddings import MANIFEST

    done = (Path(args.out) / MANIFEST).is_file() and read_manifest(args.out)
    if done and done.get("complete") and done.get("part") is None:
        if distributed.is_main():
            print(f"{args.out} is complete already (merged from {part[1]} parts); nothing to do")
        return
    _embed(args, part, out, device)
    distributed.barrier()
    if distributed.is_main():
        parts = [f"{args.out.rstrip('/')}-part{r}" for r in range(part[1])]
        result = merge_parts(parts, args.out)
        for p in parts:
            shutil.rmtree(p)
        print(f"merged the {part[1]} parts into {args.out}: {result['count']} embeddings, {result['failed']} failed")
    distributed.barrier()


def _embed(args: argparse.Namespace, part: tuple[int, int] | None, out: str, device: str) -> None:
    from export.embed import embed_images
    from export.embedder import Embedder
    from pretrain.ground import distributed

    embedder = Embedder.load(args.model, args.backend, device=device)
    result = embed_images(embedder, args.images, out, batch_size=args.batch_size, workers=args.workers,
                          shard_size=args.shard_size, dtype=args.dtype, part=part, progress=not args.quiet)
    speed = result["throughput"]
    print(f"embedded {result['count']} images into {out} ({len(result['shards'])} shards, {result['dim']}-d "
          f"{result['dtype']}, backend {result['backend']}: {embedder.runs_on}); {result['failed']} unreadable "
          f"(see failed.txt); "
          f"this run: {speed['images']} images in {speed['seconds']:.1f} s = {speed['images_per_s']:.1f} images/s")
    if part is not None and not distributed.active():
        print(f"part {part[0]}/{part[1]} done: once every part is, run `sslforge embed merge --out OUT PART_DIRS...`")


def cmd_embed_merge(args: argparse.Namespace) -> None:
    from export.embed import merge_parts

    merged = merge_parts(args.parts, args.out)
    print(f"merged {len(args.parts)} parts into {args.out}: {merged['count']} embeddings, {merged['failed']} failed")


def add_commands(sub: argparse._SubParsersAction) -> tuple[type[Exception], ...]:
    """Add `export onnx`, `export tensorrt`, `embed` and `embed merge`; return the error types of bad input."""
    from export.backends import add_backend
    from export.embed import DEFAULT_SHARD_SIZE, DTYPES

    ex = sub.add_parser("export", help="export a model dir to ONNX or TensorRT (with a parity check)",
                        description="Export a trained backbone for deployment; each export is checked against "
                                    "PyTorch and fails (exit 2) when the embeddings differ beyond tolerance.")
    ex_sub = ex.add_subparsers(dest="export_command", required=True, metavar="FORMAT",
                               help="onnx or tensorrt; `sslforge export FORMAT --help` for its options")

    def add_parity_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--images", metavar="DIR", help="real images for the parity check "
                                                       "(default: the bundled CIFAR-10 sample's test images)")
        p.add_argument("--parity-images", type=int, default=8, metavar="N",
                       help="how many real images the parity check uses besides random ones (default: 8)")

    p = ex_sub.add_parser("onnx", help="write RUN_DIR/model.onnx and check parity with onnxruntime",
                          description="Export the backbone (input 'image': preprocessed (n, 3, crop, crop) float32; "
                                      "output 'embedding': raw features) to ONNX with the preprocessing and model "
                                      "fingerprint in its metadata; run onnx.checker and compare with PyTorch on "
                                      "random and real images (fp32: max abs diff < 1e-4 after L2-normalisation).")
    p.add_argument("model", metavar="RUN_DIR", help="model dir written by `sslforge pretrain`")
    p.add_argument("--out", help="output file (default: RUN_DIR/model.onnx)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's, 20 with torch 2.14)")
    p.add_argument("--fp16", action="store_true", help="FP16 weights and compute, float32 input/output")
    p.add_argument("--int8", action="store_true",
                   help="INT8 graph by static quantization (onnxruntime; int8 weights per channel, uint8 "
                        "activations), calibrated on --calibration-images images and written only if on "
                        "--check-images other images every embedding keeps cosine >= 0.99 with PyTorch and the "
                        "kNN top-1 drops by <= 0.01 (else exit 2, nothing written)")
    p.add_argument("--calibration", metavar="DIR",
                   help="with --int8: images to calibrate and check on (default: the model's training folder)")
    p.add_argument("--calibration-images", type=int, default=256, metavar="N",
                   help="with --int8: images whose activation ranges set the quantization (default: 256)")
    p.add_argument("--check-images", type=int, default=1000, metavar="N",
                   help="with --int8: other images of the same folder the gate checks (default: 1000)")
    p.add_argument("--dynamic-batch", action=argparse.BooleanOptionalAction, default=True,
                   help="dynamic batch axis (default); --no-dynamic-batch fixes it to --batch-size")
    p.add_argument("--batch-size", type=int, default=1, help="the fixed batch of --no-dynamic-batch (default: 1)")
    p.add_argument("--with-head", action="store_true",
                   help="add the linear-probe head (head.safetensors) as a second output 'logits'")
    add_parity_options(p)
    p.set_defaults(func=cmd_export_onnx)

    p = ex_sub.add_parser("tensorrt", help="build RUN_DIR/model.plan from model.onnx (needs TensorRT and a GPU)",
                          description="Build a TensorRT engine (strongly typed; FP16 via an FP16 ONNX graph) with a "
                                      "dynamic batch profile, write the JSON sidecar model.plan.json and check "
                                      "parity against PyTorch. Needs TensorRT 10 or 11 and an NVIDIA GPU.")
    p.add_argument("model", metavar="RUN_DIR", help="model dir with model.onnx (`sslforge export onnx` first)")
    p.add_argument("--onnx", help="fp32 ONNX file to build from (default: RUN_DIR/model.onnx)")
    p.add_argument("--fp16", action="store_true", help="build from the FP16 conversion of the ONNX graph")
    p.add_argument("--max-batch", type=int, default=256, help="largest batch of the profile (default: 256)")
    p.add_argument("--opt-batch", type=int, help="batch the kernels are tuned for (default: --max-batch)")
    p.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace limit in GiB (default: 4)")
    add_parity_options(p)
    p.set_defaults(func=cmd_export_tensorrt)

    emb = sub.add_parser("embed", help="embed a folder of images into an embeddings dir (resumable)",
                         description="Embed every image under --images (recursively; or a text file listing "
                                     "paths) into --out: manifest.json + numbered vectors-*.npy / ids-*.jsonl "
                                     "shards. Re-running the same command resumes after the last complete shard; "
                                     "unreadable images are skipped and listed in failed.txt.")
    add_model(emb, required=False, help="model dir written by `sslforge pretrain` (required)")
    emb.add_argument("--images", metavar="DIR|LIST.txt", help="image folder, or a file with one path a line "
                                                              "(required)")
    emb.add_argument("--out", metavar="EMB_DIR", help="embeddings dir to write or resume (required)")
    add_backend(emb)
    add_batch_size(emb)
    add_workers(emb, default=2)
    emb.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                     help=f"images per shard, the unit of resumption (default: {DEFAULT_SHARD_SIZE})")
    emb.add_argument("--dtype", choices=DTYPES, default="float32", help="stored vector type (default: float32)")
    emb.add_argument("--shard", metavar="i/n", help="embed only the i-th of n contiguous slices (for several GPUs "
                                                    "or machines; join them with `sslforge embed merge`)")
    add_quiet(emb)
    emb.set_defaults(func=cmd_embed)
    emb_sub = emb.add_subparsers(dest="embed_command", required=False, metavar="merge",
                                 help="`sslforge embed merge --help`: join the parts of a --shard job")
    p = emb_sub.add_parser("merge", help="join the embeddings dirs of parts 0..n-1 into one",
                           description="Join complete part dirs written with --shard i/n (or under torchrun) "
                                       "into one embeddings dir, shards renumbered in part order.")
    p.add_argument("parts", nargs="+", metavar="PART_DIR", help="the embeddings dirs of all parts")
    p.add_argument("--out", required=True, metavar="EMB_DIR", help="the merged embeddings dir (new or empty)")
    p.set_defaults(func=cmd_embed_merge)

    return (ExportError,)
