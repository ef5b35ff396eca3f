"""One torchrun job (2 processes, gloo on CPU) that does every multi-process check of test_distributed.py.

Started as `python -m torch.distributed.run --standalone --nproc-per-node=2 ddp_worker.py DIR`; DIR holds
what the test prepared (inputs.pt, trainer.json, embed.json) and receives the results rank 0 writes.
Only the torch-free parts of the checks live here; the assertions are in the test.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from pretrain.ground import distributed
from pretrain.ground.backbones import build_backbone, resolve_spec
from pretrain.methods import build_method, method_hparams
from pretrain.methods.base import Method, Progress

# Tiny heads, so a step of every method takes milliseconds.
HPARAMS = {
    "simclr": {"out_dim": 16, "hidden_dim": 16}, "simclr2": {"out_dim": 16, "hidden_dim": 16},
    "drlim": {"out_dim": 16, "hidden_dim": 16},
    "barlowtwins": {"proj_dim": 32, "proj_layers": 3}, "vicreg": {"proj_dim": 32, "proj_layers": 3},
    "vicregl": {"proj_dim": 32, "proj_layers": 3, "local_proj_dim": 16, "matches_ab": 4, "matches_ba": 2},
    "swav": {"prototypes": 8, "proj_hidden_dim": 16, "proj_dim": 8},
    "dino": {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8},
    "moco": {"queue_size": 24, "proj_hidden_dim": 16, "proj_dim": 8},
    "byol": {"proj_hidden_dim": 16, "proj_dim": 8}, "simsiam": {"proj_dim": 16, "pred_hidden_dim": 8},
    "nnclr": {"queue_size": 24, "proj_hidden_dim": 16, "proj_dim": 8, "pred_hidden_dim": 16},
    "npid": {"proj_dim": 8, "negatives": 6}, "pirl": {"proj_dim": 8, "negatives": 6, "grid": 2},
    "deepcluster": {"clusters": 4, "hidden_dim": 16}, "sela": {"clusters": 4, "hidden_dim": 16},
    "cpc": {"code_dim": 8, "hidden_dim": 16, "context_layers": 1},
    "distill_features": {"proj_hidden_dim": 16},  # its teacher: the job's model dir (`build`)
    "mae": {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2},
}
BACKBONES = {"mae": ("test_vit", {"img_size": 32, "patch_size": 8})}  # default: test_resnet
MULTI_CROP = ("swav", "dino", "vicregl")
VIEW_SIZES = {"cpc": [64]}  # one view: its default 2 x 2 patches of 32 px
BATCH = 8  # the combined batch; each of the 2 processes takes 4
NUM_IMAGES = 16  # the training set of the methods with per-image state (a memory bank, pseudo-labels)
# the buffers a step changes (queues, support sets, memory banks, DINO's center), compared across processes
STATE = ("vectors", "ptr", "center")


def build(name: str, folder: Path) -> Method:
    """The method on its tiny backbone; feature distillation's teacher is the job's model dir (folder/model)."""
    torch.manual_seed(0)
    backbone_name, kwargs = BACKBONES.get(name, ("test_resnet", {}))
    spec = resolve_spec(backbone_name, None, 32, kwargs)
    backbone, dim = build_backbone(spec, 32)
    hparams = {**HPARAMS[name], **({"teacher": str(folder / "model")} if name == "distill_features" else {})}
    return build_method(name, backbone, dim, method_hparams(name, hparams), num_images=NUM_IMAGES)


def make_inputs(name: str) -> dict:
    g = torch.Generator().manual_seed(1)
    sizes = VIEW_SIZES.get(name, [32, 32, 16, 16] if name in MULTI_CROP else [32, 32])
    inputs = {"views": [torch.randn(BATCH, 3, s, s, generator=g) for s in sizes],
              "index": torch.randperm(NUM_IMAGES, generator=g)[:BATCH]}
    if name == "vicregl":
        lo = torch.rand(BATCH, len(sizes), 2, generator=g) * 0.5
        inputs["boxes"] = torch.cat([lo, lo + 0.5], dim=2)
    return inputs


def prepare(model: Method, bn: str) -> Method:
    """The model for batch-norm mode `bn`: "frozen" (every batch norm in eval mode: per-image, running statistics),
    "sync" (--sync-bn: global statistics) or "local" (plain DDP: each process normalises its own slice)."""
    if bn == "sync":
        model = distributed.convert_sync_batchnorm(model, torch.device("cpu"))
    model.train()
    if bn == "frozen":
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    return model


def one_step(model: Method, net: torch.nn.Module, inputs: dict) -> dict:
    """Forward and backward of one step; the loss of the global batch, every gradient and the buffers."""
    model.progress = Progress(0, 1, 10)
    loss, _ = net(inputs["views"], **{k: inputs[k] for k in model.needs})
    loss.backward()
    return {"loss": distributed.mean_over_ranks(loss.detach()),
            "grads": {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
            "buffers": {k: b.clone() for k, b in model.named_buffers() if k.endswith(STATE)}}


def local_slice(inputs: dict) -> dict:
    n, r = BATCH // dist.get_world_size(), dist.get_rank()
    return {key: [v[r * n:(r + 1) * n] for v in value] if key == "views" else value[r * n:(r + 1) * n]
            for key, value in inputs.items()}


def parity(folder: Path) -> None:
    """One DDP step of every method in each batch-norm mode (plain per-process BN for SimCLR only: the control)."""
    results = {}
    for bn, names in (("frozen", HPARAMS), ("sync", HPARAMS), ("local", ["simclr"])):
        for name in names:
            model = prepare(build(name, folder), bn)
            net = distributed.wrap(model, torch.device("cpu"), find_unused_parameters=model.skips_parameters)
            results[f"{bn}/{name}"] = one_step(model, net, local_slice(make_inputs(name)))
    if distributed.is_main():
        torch.save(results, folder / "parity.pt")


def disagreement(folder: Path) -> None:
    try:
        distributed.check_same({"method": "simclr", "batch_size": 64 * (1 + distributed.rank())})
    except distributed.RanksDisagree as e:
        (folder / f"disagree-{distributed.rank()}.txt").write_text(str(e))


def whole_data_labels(images_root: Path) -> dict[str, torch.Tensor]:
    """The trainer's data pass over a folder (every world-th image per process, gathered) and what DeepCluster's
    k-means and SeLA's Sinkhorn make of it: under torchrun, the same on every process as in one process."""
    from pretrain.data.images import scan_images
    from pretrain.ground.preprocess import Preprocessing
    from pretrain.train.datapass import DataPass

    images = scan_images(images_root, warn=False)
    data_pass = DataPass(images, Preprocessing.for_size(32), torch.device("cpu"), workers=0, batch_size=5,
                         progress=False)
    out = {}
    for name in ("deepcluster", "sela"):
        torch.manual_seed(0)
        backbone, dim = build_backbone(resolve_spec("test_resnet", None, 32, {}), 32)
        model = build_method(name, backbone, dim, method_hparams(name, HPARAMS[name]), num_images=len(images))
        out[f"{name}/features"], out[f"{name}/ok"] = data_pass(model.backbone, modules=(model.backbone,))
        model.start_epoch(0, data_pass)
        out[f"{name}/labels"] = model.labels.clone()
    return out


def clustering(folder: Path) -> None:
    torch.save(whole_data_labels(folder / "images-odd"), folder / f"clusters-{distributed.rank()}.pt")


class Interrupt(Exception):
    pass


def interrupted_run(folder: Path) -> None:
    from pretrain.train.config import PretrainConfig
    from pretrain.train.trainer import Trainer

    spec = json.loads((folder / "trainer.json").read_text())

    def stop(step: int) -> None:
        if step == spec["stop_at"]:
            raise Interrupt

    try:
        Trainer(PretrainConfig.from_dict(spec["config"]), on_step=stop, progress=False).fit()
    except Interrupt:
        pass


def embed(folder: Path) -> None:
    from pretrain.cli import main

    code = main(json.loads((folder / "embed.json").read_text()))
    (folder / f"embed-exit-{distributed.rank()}.txt").write_text(str(code))


def run(folder: Path) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    try:
        parity(folder)
        disagreement(folder)
        clustering(folder)
        interrupted_run(folder)
        embed(folder)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    run(Path(sys.argv[1]))
