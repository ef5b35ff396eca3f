"""Data-parallel helpers for torchrun: process group, global-batch collectives, synchronised batch norm.

Every helper is the identity (or a no-op) in a single process, so a method written with them is the
same code on one device and on many. `gather` is differentiable: each process computes the loss of
the global batch and the gradient of its own slice flows back, which with DistributedDataParallel's
gradient averaging gives exactly the gradient of one process that sees the whole batch.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pretrain.ground.errors import ConfigError

# How long a process waits for the others at a collective: long enough for rank 0's online kNN.
TIMEOUT = timedelta(minutes=60)


class RanksDisagree(ConfigError):
    """The processes of one job were started with different settings or data."""


def launched() -> bool:
    """True inside a process that torchrun started as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def has_rendezvous() -> bool:
    """torchrun (or a launcher that sets MASTER_ADDR, as torchrun does) gave the processes a place to meet."""
    return "MASTER_ADDR" in os.environ


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init(device: torch.device) -> bool:
    """Join the job torchrun started (NCCL on CUDA, gloo otherwise); True when this call created the group
    (the caller then owns `shutdown`). Nothing to do outside torchrun or when a group already exists."""
    if not launched() or dist.is_initialized():
        return False
    if not has_rendezvous():
        raise ConfigError("WORLD_SIZE is set but MASTER_ADDR is not: start the processes with torchrun "
                          "(or sslforge pretrain --devices N)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device, timeout=TIMEOUT)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return True


def shutdown(created: bool) -> None:
    if created and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


class _Gather(torch.autograd.Function):
    """all_gather along dim 0; backward sums the gradients of every process and keeps this process's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # autograd may share the incoming tensor
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


class _Sum(torch.autograd.Function):
    """all_reduce (sum) whose backward is the sum of the gradients of every process."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def gather(x: torch.Tensor) -> torch.Tensor:
    """The global batch: this tensor from every process, concatenated in rank order (equal sizes), with
    gradients flowing back to each process's own rows. The identity in one process."""
    return _Gather.apply(x) if active() else x


def all_reduce(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (or max) of `x` over all processes, as a new tensor without gradient; `x` itself in one process."""
    if not active():
        return x
    x = x.detach().clone()
    dist.all_reduce(x, dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return x


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    return all_reduce(x) / world_size()


def check_same(values: dict, what: str = "setting") -> None:
    """Raise RanksDisagree on every process when any process has different `values` (one line naming the
    first differing key and both values); a job whose ranks disagree would train garbage or hang."""
    if not active():
        return
    everyone: list[dict] = [{} for _ in range(world_size())]
    dist.all_gather_object(everyone, values)
    for r, other in enumerate(everyone[1:], start=1):
        for key in everyone[0]:
            if other.get(key) != everyone[0][key]:
                raise RanksDisagree(f"the processes disagree: {what} {key} is {everyone[0][key]!r} on rank 0 but "
                                    f"{other.get(key)!r} on rank {r}; start every process with the same options "
                                    f"and files")


def shuffled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """`fn(x)` computed on a random mix of the global batch (MoCo's shuffled BN): each process runs `fn` on
    its share of the permuted global batch, and gets back the outputs of its own rows. No gradient."""
    if not active():
        return fn(x)
    with torch.no_grad():
        full = gather(x)
        perm = torch.randperm(full.shape[0], device=x.device)
        dist.broadcast(perm, 0)
        n, r = x.shape[0], rank()
        out = gather(fn(full[perm[r * n:(r + 1) * n]]))
        return out[torch.argsort(perm)[r * n:(r + 1) * n]]


class GlobalBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are over the global batch (differentiable all-reduced sums).

    Used for `--sync-bn` where torch's SyncBatchNorm cannot run (it needs CUDA): on CPU/gloo it makes a
    job of N processes compute what one process with the whole batch computes. Eval mode and single
    processes use the ordinary batch norm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-d input (got {x.dim()}-d)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = all_reduce(torch.tensor(float(x.numel() // x.shape[1]), device=x.device))
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # statistics in float32 at least
        mean = _Sum.apply(xf.sum(dims)) / count
        var = _Sum.apply((xf - mean.view(shape)).pow(2).sum(dims)) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1).clamp_min(1), alpha=m)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """`--sync-bn`: every batch norm computes its statistics over the global batch (torch's SyncBatchNorm
    on CUDA, GlobalBatchNorm elsewhere). State-dict keys stay the same, so checkpoints and model dirs do too."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats).to(next(iter(module.state_dict().values())).device)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        for p_new, p_old in zip(new.parameters(), module.parameters()):
            p_new.requires_grad_(p_old.requires_grad)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module


def wrap(model: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """DistributedDataParallel around `model` in a job of several processes (else `model` itself).

    Buffers are not re-broadcast every step: queues and centres are kept equal by the methods, and the
    checkpoint stores rank 0's batch-norm running statistics.
    """
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    with warnings.catch_warnings():  # torch 2.14 deprecates it, but its replacement still syncs at init
        warnings.filterwarnings("ignore", message=".*broadcast_buffers")
        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                       broadcast_buffers=False, find_unused_parameters=find_unused_parameters)


def launch(nproc: int, module: str, args: list[str]) -> int:
    """Run `python -m module args...` in `nproc` processes on this machine with torchrun (torch.distributed.run,
    standalone rendezvous); return the exit status of the first process that failed, or 0."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # workers print their own errors
    config = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", module, *args])
    try:
        run(config)
    except ChildFailedError as e:
        return e.get_first_failure()[1].exitcode or 1
    return 0
