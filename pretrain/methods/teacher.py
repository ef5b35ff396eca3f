"""The frozen teacher of feature distillation: any timm or torchvision model with its pretrained weights, a model
dir, or a weights file of a named architecture (the sources of pretrain/ground/startfrom.py), with the input it expects.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from pretrain.ground.backbones import build_backbone, resolve_spec
from pretrain.ground.errors import ConfigError
from pretrain.ground.startfrom import (
    Source,
    build_pretrained,
    fit_weights,
    parse_source,
    read_state_file,
    source_preprocessing,
    timm_pretrained_cfg,
)


def teacher_source(text: str) -> Source:
    """A model dir or weights file when `text` is a path; `timm:NAME` / `torchvision:NAME` (or timm/NAME,
    torchvision/NAME); a bare model name is timm's (torchvision's when timm has no such model)."""
    if not text:
        raise ConfigError("feature distillation needs a teacher: --method-arg teacher=SOURCE (a model dir, "
                          "timm:NAME, torchvision:NAME or a weights file with teacher_backbone=NAME)")
    if Path(text).expanduser().exists() or ":" in text:
        return parse_source(text, "teacher")
    library, sep, name = text.partition("/")
    if sep and library in ("timm", "torchvision"):
        return parse_source(f"{library}:{name}", "teacher")
    import timm

    if timm.is_model(text):
        return parse_source("timm:" + text, "teacher")
    import torchvision

    if text in torchvision.models.list_models():
        return parse_source("torchvision:" + text, "teacher")
    return parse_source(text, "teacher")  # the error names what a teacher may be


def load_teacher(text: str, backbone: str = "", image_size: int = 0) -> tuple[nn.Module, dict]:
    """The teacher in eval mode, every parameter frozen (pooled features out), and its input as
    {size, mean, std, interpolation}. `image_size` (0: the teacher's own) is the side it sees; timm ViTs, whose
    input size is fixed, are built at it (their position embeddings resampled by timm). A weights file needs
    `backbone`, the architecture it fits."""
    src = teacher_source(text)
    if src.kind == "file" and not backbone:
        raise ConfigError(f"teacher {text} is a weights file: name its architecture with "
                          f"--method-arg teacher_backbone=NAME")
    if src.kind == "model_dir":
        from pretrain.ground.modeldir import load_model_dir

        net = load_model_dir(src.ref).load_backbone()
        own = source_preprocessing(src)
    elif src.kind == "file":
        own = {"size": image_size or 224, "mean": None, "std": None, "interpolation": "bicubic"}
        spec = resolve_spec(backbone, None, own["size"])
        net, _ = build_backbone(spec, own["size"])
        fit_weights(net, read_state_file(src.ref), True, f"teacher {text}")
    else:
        cfg = timm_pretrained_cfg(src.ref) if src.kind == "timm" else None
        fixed = bool(cfg is not None and cfg.fixed_input_size)
        net = build_pretrained(src, {"img_size": image_size} if fixed and image_size else {})
        own = source_preprocessing(src)
    from pretrain.ground.preprocess import IMAGENET_MEAN, IMAGENET_STD

    own = {**own, "size": image_size or own["size"], "mean": tuple(own["mean"] or IMAGENET_MEAN),
           "std": tuple(own["std"] or IMAGENET_STD)}
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval(), own
