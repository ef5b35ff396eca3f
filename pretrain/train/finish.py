"""What a run leaves when training ends: the model dir (the deployable network, model.json with its training,
method and head records, the trained head, the loss plot).

`Finish` is a part of Trainer (its base class); the fine-tuning trainer (pretrain/finetune/run.py) overrides the
records.
"""
from __future__ import annotations

import os
import resource
from pathlib import Path

import torch

from pretrain.ground.modeldir import ModelDir, write_model_dir
from pretrain.train.runlog import plot_metrics
from pretrain.train.steps import RunState


class Finish:
    """The model dir at the end of a run, a base class of Trainer."""

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
