"""Starting weights: where a backbone's first weights come from (`--init SOURCE`), and the frozen teacher of
feature distillation, read from the same kinds of source.

A source is one of
    DIR                        a model dir (its backbone.safetensors; its architecture and preprocessing)
    FILE.safetensors | FILE.pt  a state dict (PyTorch files are read with torch.load(weights_only=True)); the
                               part of the file that fits the backbone is found under a prefix such as
                               `backbone.` or `module.` (an sslforge checkpoint.pt, a DDP state dict)
    timm:NAME[.TAG]            timm's pretrained weights: downloaded through huggingface_hub where the machine has
                               network, read from its local cache otherwise
    torchvision:NAME           torchvision's default pretrained weights (the torch hub cache)

`start_weights` loads a source into a built backbone: names and shapes must match (else one error listing what
does not), or with `strict=False` what matches is loaded and the rest reported. The record it returns (source,
sha256 of the weights, what was loaded) goes into model.json as `init`.
"""
from __future__ import annotations

import difflib
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pretrain.ground.backbones import BackboneSpec
from pretrain.ground.errors import ConfigError
from pretrain.ground.preprocess import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS

STATE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
# where the backbone may sit in a saved file: as is, in a DDP wrapper, in an sslforge checkpoint, ...
PREFIXES = ("", "module.", "backbone.", "module.backbone.", "model.", "encoder.", "student.", "teacher.")
SHOWN = 5  # names listed in a one-line error
RECORDED = 50  # names kept in the model.json record
INIT_RECORD = "init.json"  # the start record in a run folder (a resumed run reads it instead of the source)


@dataclass(frozen=True)
class Source:
    text: str  # as the user gave it
    kind: str  # model_dir, file, timm or torchvision
    ref: str  # the path or the model name


def parse_source(text: str, what: str = "--init") -> Source:
    """What `text` names; one ConfigError line when it names nothing usable."""
    text = str(text).strip()
    for kind in ("timm", "torchvision"):
        if text.startswith(kind + ":"):
            name = text[len(kind) + 1:]
            _check_model_name(kind, name, what)
            return Source(text, kind, name)
    path = Path(text).expanduser()
    if path.is_dir():
        return Source(text, "model_dir", str(path))
    if path.is_file():
        if path.suffix.lower() not in STATE_SUFFIXES:
            raise ConfigError(f"{what} {text}: a weights file must end in {', '.join(STATE_SUFFIXES)}")
        return Source(text, "file", str(path))
    raise ConfigError(f"{what} {text}: no such model dir or weights file; give a model dir, a .safetensors or .pt "
                      f"state dict, or timm:NAME for timm's pretrained weights")


def _check_model_name(kind: str, name: str, what: str) -> None:
    if kind == "timm":
        import timm

        known, ok = timm.list_models, timm.is_model(name)
    else:
        import torchvision

        known = torchvision.models.list_models
        ok = name in known()
    if not ok:
        hint = difflib.get_close_matches(name, known(), n=3)
        raise ConfigError(f"{what} {kind}:{name}: unknown {kind} model" +
                          (f" (did you mean {', '.join(hint)}?)" if hint else ""))


def timm_pretrained_cfg(name: str):
    import timm

    return timm.models.get_pretrained_cfg(name) or timm.models.get_pretrained_cfg(name.split(".")[0])


def source_backbone(src: Source) -> tuple[str, dict, bool | None] | None:
    """The architecture a source was made with, as (backbone name, constructor arguments, small stem); None for a
    bare weights file, which does not say."""
    if src.kind == "model_dir":
        from pretrain.ground.modeldir import load_model_dir

        spec = load_model_dir(src.ref, verify=False).spec
        return f"{spec.source}/{spec.name}", dict(spec.kwargs), spec.small_stem
    if src.kind == "timm":
        return "timm/" + src.ref.split(".")[0], {}, None
    if src.kind == "torchvision":
        return "torchvision/" + src.ref, {}, None
    return None


def source_preprocessing(src: Source) -> dict | None:
    """The input a source's model expects, {size, mean, std, interpolation} (timm's data config for timm weights);
    None when the source does not say (a weights file)."""
    if src.kind == "model_dir":
        from pretrain.ground.modeldir import load_model_dir

        pre = load_model_dir(src.ref, verify=False).preprocessing
        return {"size": pre.crop, "mean": list(pre.mean), "std": list(pre.std), "interpolation": pre.interpolation}
    if src.kind == "timm":
        from timm.data import resolve_data_config

        cfg = timm_pretrained_cfg(src.ref)
        data = resolve_data_config(pretrained_cfg=cfg.to_dict()) if cfg is not None else {}
        interpolation = data.get("interpolation", "bicubic")
        return {"size": int(data.get("input_size", (3, 224, 224))[-1]), "mean": list(data.get("mean", IMAGENET_MEAN)),
                "std": list(data.get("std", IMAGENET_STD)),
                "interpolation": interpolation if interpolation in INTERPOLATIONS else "bicubic"}
    if src.kind == "torchvision":
        return {"size": 224, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "interpolation": "bilinear"}
    return None


def hub_cache() -> str:
    """Where huggingface_hub keeps downloaded weights (HF_HUB_CACHE, or HF_HOME/hub)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _unavailable(src: Source, cache: str, e: Exception) -> ConfigError:
    return ConfigError(f"{src.text}: the pretrained weights could not be downloaded and are not in the local cache "
                       f"{cache} ({type(e).__name__}); connect this machine to the network once, or copy the "
                       f"weights into that cache, or give a local weights file")


def build_pretrained(src: Source, kwargs: dict | None = None) -> nn.Module:
    """The pretrained timm or torchvision model of `src` without its classifier (pooled features out)."""
    if src.kind == "timm":
        import timm

        try:
            return timm.create_model(src.ref, pretrained=True, num_classes=0, **(kwargs or {}))
        except (OSError, RuntimeError, ValueError) as e:  # huggingface_hub's errors are OSErrors
            if isinstance(e, (RuntimeError, ValueError)) and "size mismatch" in str(e):
                raise ConfigError(f"{src.text}: {str(e).splitlines()[0][:300]}") from None
            cfg = timm_pretrained_cfg(src.ref)
            cache = hub_cache() if cfg is None or cfg.hf_hub_id else torch.hub.get_dir()
            raise _unavailable(src, cache, e) from None
    import torchvision

    try:
        model = torchvision.models.get_model(src.ref, weights="DEFAULT")
    except (OSError, RuntimeError, ValueError) as e:  # urllib's URLError is an OSError
        raise _unavailable(src, os.path.join(torch.hub.get_dir(), "checkpoints"), e) from None
    for head in ("fc", "classifier", "heads", "head"):
        if isinstance(getattr(model, head, None), nn.Module):
            setattr(model, head, nn.Identity())
            break
    return model


def read_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file or a PyTorch state-dict file (weights_only), unwrapped from a
    {"state_dict": ...} or {"model": ...} wrapper."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling and safetensors raise many kinds
        raise ConfigError(f"{path} cannot be read as a state dict ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and not isinstance(obj.get(key), torch.Tensor):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise ConfigError(f"{path} holds no state dict (a mapping of tensor names to tensors)")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConfigError(f"{path} holds no tensors")
    return tensors


def source_state(src: Source, spec: BackboneSpec | None = None) -> tuple[dict[str, torch.Tensor], str | None]:
    """The source's weights and the file they came from (None for pretrained models built by timm/torchvision)."""
    if src.kind == "model_dir":
        from pretrain.ground.modeldir import BACKBONE_FILE, load_model_dir

        model = load_model_dir(src.ref)
        return read_state_file(model.path / BACKBONE_FILE), str(model.path / BACKBONE_FILE)
    if src.kind == "file":
        return read_state_file(src.ref), src.ref
    same = spec is not None and spec.source == src.kind and spec.name == src.ref.split(".")[0]
    model = build_pretrained(src, spec.kwargs if same else {})
    return {k: v.detach() for k, v in model.state_dict().items()}, None


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors (names in order, dtype, shape, bytes): the same weights give the same hash
    whatever file format carried them."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _examples(names: list[str]) -> str:
    return ", ".join(names[:SHOWN]) + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def fit_weights(module: nn.Module, state: dict[str, torch.Tensor], strict: bool, what: str,
                classifier: str | None = None) -> dict:
    """Load `state` into `module`. The prefix under which most names fit is used (others are another part of the
    file); tensors of a classifier the backbone does not have are dropped. Strict: any missing, unexpected or
    differently shaped tensor is one ConfigError listing them; else what fits is loaded and the rest warned of."""
    target = module.state_dict()
    prefix = max(PREFIXES, key=lambda p: sum(k.startswith(p) and k[len(p):] in target for k in state))
    part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    dropped = [k for k in part if classifier and k.startswith(classifier + ".") and k not in target]
    part = {k: v for k, v in part.items() if k not in dropped}
    missing = sorted(target.keys() - part.keys())
    unexpected = sorted(part.keys() - target.keys())
    shapes = sorted(f"{k} {tuple(part[k].shape)} in the source, {tuple(target[k].shape)} here"
                    for k in target.keys() & part.keys() if part[k].shape != target[k].shape)
    fits = {k: v for k, v in part.items() if k in target and v.shape == target[k].shape}
    problems = [f"{len(names)} {label} ({_examples(names)})" for names, label in
                ((missing, "missing"), (unexpected, "unexpected"), (shapes, "of another shape")) if names]
    if not fits:
        raise ConfigError(f"{what}: none of its {len(state)} tensors fits the backbone (" + "; ".join(problems) +
                          "): is it the weights of this architecture? Check --backbone")
    if problems and strict:
        raise ConfigError(f"{what} does not fit the backbone: " + "; ".join(problems) +
                          f". Pass --init-strict false to load the {len(fits)} that fit, or pick the matching "
                          f"--backbone")
    if problems:
        warnings.warn(f"{what}: loaded {len(fits)} of the backbone's {len(target)} tensors; not loaded: " +
                      "; ".join(problems), stacklevel=2)
    module.load_state_dict({**target, **{k: v.to(target[k].dtype) for k, v in fits.items()}}, strict=True)
    return {"loaded": len(fits), "of": len(target), "prefix": prefix, "dropped_classifier": len(dropped),
            "missing": missing[:RECORDED], "unexpected": unexpected[:RECORDED], "other_shape": shapes[:RECORDED]}


def classifier_name(spec: BackboneSpec) -> str | None:
    """The attribute name of the architecture's classifier (timm's pretrained config; `fc` for torchvision)."""
    if spec.source == "torchvision":
        return "fc"
    cfg = timm_pretrained_cfg(spec.name)
    return cfg.classifier if cfg is not None else None


def start_weights(backbone: nn.Module, spec: BackboneSpec, init: str, strict: bool = True) -> dict:
    """Load the source `init` into the freshly built `backbone`; the record model.json keeps as `init`."""
    src = parse_source(init)
    state, file = source_state(src, spec)
    report = fit_weights(backbone, state, strict, f"--init {init}", classifier_name(spec))
    record = {"source": src.text, "kind": src.kind, "sha256": weights_sha256(state), "strict": strict, **report,
              "preprocessing": source_preprocessing(src)}
    if file is not None:
        record.update(file=str(Path(file).resolve()), file_sha256=file_sha256(file))
    if src.kind == "timm":
        cfg = timm_pretrained_cfg(src.ref)
        record["pretrained"] = (cfg.hf_hub_id or cfg.url) if cfg is not None else None
    return record


def preprocessing_for(start: dict | None, image_size: int):
    """The run's preprocessing at `image_size`: the resize and crop of `Preprocessing.for_size`, with the mean, std
    and interpolation of the start's source (its record's `preprocessing`) where it has them, else ImageNet's."""
    from pretrain.ground.preprocess import Preprocessing

    base = Preprocessing.for_size(image_size)
    own = (start or {}).get("preprocessing")
    if not own:
        return base
    return Preprocessing(base.resize, base.crop, tuple(own["mean"]), tuple(own["std"]), own["interpolation"])


def architecture_for(init: str | None) -> tuple[str, dict, bool | None] | None:
    """The default --backbone (name, arguments, small stem) of a run started from `init`, if the source says."""
    return source_backbone(parse_source(init)) if init else None


def init_image_size(init: str | None) -> int | None:
    own = source_preprocessing(parse_source(init)) if init else None
    return own["size"] if own else None

