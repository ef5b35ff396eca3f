"""Training view pipelines by name: a pipeline maps one PIL image to the list of its views.

A pipeline that also produces per-view information (crop boxes, rotation labels) returns
`{"views": [...], name: tensor with one row per view}` and lists those names in its `provides`
attribute; methods name what they use in `Method.needs`.

Every pipeline ends with the same tensor conversion and normalisation as the inference
preprocessing, so features seen in training and in deployment share one input scale.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision.transforms import v2

from pretrain.config import ConfigError
from pretrain.preprocess import IMAGENET_MEAN, IMAGENET_STD


class MultiView:
    """Apply each view transform to the same image: `MultiView([t1, t2])(img) -> [t1(img), t2(img)]`."""

    def __init__(self, transforms: list[Callable[[Image.Image], torch.Tensor]]):
        self.transforms = transforms

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        return [t(image) for t in self.transforms]


def to_normalized_tensor() -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def simclr_view(size: int, *, min_scale: float = 0.08, strength: float | None = None, jitter_p: float = 0.8,
                gray_p: float = 0.2, blur_p: float | None = None, hflip_p: float = 0.5) -> v2.Compose:
    """One SimCLR view (Chen et al. 2020, appendix A): crop-and-resize, flip, colour distortion, blur.

    Defaults follow the paper per input size: colour strength 0.5 and no blur on small (<= 64 px)
    images as in its CIFAR-10 runs; strength 1.0 and a blur kernel of ~10% of the image otherwise.
    """
    small = size <= 64
    strength = (0.5 if small else 1.0) if strength is None else strength
    blur_p = (0.0 if small else 0.5) if blur_p is None else blur_p
    ops: list[v2.Transform] = [
        v2.RandomResizedCrop(size, scale=(min_scale, 1.0), antialias=True),
        v2.RandomHorizontalFlip(hflip_p),
        v2.RandomApply([v2.ColorJitter(0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)], p=jitter_p),
        v2.RandomGrayscale(gray_p),
    ]
    if blur_p > 0:
        kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_p))
    return v2.Compose(ops + to_normalized_tensor())


def simclr(size: int, **options: float) -> MultiView:
    """Two independent SimCLR views."""
    return MultiView([simclr_view(size, **options), simclr_view(size, **options)])


TRANSFORMS: dict[str, Callable[..., MultiView]] = {
    "simclr": simclr,
}


def build_transform(name: str, size: int, options: dict | None = None) -> MultiView:
    """The pipeline `name` for `size`-pixel crops; unknown names and options are one-line errors."""
    if name not in TRANSFORMS:
        raise ConfigError(f"transform must be one of {', '.join(sorted(TRANSFORMS))} (got {name!r})")
    try:
        return TRANSFORMS[name](size, **(options or {}))
    except TypeError as e:
        raise ConfigError(f"transform {name!r}: {e}") from None
