"""A run's settings: the resolved configuration of a pretraining run (every default that depends on other settings
or on the images filled in, as config.yaml records it), the saved config.yaml, and how a resumed run's settings
are compared with it. Shared by the pretraining and fine-tuning trainers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from pretrain.data.images import ImageList, sample_dir, typical_size
from pretrain.ground.backbones import BackboneSpec, resolve_spec
from pretrain.ground.errors import ConfigError
from pretrain.ground.preprocess import MAX_CROP
from pretrain.methods import method_class, method_hparams
from pretrain.methods.base import Method
from pretrain.train.config import Config, PretrainConfig
from pretrain.train.speed import resolve_cores
from pretrain.views.gpu import default_load_size


@dataclass(frozen=True)
class ResolvedRun:
    """A pretraining run, resolved once: its settings with every default filled in (what config.yaml records),
    the method's class and the backbone's record (what model.json stores); the trainer reads all three here."""

    cfg: PretrainConfig
    method: type[Method]
    backbone: BackboneSpec


def resolve_config(cfg: PretrainConfig, images: ImageList) -> PretrainConfig:
    """Fill every default that depends on other settings or on the training `images`, so config.yaml
    records what actually ran."""
    return resolve_run(cfg, images).cfg


def resolve_run(cfg: PretrainConfig, images: ImageList, method: type[Method] | None = None) -> ResolvedRun:
    """The run `cfg` describes on `images`: one lookup of the method (`method`, when the caller has it) and one
    resolution of the backbone."""
    method = method or method_class(cfg.method)
    recipe = method.recipe(cfg.recipe)
    data = os.path.abspath(images.root)  # a resumed run finds its images from any working folder
    is_sample = cfg.data is None
    name, kwargs, small_stem, image_size = start_defaults(cfg, images)
    backbone = resolve_spec(name, small_stem, image_size, kwargs)
    workers, threads = resolve_cores(cfg.workers, cfg.threads, cfg.device)
    resolved = cfg.replace(
        data=data,
        backbone=name,
        backbone_args=kwargs,
        image_size=image_size,
        small_stem=backbone.small_stem,
        out=cfg.out or f"runs/{cfg.method}-{backbone.name}",
        optimizer=cfg.optimizer or recipe.optimizer,
        lr=cfg.lr if cfg.lr is not None else recipe.lr,
        weight_decay=cfg.weight_decay if cfg.weight_decay is not None else recipe.weight_decay,
        warmup_epochs=cfg.warmup_epochs if cfg.warmup_epochs is not None else min(10.0, cfg.epochs / 10),
        transform=cfg.transform or method.default_views,
        # the recipe's view options suit the method's own views only
        transform_args=cfg.transform_args if cfg.transform else {**recipe.transform_args, **cfg.transform_args},
        method_args=method_hparams(method, cfg.method_args, cfg.recipe),
        workers=workers,
        threads=threads,
        knn_test=cfg.knn_test or (str(sample_dir() / "test") if is_sample and cfg.knn_every else None),
        gpu_load_size=(cfg.gpu_load_size or default_load_size(image_size)) if cfg.gpu_augment else None,
    )
    return ResolvedRun(resolved, method, backbone)


def start_defaults(cfg: Config, images: ImageList) -> tuple[str, dict, bool | None, int]:
    """The backbone (name, arguments, small stem) and image size a run uses when they are left unset: those of the
    --init source where it says (a model dir's architecture and crop; timm's input size), else resnet18 at the
    images' median short side (at most 224)."""
    from pretrain.ground.startfrom import architecture_for, init_image_size

    own = architecture_for(cfg.init) if cfg.backbone is None else None
    name, kwargs, small_stem = own or (cfg.backbone or "resnet18", {}, None)
    kwargs = {**kwargs, **cfg.backbone_args}
    small_stem = cfg.small_stem if cfg.small_stem is not None else small_stem
    image_size = cfg.image_size or init_image_size(cfg.init) or min(224, typical_size(images))
    if image_size > MAX_CROP:
        raise ConfigError(f"image_size must be at most {MAX_CROP} pixels, the largest crop a model dir may record "
                          f"(got {image_size})")
    return name, kwargs, small_stem, image_size


def same_setting(key: str, saved: object, now: object, path_settings: set[str]) -> bool:
    """Whether a setting of a resumed run equals the saved one; `path_settings` compare as the folders they name."""
    if key in path_settings and isinstance(saved, str) and isinstance(now, str):
        return os.path.realpath(saved) == os.path.realpath(now)
    return saved == now


def with_saved_settings(cfg: Config) -> Config:
    """On --resume, settings left unset take the run's own values (its config.yaml), not fresh defaults. An empty
    `transform_args` / `method_args` counts as unset: the saved ones hold what the recipe filled in."""
    saved = load_run_config(cfg.out)
    return cfg.replace(**{k: saved[k] for k, v in cfg.to_dict().items() if (v is None or v == {}) and k in saved})


def load_run_config(out: str | os.PathLike) -> dict:
    """The saved config.yaml of a run (the starting point of `--resume`)."""
    if not out:
        raise ConfigError("--resume needs --out RUN_DIR: the run to continue")
    path = Path(out) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume: {path} does not exist; is {out} a run folder?")
    return yaml.safe_load(path.read_text())
