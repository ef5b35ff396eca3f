"""The one inference preprocessing, stored in model.json and shared by evaluation, export and serving.

An embedding must not depend on which code path computed it, so every stage builds its transform
from this record instead of writing its own resize/crop/normalise.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property

import torch
from PIL import Image
from torchvision.transforms import v2

from pretrain.ground.errors import ConfigError
from pretrain.ground.schema import Fields

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Resizing the short side of a thin image makes it long: an 8000 x 1 image at a short side of 256 would be
# 2 G pixels. An image more than MAX_ASPECT times longer than wide is first cut to its centred MAX_ASPECT:1
# part (the centre crop lies well inside it), so the resized image has at most MAX_ASPECT x resize^2 pixels
# whatever the file holds. Ordinary images (up to 4:1) are resized whole, exactly as before.
MAX_ASPECT = 4
# Bounds on what a model dir may ask for: a crop of 20000 px would allocate gigabytes when the model is
# loaded. 1024 px covers every published SSL recipe (224, 384, 518) with room to spare.
MAX_CROP, MAX_RESIZE = 1024, 2048
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


def aspect_window(width: int, height: int) -> tuple[int, int, int, int] | None:
    """The centred (left, top, right, bottom) part of a width x height image that preprocessing keeps when
    its aspect ratio exceeds MAX_ASPECT:1; None when the whole image is used. Decided from the size alone."""
    short, long = min(width, height), max(width, height)
    keep = MAX_ASPECT * max(short, 1)
    if long <= keep:
        return None
    start = (long - keep) // 2
    return (start, 0, start + keep, height) if width > height else (0, start, width, start + keep)


def bound_aspect(image: Image.Image) -> Image.Image:
    """`image`, or its centred MAX_ASPECT:1 part when it is thinner (see `aspect_window`)."""
    window = aspect_window(*image.size)
    return image if window is None else image.crop(window)


@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side to `resize`, center-crop `crop` x `crop`, scale to [0, 1], normalise (images
    thinner than MAX_ASPECT:1 are first cut to their centre, which bounds the work)."""

    resize: int
    crop: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        for name, value, high in (("crop", self.crop, MAX_CROP), ("resize", self.resize, MAX_RESIZE)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
                raise ConfigError(f"preprocessing.{name} must be an integer from 1 to {high} (got {value!r})")
        if self.crop > self.resize:
            raise ConfigError(f"preprocessing.crop must be at most preprocessing.resize (got crop {self.crop}, "
                              f"resize {self.resize})")
        for name, values, low in (("mean", self.mean, -10.0), ("std", self.std, 1e-6)):
            if len(values) != 3 or not all(isinstance(v, float | int) and low <= v <= 10 for v in values):
                raise ConfigError(f"preprocessing.{name} must be 3 numbers from {low} to 10 (got {values!r})")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"preprocessing.interpolation must be one of {', '.join(INTERPOLATIONS)} "
                              f"(got {self.interpolation!r})")

    @classmethod
    def for_size(cls, size: int) -> "Preprocessing":
        """The usual evaluation recipe: no resize margin for small images (<= 64 px), 0.875 crop ratio above."""
        return cls(resize=size if size <= 64 else round(size / 0.875), crop=size)

    @classmethod
    def from_dict(cls, d: dict, where: str = "model.json", error: type[Exception] = ConfigError) -> "Preprocessing":
        """The record's preprocessing, every field checked (types here, bounds in __post_init__)."""
        f = Fields(d, where, error, "preprocessing.")
        mean, std = f.list("mean", 3), f.list("std", 3)
        try:
            return cls(resize=f.int("resize", 1, MAX_RESIZE), crop=f.int("crop", 1, MAX_CROP),
                       mean=tuple(f.number(v, "mean", -10, 10) for v in mean),
                       std=tuple(f.number(v, "std", 1e-6, 10) for v in std),
                       interpolation=f.str("interpolation", choices=INTERPOLATIONS, default="bicubic"))
        except ConfigError as e:
            raise error(f"{where}: {e}") from None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @cached_property
    def transform(self) -> v2.Compose:
        """PIL RGB image -> float tensor (3, crop, crop)."""
        mode = v2.InterpolationMode[self.interpolation.upper()]
        return v2.Compose([
            v2.Resize(self.resize, interpolation=mode, antialias=True),
            v2.CenterCrop(self.crop),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(self.mean, self.std),
        ])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform(bound_aspect(image))


def view_renormaliser(pre: Preprocessing, device: torch.device | str = "cpu"):
    """Training views are normalised with ImageNet's mean and std; a run whose preprocessing has others (a
    pretrained start's own) maps each view batch onto them: x * std0 / std + (mean0 - mean) / std, the same
    as normalising the pixels with (mean, std). The identity when they are ImageNet's."""
    if tuple(map(float, pre.mean)) == IMAGENET_MEAN and tuple(map(float, pre.std)) == IMAGENET_STD:
        return lambda x: x
    mean0, std0 = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    mean, std = torch.tensor(pre.mean, dtype=torch.float32), torch.tensor(pre.std, dtype=torch.float32)
    scale = (std0 / std).view(1, 3, 1, 1).to(device)
    shift = ((mean0 - mean) / std).view(1, 3, 1, 1).to(device)
    return lambda x: x * scale.to(x.dtype) + shift.to(x.dtype)
