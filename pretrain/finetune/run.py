"""Fine-tuning: a model dir's backbone (optionally with the head layers it keeps, SimCLRv2) and a new linear
classifier, trained end to end on a class-balanced, seeded share of the labels; or the same from random
weights, the supervised baseline. SimCLRv2's semi-supervised pipeline is `sslforge pretrain --method simclr2`,
then this, then `sslforge distill --teacher` the result.

The training loop is the pretraining trainer's (progress, metrics.csv, TensorBoard, atomic checkpoints, exact
resume, NaN stop, torchrun): `FinetuneTrainer` only says what is trained on what. The run folder is an
ordinary model dir whose head is the fine-tuned classifier (class names in model.json), so export, serving,
the demo and distillation use it unchanged; `finetune.json` records the source model and the labelled images.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pretrain.data.datasets import ViewsDataset
from pretrain.data.images import DataError, ImageList, sample_dir, scan_images
from pretrain.finetune.labels import class_counts, read_subset, select_labels, subset_record
from pretrain.ground.atomic import write_json
from pretrain.ground.backbones import build_backbone, resolve_spec
from pretrain.ground.errors import ConfigError
from pretrain.ground.heads import WithNeck
from pretrain.ground.modeldir import MODEL_JSON, ModelDir, load_model_dir
from pretrain.ground.schema import read_json
from pretrain.ground.startfrom import preprocessing_for
from pretrain.methods.base import Method
from pretrain.train.checkpoint import CHECKPOINT
from pretrain.train.config import FinetuneConfig
from pretrain.train.evaluate import class_count, classifier_accuracy
from pretrain.train.runconfig import start_defaults, with_saved_settings
from pretrain.train.runlog import MetricsLog, append_eval_row
from pretrain.train.speed import resolve_cores
from pretrain.train.trainer import RunState, Trainer
from pretrain.views.ops import Colour, MultiView, View

RECORD = "finetune.json"
DEFAULT_BATCH = 64
# The pretrained network learns at this multiple of the classifier's rate by default: best of 0.1 / 0.3 / 1 on
# average over 1% and 10% of CIFAR-10's labels (docs/benchmarks/fine-tuning.md).
PRETRAINED_LR_SCALE = 0.3
# Settings that may change when a fine-tuning run is resumed (`model` is checked by its weights' fingerprint).
RESUMABLE_CHANGES = {"epochs", "workers", "device", "checkpoint_every", "checkpoint_every_steps", "eval_every", "test",
                     "accumulate", "sync_bn", "compile", "threads", "sync_every", "out", "model"}


class FineTune(Method):
    """A network (backbone, or backbone + kept head layers) and a linear classifier, trained with cross-entropy.

    It follows the Method contract, so the trainer runs it like an SSL method: the labels come with the views
    (`needs`), the network trains at `backbone_lr_scale` x the classifier's rate (`lr_scales`), the model dir
    stores the network (`deployable`) and the classifier becomes its head (`trained_head`).
    """

    needs = ("labels",)

    def __init__(self, network: nn.Module, feature_dim: int, classes: list[str], backbone_lr_scale: float = 0.1,
                 label_smoothing: float = 0.0):
        super().__init__(network, feature_dim)
        self.classes = list(classes)
        self.classifier = nn.Linear(feature_dim, len(self.classes))
        nn.init.zeros_(self.classifier.weight)  # SimCLRv2 starts its classifier at zero: every class equally likely
        nn.init.zeros_(self.classifier.bias)
        self.backbone_lr_scale = backbone_lr_scale
        self.label_smoothing = label_smoothing

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.classifier(self.backbone(views[0]))
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        return loss, {"train_top1": float((logits.argmax(1) == labels).float().mean())}

    def lr_scales(self) -> dict[str, float]:
        return {"backbone": self.backbone_lr_scale} if self.backbone_lr_scale != 1 else {}

    def deployable(self) -> tuple[nn.Module, list[int]]:
        neck = getattr(self.backbone, "neck", None)
        return self.backbone, [m.out_features for m in neck if isinstance(m, nn.Linear)] if neck is not None else []

    def trained_head(self) -> tuple[nn.Linear, list[str]]:
        return self.classifier, self.classes


def light_views(size: int, min_scale: float, hflip_p: float) -> MultiView:
    """The fine-tuning augmentation: one random crop (min_scale..1 of the area, aspect 3/4..4/3) resized to
    `size`, and a horizontal flip; no colour changes (the views of the SSL pipelines, made gentle)."""
    return MultiView([View(size, Colour((0.0, 0.0, 0.0, 0.0), jitter_p=0.0, gray_p=0.0),
                           scale=(min_scale, 1.0), hflip_p=hflip_p)])


def kept_network(source: ModelDir, layers: int) -> tuple[nn.Module, int]:
    """The source model's backbone with its first `layers` kept head layers (0: the backbone alone), and the
    width of what it outputs."""
    network = source.load_backbone()
    widths = list(source.info.get("neck") or [])
    if not widths:
        return network, source.embedding_dim
    if layers == 0:
        return network.backbone, network.neck[0].in_features
    return WithNeck(network.backbone, nn.Sequential(*list(network.neck)[:3 * layers])), widths[layers - 1]


def resolve_finetune(cfg: FinetuneConfig, source: ModelDir | None, train: ImageList, labelled: int) -> FinetuneConfig:
    """Fill every default that depends on the source model or the images, so config.yaml records what ran."""
    workers, threads = resolve_cores(cfg.workers, cfg.threads, cfg.device)
    changes: dict = {"train": str(Path(train.root).resolve()),
                     "test": str(Path(cfg.test).resolve()) if cfg.test else None,
                     "workers": workers, "threads": threads,
                     "batch_size": cfg.batch_size or min(DEFAULT_BATCH, labelled),
                     "label_fraction": None if cfg.labels_per_class is not None else (cfg.label_fraction or 1.0)}
    if source is not None:
        keeps = len(source.info.get("neck") or [])
        layers = keeps if cfg.from_head_layer is None else cfg.from_head_layer
        if layers > keeps:
            raise ConfigError(f"--from-head-layer {layers}: {source.path} keeps {keeps} head layer(s) after the "
                              f"backbone; pretrain with --method simclr2 --method-arg keep_layers={layers} to keep "
                              f"more")
        changes.update(model=str(source.path.resolve()), from_head_layer=layers,
                       out=cfg.out or f"runs/finetune-{source.path.resolve().name}",
                       backbone_lr_scale=(PRETRAINED_LR_SCALE if cfg.backbone_lr_scale is None
                                          else cfg.backbone_lr_scale))
    else:
        name, kwargs, small_stem, image_size = start_defaults(cfg, train)
        spec = resolve_spec(name, small_stem, image_size, kwargs)
        changes.update(from_scratch=not cfg.init, backbone=name, backbone_args=kwargs, small_stem=spec.small_stem,
                       image_size=image_size,
                       out=cfg.out or f"runs/{'finetune' if cfg.init else 'supervised'}-{spec.name}",
                       backbone_lr_scale=1.0 if cfg.backbone_lr_scale is None else cfg.backbone_lr_scale)
    return cfg.replace(**changes)


class FinetuneTrainer(Trainer):
    """Fine-tunes `cfg.model` (or trains `cfg.backbone` from scratch) on the labelled subset of `cfg.train` and
    writes the model dir `cfg.out`; `on_step(step)` as for Trainer."""

    command = "finetune"
    resumable_changes = RESUMABLE_CHANGES
    path_settings = {"train", "test"}

    def __init__(self, cfg: FinetuneConfig, *, resume: bool = False, on_step: Callable[[int], None] | None = None,
                 progress: bool = True):
        if resume:
            cfg = with_saved_settings(cfg)
        self.source = load_model_dir(cfg.model) if cfg.model else None
        train = scan_images(cfg.train or sample_dir() / "train")
        if not train.labelled:
            raise DataError(f"{train.root} has no class sub-folders: fine-tuning needs labelled images")
        if cfg.train is None and cfg.test is None:
            cfg = cfg.replace(test=str(sample_dir() / "test"))
        saved = Path(cfg.out) / RECORD if resume else None
        if saved is not None and saved.is_file():  # the run's own labelled images, whatever the folder holds now
            record = read_json(saved, ConfigError, "a fine-tuning record")
            self.record = record if isinstance(record, dict) else {}
            self.images = read_subset(self.record.get("labels"), train, str(saved))
        else:
            self.record = None
            self.images = select_labels(train, cfg.label_fraction, cfg.labels_per_class, cfg.seed)
        self.classes = train.classes
        self.cfg = cfg = resolve_finetune(cfg, self.source, train, len(self.images))
        self._setup(resume, on_step, progress)
        started_from = ((self.record or {}).get("source") or {}).get("fingerprint")
        if self.record and self.source and started_from != self.source.fingerprint:
            raise ConfigError(f"--resume: {cfg.model} is not the model this run started from (fingerprint "
                              f"{self.source.fingerprint}, the run's {started_from}); start a new --out")
        self.test = scan_images(cfg.test) if cfg.test else None
        if self.test is not None:
            class_count(train, self.test)
        if cfg.eval_every and self.test is None:
            raise ConfigError("--eval-every needs --test TEST_DIR (labelled, the same class folders)")
        self._start_processes()

    # -- what is trained on what ------------------------------------------------------------------
    def build_model(self) -> FineTune:
        cfg = self.cfg
        if self.source is not None:
            network, self.feature_dim = kept_network(self.source, cfg.from_head_layer)
            self.spec, self.preprocessing = self.source.spec, self.source.preprocessing
            self.start = None
        else:
            self.spec = resolve_spec(cfg.backbone, cfg.small_stem, cfg.image_size, cfg.backbone_args)
            network, self.feature_dim = build_backbone(self.spec, cfg.image_size)
            self.start_backbone(network)
            self.preprocessing = preprocessing_for(self.start, cfg.image_size)
        return FineTune(network.train(), self.feature_dim, self.classes, cfg.backbone_lr_scale, cfg.label_smoothing)

    def build_dataset(self) -> ViewsDataset:
        self.device_views = None
        transform = light_views(self.preprocessing.crop, self.cfg.min_scale, self.cfg.hflip_p)
        return ViewsDataset(self.images, transform, labels=True)

    def title(self) -> str:
        return f"finetune {self.spec.name}" if self.source or self.cfg.init else f"supervised {self.spec.name}"

    def fit(self) -> Path:
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / RECORD, self.run_record())
            if self.progress:
                counts = class_counts(self.images)
                tqdm.write(f"labels: {len(self.images):,} images of {self.images.root} ({len(counts)} classes, "
                           f"{min(counts.values())}-{max(counts.values())} per class)")
        return super().fit()

    def run_record(self) -> dict:
        source = None if self.source is None else {
            "model": str(self.source.path.resolve()), "fingerprint": self.source.fingerprint,
            "method": (self.source.info.get("method") or {}).get("name"), "neck": self.source.info.get("neck") or []}
        return {"format": "sslforge-finetune", "source": source,
                "labels": subset_record(self.images, self.cfg.label_fraction, self.cfg.labels_per_class,
                                        self.cfg.seed)}

    # -- evaluation and the model dir -------------------------------------------------------------
    def test_accuracy(self) -> dict:
        """Top-1/top-5 of the classifier as it is now on the test images (eval mode, inference preprocessing)."""
        return classifier_accuracy(self.model.backbone, self.model.classifier, self.test, self.preprocessing,
                                   workers=self.cfg.workers, device=self.device, desc="test", progress=self.progress)

    def eval_due(self, epoch: int) -> bool:
        return bool(self.cfg.eval_every) and epoch % self.cfg.eval_every == 0

    def online_eval(self, epoch: int, step: int, log: MetricsLog) -> dict:
        result = {"epoch": epoch, "step": step, **self.test_accuracy()}
        append_eval_row(self.out, result, log, "test")
        tqdm.write(f"epoch {epoch}: test top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}")
        return result

    def training_summary(self, state: RunState) -> dict:
        summary = super().training_summary(state)
        summary["online_test"] = summary.pop("knn")  # the last --eval-every result
        return summary

    def method_record(self) -> dict:
        cfg = self.cfg
        record = self.run_record()
        return {"name": "finetune", "from_scratch": self.source is None and not cfg.init, "source": record["source"],
                "from_head_layer": cfg.from_head_layer, "label_fraction": cfg.label_fraction,
                "labels_per_class": cfg.labels_per_class, "labelled_images": len(self.images),
                "optimizer": cfg.optimizer, "lr": cfg.lr, "backbone_lr_scale": cfg.backbone_lr_scale,
                "weight_decay": cfg.weight_decay, "label_smoothing": cfg.label_smoothing,
                "min_scale": cfg.min_scale, "hflip_p": cfg.hflip_p}

    def head_record(self) -> dict:
        record = {"trained_by": "finetune", "train": self.cfg.train, "labelled_images": len(self.images),
                  "label_fraction": self.cfg.label_fraction, "labels_per_class": self.cfg.labels_per_class}
        if self.test is not None:
            record.update(self.test_metrics, test=self.cfg.test)
        return record

    def _write_model_dir(self, state: RunState) -> Path:
        if self.test is not None:
            self.test_metrics = self.test_accuracy()
        return super()._write_model_dir(state)


def finetune(cfg: FinetuneConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Python API: fine-tune (or train from scratch) and return the model dir (same as `sslforge finetune`)."""
    return FinetuneTrainer(cfg, resume=resume, progress=progress).fit()


def finetune_once(cfg: FinetuneConfig, *, progress: bool = True) -> Path:
    """The evaluation protocol's run: continue `cfg.out` when it holds this run (its settings must match), return
    it untouched when it has finished, else start it. What `sslforge eval finetune` and the benchmark call."""
    out = Path(cfg.out)
    trainer = FinetuneTrainer(cfg, resume=(out / CHECKPOINT).is_file(), progress=progress)
    if trainer.resume and (out / MODEL_JSON).is_file():
        done = load_model_dir(out)
        if (done.info.get("training") or {}).get("epochs") == trainer.cfg.epochs and done.classes:
            return out
    return trainer.fit()


def result_line(model: ModelDir) -> str:
    """`fine-tuned (...) on N test images: top-1 X  top-5 Y` from a fine-tuned model dir's head record."""
    m = (model.info.get("head") or {}).get("metrics") or {}
    if "top1" not in m:
        return f"{model.path}: no test accuracy recorded (fine-tune with --test TEST_DIR)"
    method = model.info.get("method") or {}
    fraction = method.get("label_fraction") or 1.0
    labels = (f"{method['labels_per_class']} labels per class" if method.get("labels_per_class")
              else "all labels" if fraction >= 1 else f"{fraction:g} of the labels")
    start = "from scratch" if method.get("from_scratch") else f"from head layer {method.get('from_head_layer')}"
    epochs = (model.info.get("training") or {}).get("epochs")
    return (f"fine-tuned ({start}, {labels}: {m.get('labelled_images')} images, {epochs} epoch"
            f"{'' if epochs == 1 else 's'}) on {m.get('images')} test images: top-1 {m['top1']:.4f}  "
            f"top-5 {m['top5']:.4f}")
