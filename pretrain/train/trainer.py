"""One training loop for every method: optimizer and schedule, the steps, online evaluation, checkpoints
with exact resume, and the model dir at the end. Around it: the device and precision (pretrain/ground/device.py),
the checkpoint format and resume checks (pretrain/train/checkpoint.py), the metrics log and loss plot
(pretrain/train/runlog.py).

A run folder holds `config.yaml` (resolved settings), `checkpoint.pt` (full state, rewritten
atomically), `metrics.csv` + `tb/` (per-step logs), `eval.csv` (online kNN), and, once training
ends, the model dir files (`model.json`, `backbone.safetensors`, `plots/loss.png`).

Under torchrun the same loop runs in every process with DistributedDataParallel: each process takes
its slice of every global batch (`--batch-size` is global), methods gather what their loss needs
(pretrain/ground/distributed.py), and only rank 0 logs and writes files. A checkpoint holds no trace of the
number of processes, so a run resumes on any number of them.
"""
from __future__ import annotations

import math
import os
import random
import resource
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pretrain.data.datasets import EpochSampler, ViewsDataset
from pretrain.data.heap import keep_heap
from pretrain.data.images import sample_dir, scan_images
from pretrain.ground import distributed
from pretrain.ground.atomic import write_json
from pretrain.ground.backbones import build_backbone
from pretrain.ground.device import autocast_dtype, describe_device, select_device
from pretrain.ground.errors import ConfigError
from pretrain.ground.modeldir import ModelDir, write_model_dir
from pretrain.ground.preprocess import view_renormaliser
from pretrain.ground.schema import read_json
from pretrain.ground.startfrom import INIT_RECORD, parse_source, preprocessing_for, start_weights
from pretrain.methods import build_method, method_class
from pretrain.methods.base import Progress
from pretrain.train.checkpoint import (
    CHECKPOINT,
    PATH_SETTINGS,
    RESUMABLE_CHANGES,
    check_out_dir,
    process_seed,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pretrain.train.config import PretrainConfig, save_yaml
from pretrain.train.datapass import DataPass
from pretrain.train.evaluate import class_count, extract_features, knn_evaluate
from pretrain.train.monitor import CollapseMonitor
from pretrain.train.optim import build_optimizer, scaled_lr, warmup_cosine
from pretrain.train.runconfig import resolve_run, with_saved_settings
from pretrain.train.runlog import MetricsLog, PendingRows, append_eval_row, plot_metrics
from pretrain.train.speed import compile_decision, compile_networks, sync_every
from pretrain.views.gpu import build_device_views, step_generator
from pretrain.views.recipes import build_transform, options_of


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class RunState:
    step: int = 0
    elapsed_s: float = 0.0
    last_loss: float = math.nan
    knn: dict = field(default_factory=dict)


class Trainer:
    """Trains `cfg.method` on `cfg.data` and writes the run folder `cfg.out`.

    `on_step(step)` is called after every optimizer step (tests use it to interrupt a run).
    """

    command = "pretrain"  # the command that continues a run, for messages
    resumable_changes = RESUMABLE_CHANGES
    path_settings = PATH_SETTINGS

    def __init__(self, cfg: PretrainConfig, *, resume: bool = False, on_step: Callable[[int], None] | None = None,
                 progress: bool = True):
        if resume:
            cfg = with_saved_settings(cfg)
        method = method_class(cfg.method)  # a wrong name fails before the images are scanned
        self.images = scan_images(cfg.data or sample_dir() / "train").random_subset(cfg.max_images, cfg.seed)
        self.run_plan = resolve_run(cfg, self.images, method)
        self.cfg = cfg = self.run_plan.cfg
        self._setup(resume, on_step, progress)
        if cfg.knn_every and not (self.images.labelled and cfg.knn_test):
            raise ConfigError("online kNN (--knn-every) needs labelled training images (class sub-folders) and "
                              "--knn-test TEST_DIR")
        self._start_processes()
        if cfg.accumulate > 1 and method.couples_batch and self.main:
            warnings.warn(f"--accumulate {cfg.accumulate}: the loss of {cfg.method} couples the images of a batch "
                          f"(in-batch negatives or batch statistics), so each micro-batch of "
                          f"{cfg.batch_size // (self.world * cfg.accumulate)} images sees only itself; the gradient "
                          f"is not that of one batch of {cfg.batch_size}", stacklevel=2)

    # -- setup ---------------------------------------------------------------------------------
    def _setup(self, resume: bool, on_step: Callable[[int], None] | None, progress: bool) -> None:
        """What every trainer sets once `self.cfg` is resolved: the folder, the device and the precision."""
        self.out = Path(self.cfg.out)
        self.resume = resume
        self.on_step = on_step
        self.progress = progress
        self.device = select_device(self.cfg.device)
        self.amp_dtype = autocast_dtype(self.cfg.precision, self.device)
        self._check_out_dir()
        if self.cfg.init and not resume:
            parse_source(self.cfg.init)  # a source that names nothing fails here, before anything is built

    def _start_processes(self) -> None:
        """Join the torchrun job (if any) and check that every process has the same settings and images."""
        self._owns_group = distributed.init(self.device)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.main = self.rank == 0
        distributed.check_same({**self.cfg.to_dict(), "resume": self.resume, "training images": len(self.images),
                                "first image": str(self.images.paths[0]), "last image": str(self.images.paths[-1])})

    def _check_out_dir(self) -> None:
        check_out_dir(self.out, self.cfg, self.resume, self.resumable_changes, self.path_settings)

    def build_model(self) -> torch.nn.Module:
        """The network the loop trains (a Method: `loss, logs = model(views, **extras)`); sets `self.spec` (the
        backbone's record), `self.feature_dim` and `self.preprocessing` (what the model dir stores)."""
        cfg = self.cfg
        self.spec = self.run_plan.backbone
        backbone, self.feature_dim = build_backbone(self.spec, cfg.image_size)
        self.start_backbone(backbone)
        self.preprocessing = preprocessing_for(self.start, cfg.image_size)
        return build_method(self.run_plan.method, backbone, self.feature_dim, cfg.method_args,
                            num_images=len(self.images))

    def start_backbone(self, backbone: torch.nn.Module) -> None:
        """--init: load the starting weights into the new backbone and keep their record (`self.start`, model.json's
        `init`; written to the run folder's init.json). A resumed run reads the record there and its weights
        from the checkpoint: the source is not needed again."""
        self.start = None
        if not self.cfg.init:
            return
        record = self.out / INIT_RECORD
        if self.resume and record.is_file():
            self.start = read_json(record, ConfigError, "a run's start record")
            return
        self.start = start_weights(backbone, self.spec, self.cfg.init, self.cfg.init_strict)
        if self.main:
            write_json(record, self.start)

    def build_dataset(self) -> torch.utils.data.Dataset:
        """The training samples (views of `self.images`); sets `self.device_views` (None: views made by the loader)."""
        cfg = self.cfg
        self.device_views = build_device_views(cfg.transform, cfg.image_size, cfg.transform_args,
                                               cfg.gpu_load_size) if cfg.gpu_augment else None
        transform = self.device_views or build_transform(cfg.transform, cfg.image_size, cfg.transform_args)
        indices = "index" in self.model.needs
        if indices and self.device_views:
            raise ConfigError(f"method {cfg.method} keeps per-image state, which --gpu-augment's batches do not "
                              f"carry yet: train it without --gpu-augment")
        missing = [k for k in self.model.needs if k not in (*getattr(transform, "provides", ()), "index")]
        if missing:
            raise ConfigError(f"method {cfg.method} needs per-view {', '.join(missing)}, which transform "
                              f"{cfg.transform!r} does not provide; use its default (`sslforge methods`)")
        for key in getattr(self.model, "view_options", ()):  # a setting the method and its views must share
            view_value = {**options_of(cfg.transform), **cfg.transform_args}.get(key)
            if view_value != getattr(self.model, key):
                raise ConfigError(f"method {cfg.method} has {key}={getattr(self.model, key)}, its views "
                                  f"({cfg.transform}) {key}={view_value}: set both (--method-arg {key}=N "
                                  f"--transform-arg {key}=N)")
        return ViewsDataset(self.images, self.device_views.load if self.device_views else transform, indices=indices)

    def title(self) -> str:
        """What the progress bar calls the run."""
        return f"{self.cfg.method} {self.spec.name}"

    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.model = self.build_model().to(self.device)
        self.model.normalisation = (self.preprocessing.mean, self.preprocessing.std)
        self.renormalise = view_renormaliser(self.preprocessing, self.device)
        if cfg.sync_bn:
            self.model = distributed.convert_sync_batchnorm(self.model, self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        try:
            self.sampler = EpochSampler(len(self.images), cfg.batch_size, cfg.seed, rank=self.rank, world=self.world,
                                        accumulate=cfg.accumulate)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.steps_per_epoch = self.sampler.batches_per_epoch
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.compiled, why = compile_decision(cfg.compile, self.total_steps, self.device)
        if self.progress and self.main:
            tqdm.write(f"compile: {why}")
        if self.compiled:
            compile_networks(self.model, say=self._say)
        self.ddp = distributed.wrap(self.model, self.device, find_unused_parameters=self.model.skips_parameters)
        if self.rank:
            torch.manual_seed(process_seed(cfg.seed, self.rank, 0))
        self.monitor = CollapseMonitor(self.model.backbone)
        self.optimizer = build_optimizer(self.model, cfg.optimizer, scaled_lr(cfg.lr, cfg.batch_size),
                                         cfg.weight_decay, cfg.momentum, self.model.lr_scales())
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        dataset = self.build_dataset()
        micro_batch = self.sampler.local_batch // cfg.accumulate
        self.loader = DataLoader(dataset, batch_size=micro_batch, sampler=self.sampler, num_workers=cfg.workers,
                                 pin_memory=self.device.type == "cuda", persistent_workers=cfg.workers > 0,
                                 generator=torch.Generator().manual_seed(cfg.seed),  # leaves the global RNG alone
                                 prefetch_factor=4 if cfg.workers > 0 else None, worker_init_fn=keep_heap)
        self.warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.peak_lr = scaled_lr(cfg.lr, cfg.batch_size)

    # -- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self, state: RunState) -> None:
        """Rank 0 writes; the state is the same in every process (the model, optimizer and queues are kept
        in step), except batch-norm running statistics without --sync-bn and per-process RNG streams."""
        if not self.main:
            return
        payload = {
            "step": state.step, "elapsed_s": state.elapsed_s,
            "last_loss": state.last_loss, "knn": state.knn,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng_state(), "config": self.cfg.to_dict(),
        }
        save_checkpoint(self.out / CHECKPOINT, payload)

    def load_checkpoint(self) -> RunState:
        ckpt = read_checkpoint(self.out / CHECKPOINT, self.device)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        if self.rank:
            torch.manual_seed(process_seed(self.cfg.seed, self.rank, ckpt["step"]))
        return RunState(ckpt["step"], ckpt["elapsed_s"], ckpt["last_loss"], ckpt["knn"])

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> Path:
        """Train (or continue) the run, then write the model dir; return its path."""
        with warnings.catch_warnings():
            if not self.main:  # one process speaks for the job
                warnings.simplefilter("ignore")
            try:
                state = self._fit()
                if self.main:
                    self._write_model_dir(state)
                    if self.progress:
                        summary = self.training_summary(state)
                        tqdm.write(f"trained {state.step} steps: {summary['images_per_s']} images/s, peak RSS "
                                   f"{summary['peak_rss_mb']:.0f} MB (main process)")
                distributed.barrier()  # every process returns once the model dir exists
            finally:
                distributed.shutdown(self._owns_group)
        return self.out

    def _say(self, line: str) -> None:
        """One line for the user, from the main process (above the progress bar)."""
        if self.main:
            tqdm.write(line)

    def _fit(self) -> RunState:
        threads = torch.get_num_threads()
        torch.set_num_threads(self.cfg.threads or threads)  # the run's share of the cores (pretrain/train/speed.py)
        try:
            return self._fit_threads()
        finally:
            torch.set_num_threads(threads)

    def _fit_threads(self) -> RunState:
        cfg = self.cfg
        self._build()
        self.pending, self.sync_every = PendingRows(), sync_every(cfg.sync_every, self.device)
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in self.out.glob(".*.tmp"):  # left by atomic writes that a killed process never finished
                stale.unlink()
        state = self.load_checkpoint() if self.resume else RunState()
        log = None
        if self.main:
            save_yaml(cfg, self.out / "config.yaml")
            log = MetricsLog(self.out, state.step)
            if self.progress:  # say how the folder was read (class folders or flat), see data.scan_images
                tqdm.write(f"data: {self.images.root} read as {self.images.layout}")
                tqdm.write(f"device: {describe_device(self.device, self.amp_dtype, self.world)}")
        bar = tqdm(total=self.total_steps * cfg.batch_size, initial=state.step * cfg.batch_size, unit="img",
                   desc=self.title(), disable=not (self.progress and self.main),
                   dynamic_ncols=True, smoothing=0.1)
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext())
        self.model.train()
        try:
            while state.step < self.total_steps:
                epoch, start_batch = divmod(state.step, self.steps_per_epoch)
                self.sampler.set_epoch(epoch, start_batch)
                found = self.model.start_epoch(epoch, self.data_pass)  # a pass over the data, if the method needs one
                if found and self.progress and self.main:
                    tqdm.write(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:g}" for k, v in found.items()))
                self._train_epoch(epoch, state, log, bar, autocast)
                if self.eval_due(epoch + 1):
                    if self.main:  # the other processes wait at the barrier
                        state.knn = self.online_eval(epoch + 1, state.step, log)
                    distributed.barrier()
                if (epoch + 1) % cfg.checkpoint_every == 0 or state.step == self.total_steps:
                    self.save_checkpoint(state)
        finally:
            if self.pending:  # an interrupted run still logs the steps it made
                self._read_pending(state, log, bar, check=False)
            bar.close()
            if log:
                log.close()
        return state

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

    def data_pass(self, fn, **kwargs):
        """The pass over the training set that a method's `start_epoch` may ask for (pretrain/train/datapass.py)."""
        return DataPass(self.images, self.preprocessing, self.device, self.cfg.workers, progress=self.progress)(
            fn, **kwargs)

    def eval_due(self, epoch: int) -> bool:
        """Whether the online evaluation runs after `epoch` (1-based)."""
        return bool(self.cfg.knn_every) and epoch % self.cfg.knn_every == 0

    def online_eval(self, epoch: int, step: int, log: MetricsLog) -> dict:
        return self.online_knn(epoch, step, log)

    def online_knn(self, epoch: int, step: int, log: MetricsLog) -> dict:
        cfg = self.cfg
        test = scan_images(cfg.knn_test)
        num_classes = class_count(self.images, test)
        pre = self.preprocessing
        kwargs = dict(workers=cfg.workers, device=self.device, progress=self.progress)
        bank = extract_features(self.model.backbone, self.images, pre, desc="kNN bank", **kwargs)
        queries = extract_features(self.model.backbone, test, pre, desc="kNN test", **kwargs)
        result = {"epoch": epoch, "step": step,
                  **knn_evaluate(bank, queries, num_classes, cfg.knn_k, cfg.knn_temperature)}
        append_eval_row(self.out, result, log, "knn")
        tqdm.write(f"epoch {epoch}: kNN top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}")
        return result

    def training_summary(self, state: RunState) -> dict:
        """model.json's `training` record: what ran, on what, how fast and in how much memory."""
        cfg = self.cfg
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {
            "epochs": cfg.epochs, "steps": state.step, "batch_size": cfg.batch_size,
            "data": os.path.abspath(self.images.root),
            "data_layout": self.images.layout, "num_images": len(self.images), "last_loss": state.last_loss,
            "knn": state.knn or None, "wall_time_s": round(state.elapsed_s, 2),
            "images_per_s": round(state.step * cfg.batch_size / state.elapsed_s, 2) if state.elapsed_s else None,
            "processes": self.world, "accumulate": cfg.accumulate, "sync_bn": cfg.sync_bn,
            "compiled": self.compiled, "workers": cfg.workers, "threads": cfg.threads,
            "device": str(self.device), "precision": str(self.amp_dtype or "fp32").replace("torch.", ""),
            "peak_rss_mb": round(peak_rss_mb, 1),
            "peak_gpu_memory_mb": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                                   if self.device.type == "cuda" else None),
        }

    def method_record(self) -> dict:
        """model.json's `method` record."""
        cfg = self.cfg
        return {"name": cfg.method, "hparams": cfg.method_args, "transform": cfg.transform,
                "optimizer": cfg.optimizer, "lr": cfg.lr, "weight_decay": cfg.weight_decay}

    def head_record(self) -> dict:
        """The `metrics` of the head record, when the model trained a classifier (`Method.trained_head`)."""
        return {"trained_by": self.cfg.method}

    def _write_model_dir(self, state: RunState) -> Path:
        network, neck = self.model.deployable()
        network = network.to(memory_format=torch.contiguous_format)
        info = write_model_dir(self.out, network, spec=self.spec, embedding_dim=neck[-1] if neck else self.feature_dim,
                               preprocessing=self.preprocessing, method=self.method_record(),
                               training=self.training_summary(state), neck=neck, start=self.start)
        head = self.model.trained_head()
        if head:
            ModelDir(self.out, info).save_head(head[0], head[1], self.head_record())
        if (self.out / "metrics.csv").exists():
            plot_metrics(self.out / "metrics.csv", self.out / "plots" / "loss.png")
        return self.out


def pretrain(cfg: PretrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Python API: train a run and return its model dir (same as `sslforge pretrain`)."""
    return Trainer(cfg, resume=resume, progress=progress).fit()
