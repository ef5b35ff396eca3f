"""One training loop for every method: optimizer and schedule, the epochs, online evaluation, checkpoints
with exact resume, and the model dir at the end. Around it: the optimizer steps of an epoch (pretrain/train/steps.py)
and the model dir's records (pretrain/train/finish.py), Trainer's two base classes; the device and precision
(pretrain/ground/device.py), the checkpoint format and resume checks (pretrain/train/checkpoint.py), the metrics log
and loss plot (pretrain/train/runlog.py).

A run folder holds `config.yaml` (resolved settings), `checkpoint.pt` (full state, rewritten
atomically), `metrics.csv` + `tb/` (per-step logs), `eval.csv` (online kNN), and, once training
ends, the model dir files (`model.json`, `backbone.safetensors`, `plots/loss.png`).

Under torchrun the same loop runs in every process with DistributedDataParallel: each process takes
its slice of every global batch (`--batch-size` is global), methods gather what their loss needs
(pretrain/ground/distributed.py), and only rank 0 logs and writes files. A checkpoint holds no trace of the
number of processes, so a run resumes on any number of them.
"""
from __future__ import annotations

import random
import warnings
from collections.abc import Callable
from contextlib import nullcontext
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
from pretrain.ground.preprocess import view_renormaliser
from pretrain.ground.schema import read_json
from pretrain.ground.startfrom import INIT_RECORD, parse_source, preprocessing_for, start_weights
from pretrain.methods import build_method, method_class
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
from pretrain.train.finish import Finish
from pretrain.train.monitor import CollapseMonitor
from pretrain.train.optim import build_optimizer, scaled_lr
from pretrain.train.runconfig import resolve_run, with_saved_settings
from pretrain.train.runlog import MetricsLog, PendingRows, append_eval_row
from pretrain.train.speed import compile_decision, compile_networks, sync_every
from pretrain.train.steps import RunState, Steps, TrainingDiverged
from pretrain.views.gpu import build_device_views
from pretrain.views.recipes import build_transform, options_of

__all__ = ["RunState", "Trainer", "TrainingDiverged", "pretrain"]  # RunState, TrainingDiverged: from steps.py


class Trainer(Steps, Finish):
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



def pretrain(cfg: PretrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Python API: train a run and return its model dir (same as `sslforge pretrain`)."""
    return Trainer(cfg, resume=resume, progress=progress).fit()
