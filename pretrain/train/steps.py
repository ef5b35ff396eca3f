"""The optimizer steps of one epoch of the training loop (pretrain/train/trainer.py), and the metrics they log.

Each step: the learning rate, the micro-batches of --accumulate, the loss under autocast, gradient clipping; the
pending metrics are read back from the device every --sync-every steps, where a NaN or infinite loss stops the run.

`Steps` is a part of Trainer (its base class); it reads what Trainer._build sets: the model and its DDP wrapper,
the optimizer, the scaler, the loader, the schedule and the collapse monitor.
"""
from __future__ import annotations

import math
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from pretrain.ground import distributed
from pretrain.methods.base import Progress
from pretrain.train.checkpoint import CHECKPOINT
from pretrain.train.optim import warmup_cosine
from pretrain.train.runlog import MetricsLog
from pretrain.views.gpu import step_generator


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class RunState:
    step: int = 0
    elapsed_s: float = 0.0
    last_loss: float = math.nan
    knn: dict = field(default_factory=dict)


class Steps:
    """The steps of an epoch, a base class of Trainer."""

    def _train_epoch(self, epoch: int, state: RunState, log: MetricsLog | None, bar: tqdm, autocast) -> None:
        cfg = self.cfg
        failures, first_failure = 0, ""
        tick = time.perf_counter()
        batches = iter(self.loader)
        for micro_batches in zip(*[batches] * cfg.accumulate):  # the accumulate micro-batches of one step
            lr = warmup_cosine(state.step, self.total_steps, self.warmup_steps, self.peak_lr)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            self.model.progress = Progress(state.step, self.steps_per_epoch, self.total_steps)
            self.optimizer.zero_grad(set_to_none=True)
            total = torch.zeros((), device=self.device)
            logs: dict[str, float] = {}
            for i, (views, failed, failed_paths) in enumerate(micro_batches):
                views, extras = self._to_device(views, epoch, state.step, i)
                with ExitStack() as stack:
                    if i < cfg.accumulate - 1 and self.ddp is not self.model:  # gradients averaged once per step
                        stack.enter_context(self.ddp.no_sync())
                    with autocast:
                        loss, micro_logs = self.ddp(views, **extras)
                    self.scaler.scale(loss / cfg.accumulate).backward()
                total += loss.detach().float()
                for key, value in micro_logs.items():
                    logs[key] = logs.get(key, 0.0) + value / cfg.accumulate
                failures += int(failed.sum())
                first_failure = first_failure or next((p for p in failed_paths if p), "")
            loss = distributed.mean_over_ranks(total / cfg.accumulate)
            if cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.model.after_step(state.step, self.total_steps)
            state.step += 1
            now = time.perf_counter()
            dt, tick = now - tick, now
            state.elapsed_s += dt
            self.pending.add({"step": state.step, "epoch": state.step / self.steps_per_epoch, "lr": lr,
                              "loss": loss, **logs, **self.monitor.capture(state.step),
                              "images_per_s": cfg.batch_size / dt, "elapsed_s": state.elapsed_s})
            checkpoint = bool(cfg.checkpoint_every_steps and state.step % cfg.checkpoint_every_steps == 0)
            if checkpoint or len(self.pending) >= self.sync_every or state.step % self.steps_per_epoch == 0:
                self._read_pending(state, log, bar)  # before any checkpoint: none holds a diverged step
            if checkpoint:
                self.save_checkpoint(state)
            if self.on_step:
                self.on_step(state.step)
        failures = int(distributed.all_reduce(torch.tensor(failures, device=self.device)))
        if failures:
            warnings.warn(f"epoch {epoch + 1}: {failures} images failed to decode and were replaced by their "
                          f"neighbours (first: {first_failure})", stacklevel=2)

    def _read_pending(self, state: RunState, log: MetricsLog | None, bar: tqdm, check: bool = True) -> None:
        """Read the pending steps' values from the device (one host sync for them all), log them, move the
        progress bar; a NaN or infinite loss among them stops the run (unless `check` is off)."""
        rows = self.pending.read()
        for row in rows:
            if check and not math.isfinite(row["loss"]):
                raise TrainingDiverged(
                    f"loss became {row['loss']} at step {row['step']} (epoch {math.ceil(row['epoch'])}); stopped. "
                    f"The last good checkpoint is kept in {self.out / CHECKPOINT}: lower --lr, set --grad-clip or "
                    f"--precision fp32, then continue with `sslforge {self.command} --resume --out {self.out}`")
            if "emb_std" in row:
                self.monitor.observe(row["step"], row["emb_std"])
            if log:
                log.log(row)
            state.last_loss = row["loss"]
        if rows:
            bar.update(len(rows) * self.cfg.batch_size)
            bar.set_postfix(epoch=f"{rows[-1]['epoch']:.2f}", loss=f"{state.last_loss:.4f}",
                            lr=f"{rows[-1]['lr']:.3g}", refresh=False)

    def _to_device(self, batch: list | dict | torch.Tensor, epoch: int, step: int, micro: int = 0
                   ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Views to the device (channels-last if asked), and the per-view extras the method declares it needs.
        With --gpu-augment the batch is uint8 images, whose views are made there from (seed, epoch, step)
        (and the process and micro-batch, when a step has several)."""
        if self.device_views is not None:
            part = (self.rank, micro) if (self.rank, micro) != (0, 0) else ()
            batch = self.device_views(batch.to(self.device, non_blocking=True),
                                      step_generator(self.cfg.seed, epoch, step, self.device, part))
        views, extras = (batch["views"], batch) if isinstance(batch, dict) else (batch, {})
        layout = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        views = [self.renormalise(v.to(self.device, non_blocking=True)).contiguous(memory_format=layout)
                 for v in views]
        return views, {k: extras[k].to(self.device, non_blocking=True) for k in self.model.needs}
