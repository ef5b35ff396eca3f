"""Backbones by name: any timm model, torchvision ResNets, and the small-image (CIFAR) stem.

`create_backbone` returns a module mapping (B, 3, H, W) images to (B, D) pooled features, and D,
found by running the module once rather than read from a table, so any new timm model just works.
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from pretrain.ground.errors import ConfigError
from pretrain.ground.schema import Fields, kind

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                       "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}"
# Constructor arguments that would make timm or torchvision read a file or the network, or change what
# the backbone returns; a model dir (or --backbone-arg) may not pass them.
FORBIDDEN_ARGS = frozenset({"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir",
                            "weights", "progress", "features_only", "out_indices", "num_classes", "scriptable",
                            "exportable", "no_jit", "model_name", "kwargs"})
MAX_ARGS, MAX_ARG_LIST, MAX_ARG_INT = 32, 16, 1 << 20


def check_backbone_args(kwargs: dict) -> dict:
    """Backbone constructor arguments, checked: at most 32 names, each a plain number, true/false, null, a short
    name, or a short list of numbers; none that loads files or changes the outputs (FORBIDDEN_ARGS)."""
    if len(kwargs) > MAX_ARGS:
        raise ConfigError(f"backbone arguments: at most {MAX_ARGS} (got {len(kwargs)})")
    for key, value in kwargs.items():
        if not isinstance(key, str) or not re.fullmatch(r"[a-z_][a-z0-9_]{0,63}", key):
            raise ConfigError(f"backbone argument {str(key)[:64]!r} is not a valid argument name")
        if key in FORBIDDEN_ARGS:
            raise ConfigError(f"backbone argument {key} is not allowed (it would load files or change the "
                              f"backbone's outputs)")
        items = value if isinstance(value, list) and len(value) <= MAX_ARG_LIST else [value]
        if not all(_plain(v, in_list=isinstance(value, list)) for v in items):
            raise ConfigError(f"backbone argument {key} must be a number, true/false, null, a name or a list of "
                              f"up to {MAX_ARG_LIST} numbers (got {kind(value)}: {str(value)[:40]})")
    return kwargs


def _plain(v: object, in_list: bool) -> bool:
    if isinstance(v, bool) or v is None:
        return not in_list
    if isinstance(v, int):
        return abs(v) <= MAX_ARG_INT
    if isinstance(v, float):
        return math.isfinite(v) and abs(v) <= MAX_ARG_INT
    return isinstance(v, str) and not in_list and re.fullmatch(r"[A-Za-z0-9_.\-]{0,64}", v) is not None


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to rebuild a backbone's architecture (stored in model.json)."""

    name: str
    source: str  # "timm" or "torchvision"
    small_stem: bool = False
    kwargs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "model.json", error: type[Exception] = ConfigError) -> "BackboneSpec":
        """The record's backbone, every field checked; the name must be a known model."""
        f = Fields(d, where, error, "backbone.")
        spec = cls(name=f.str("name", pattern=NAME_PATTERN), source=f.str("source", choices=("timm", "torchvision")),
                   small_stem=f.bool("small_stem", default=False), kwargs=dict(f.obj("kwargs", default={})))
        try:
            check_backbone_args(spec.kwargs)
            _check_name(spec)
        except ConfigError as e:
            raise error(f"{where}: {e}") from None
        return spec


def resolve_spec(name: str, small_stem: bool | None, image_size: int, kwargs: dict | None = None) -> BackboneSpec:
    """Turn a user's backbone name into a spec: 'timm/X' or 'torchvision/X' pick the library; a bare
    torchvision ResNet name goes to torchvision, anything else to timm. `small_stem=None` means
    automatic: on for inputs of at most 96 px when the model has a ResNet stem."""
    source, sep, bare = name.partition("/")
    if not sep:
        source, bare = ("torchvision" if name in TORCHVISION_RESNETS else "timm"), name
    if source not in ("timm", "torchvision"):
        raise ConfigError(f"backbone {name!r}: the prefix must be timm/ or torchvision/")
    spec = BackboneSpec(bare, source, False, check_backbone_args(dict(kwargs or {})))
    _check_name(spec)
    if small_stem is None:
        small_stem = image_size <= 96 and _has_resnet_stem(spec)
    return BackboneSpec(bare, source, small_stem, spec.kwargs)


def _has_resnet_stem(spec: BackboneSpec) -> bool:
    model = _instantiate(spec, meta=True)
    return isinstance(getattr(model, "conv1", None), (nn.Conv2d, nn.Sequential)) and hasattr(model, "maxpool")


def _check_name(spec: BackboneSpec) -> None:
    if spec.source == "torchvision":
        if spec.name not in TORCHVISION_RESNETS:
            raise ConfigError(f"torchvision backbone must be one of {', '.join(TORCHVISION_RESNETS)} "
                              f"(got {spec.name!r}); other architectures come from timm")
        return
    import timm

    if not timm.is_model(spec.name):
        import difflib

        hint = difflib.get_close_matches(spec.name, timm.list_models(), n=3)
        raise ConfigError(f"unknown backbone {spec.name!r}" + (f" (did you mean {', '.join(hint)}?)" if hint else ""))


def _instantiate(spec: BackboneSpec, meta: bool = False) -> nn.Module:
    _check_name(spec)
    with torch.device("meta") if meta else contextlib.nullcontext():
        try:
            if spec.source == "torchvision":
                import torchvision

                model = getattr(torchvision.models, spec.name)(weights=None, **spec.kwargs)
                model.fc = nn.Identity()
                return model
            import timm

            return timm.create_model(spec.name, pretrained=False, num_classes=0, **spec.kwargs)
        except Exception as e:  # noqa: BLE001 - constructors raise anything for arguments they cannot take
            raise ConfigError(f"backbone {spec.name!r} cannot be built with arguments {spec.kwargs}: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def apply_small_stem(model: nn.Module, name: str) -> None:
    """CIFAR-style stem: a 3x3 stride-1 first conv and no max-pool, so 32 px inputs keep their detail.

    A single-conv stem is replaced by a fresh 3x3 conv with the same output channels; a deep stem
    (timm's ResNet-D/-T: a Sequential of 3x3 convs) keeps its convs with the first one's stride set to 1.
    """
    stem, pool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    if pool is None or not isinstance(stem, (nn.Conv2d, nn.Sequential)):
        raise ConfigError(f"--small-stem needs a ResNet-style backbone (conv1 + maxpool); {name} has none: "
                          f"drop --small-stem or pick a ResNet")
    if isinstance(stem, nn.Conv2d):
        model.conv1 = nn.Conv2d(stem.in_channels, stem.out_channels, 3, 1, 1, bias=stem.bias is not None)
    else:
        first = next(m for m in stem.modules() if isinstance(m, nn.Conv2d))
        first.stride = (1, 1)
    model.maxpool = nn.Identity()


def build_backbone(spec: BackboneSpec, image_size: int) -> tuple[nn.Module, int]:
    """Build the (randomly initialised) backbone and discover its feature dimension at `image_size`."""
    model = _instantiate(spec)
    if spec.small_stem:
        apply_small_stem(model, spec.name)
    return model, feature_dim(model, image_size)


@torch.no_grad()
def feature_dim(model: nn.Module, image_size: int) -> int:
    was_training = model.training
    model.eval()
    try:
        out = model(torch.zeros(1, 3, image_size, image_size))
    except Exception as e:  # noqa: BLE001 - any failure here means this input size does not fit the model
        raise ConfigError(f"the backbone does not accept {image_size} px inputs: {str(e).splitlines()[0]} (pick "
                          f"another --image-size, or pass --backbone-arg img_size={image_size} for ViTs)") from None
    finally:
        model.train(was_training)
    if out.ndim != 2:
        raise ConfigError(f"the backbone returns features of shape {tuple(out.shape)}, expected (batch, dim)")
    return int(out.shape[1])


class FeatureMapTap:
    """Records the spatial feature map a backbone pools, while the backbone runs as usual.

    Local losses (VICRegL) need the map before global pooling; a forward hook at the pooling site
    gets it without a second forward pass or a change to the backbone. Supports torchvision ResNets
    (`avgpool`), timm CNNs (`global_pool` or `head.global_pool`) and timm ViTs (patch tokens after
    `norm`, prefix tokens dropped). `map` is [B, C, h, w] from the last call.
    """

    def __init__(self, backbone: nn.Module):
        self.map: torch.Tensor | None = None
        head = getattr(backbone, "head", None)
        for site in (getattr(backbone, "avgpool", None), getattr(backbone, "global_pool", None),
                     getattr(head, "global_pool", None)):
            if isinstance(site, nn.Module) and not isinstance(site, nn.Identity):
                self._handle = site.register_forward_pre_hook(self._from_input)
                return
        if isinstance(getattr(backbone, "norm", None), nn.Module) and hasattr(backbone, "num_prefix_tokens"):
            self._prefix = backbone.num_prefix_tokens
            self._handle = backbone.norm.register_forward_hook(self._from_tokens)
            return
        raise ConfigError(f"cannot find where {type(backbone).__name__} pools its feature map; local losses "
                          f"(vicregl) support ResNets, timm CNNs and timm ViTs")

    def _from_input(self, module: nn.Module, inputs: tuple) -> None:
        self.map = inputs[0]

    def _from_tokens(self, module: nn.Module, inputs: tuple, tokens: torch.Tensor) -> None:
        patches = tokens[:, self._prefix:]
        side = int(patches.shape[1] ** 0.5)
        self.map = patches.transpose(1, 2).reshape(patches.shape[0], -1, side, side)
