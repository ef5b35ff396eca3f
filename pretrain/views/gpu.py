"""Views made on the training device from a batch of uint8 images (`--gpu-augment`).

The loader then only decodes each image and makes it a fixed-size uint8 square (`LoadSquare`), which
is cheap in workers and a quarter of the bytes of float views to move. On the device every operation
runs on the whole batch at once with one random parameter per image (no Python loop over images):
random resized crop + resize (one `roi_align` call, whose bin averaging antialiases downscaling),
flip, rotation, colour jitter in a random order per image, grayscale, Gaussian blur with a per-image
sigma, solarisation, and the normalisation of the CPU pipelines. The recipe of each view (sizes,
scales, probabilities, strengths) is read from the CPU pipeline of the same name, so both paths share
their defaults and options. All randomness comes from one generator on the device seeded from
(seed, epoch, step): a resumed run makes the same views.

Differences from the CPU pipelines: crops are taken from the centre square of the image resized to
`load_size` (the CPU crops the full image), crop boxes are not rounded to whole pixels, and
`vicregl`'s boxes are normalised to that square.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import groupby

import torch
import torch.nn.functional as nnf
from PIL import Image
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as F

from pretrain.ground.errors import ConfigError
from pretrain.ground.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, aspect_window
from pretrain.views.ops import Colour, View, shift_hue, to_uint8
from pretrain.views.recipes import build_transform

SUPPORTED = ("baseline", "multicrop", "simclr", "vicregl")
RATIO = (3 / 4, 4 / 3)


class LoadSquare:
    """The loader's side: an image as a (3, size, size) uint8 tensor, short side resized, centre-cropped."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        pixels = to_uint8(image)
        window = aspect_window(pixels.shape[2], pixels.shape[1])
        if window is not None:  # a thin image: resize only its centre (bounded work, see preprocess.MAX_ASPECT)
            left, top, right, bottom = window
            pixels = pixels[:, top:bottom, left:right]
        if min(pixels.shape[1:]) != self.size:
            pixels = F.resize(pixels, self.size, antialias=True)
        return F.center_crop(pixels, [self.size, self.size])


def default_load_size(size: int) -> int:
    """The evaluation resize: the crop size itself up to 64 px, size / 0.875 above (256 for 224)."""
    return Preprocessing.for_size(size).resize


# -- random parameters, one per image ------------------------------------------------------------
def _uniform(shape: tuple[int, ...], low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=g, device=g.device)


def _chance(n: int, p: float, g: torch.Generator) -> torch.Tensor:
    """A boolean per image, true with probability p (no draw for p of 0 or 1)."""
    if p <= 0 or p >= 1:
        return torch.full((n,), p >= 1, device=g.device)
    return torch.rand(n, generator=g, device=g.device) < p


def crop_boxes(n: int, side: int, scale: tuple[float, float], g: torch.Generator,
               ratio: tuple[float, float] = RATIO, tries: int = 10) -> torch.Tensor:
    """RandomResizedCrop's boxes for n images of side x side pixels, as (x0, y0, x1, y1) in pixels.

    As torchvision: area fraction uniform in `scale`, log aspect ratio uniform in `ratio`, the first
    of `tries` candidates that fits, else the whole (square) image; position uniform.
    """
    area = _uniform((n, tries), *scale, g) * side * side
    aspect = torch.exp(_uniform((n, tries), math.log(ratio[0]), math.log(ratio[1]), g))
    w, h = (area * aspect).sqrt(), (area / aspect).sqrt()
    fits = (w <= side) & (h <= side)
    first = fits.int().argmax(1, keepdim=True)
    found = fits.any(1)
    w = torch.where(found, w.gather(1, first).squeeze(1), float(side))
    h = torch.where(found, h.gather(1, first).squeeze(1), float(side))
    x0 = torch.rand(n, generator=g, device=g.device) * (side - w)
    y0 = torch.rand(n, generator=g, device=g.device) * (side - h)
    return torch.stack([x0, y0, x0 + w, y0 + h], 1)


# -- batched operations on float [0, 1] images (N, 3, H, W) ---------------------------------------
def resized_crops(images: torch.Tensor, index: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop box k of image index[k] and resize it to size x size, all in one call: bilinear when
    upscaling (as torchvision's resize), the average of ceil(box / size)^2 samples per pixel when
    downscaling."""
    rois = torch.cat([index.to(boxes.dtype).unsqueeze(1), boxes], 1)
    return roi_align(images, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def hflip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image counter-clockwise about its centre by its angle (nearest pixel, black
    corners), as torchvision's `rotate` with its defaults."""
    a = torch.deg2rad(degrees)
    cos, sin, zero = a.cos(), a.sin(), torch.zeros_like(a)
    h, w = x.shape[-2:]
    theta = torch.stack([torch.stack([cos, -sin * h / w, zero], 1), torch.stack([sin * w / h, cos, zero], 1)], 1)
    grid = nnf.affine_grid(theta, list(x.shape), align_corners=False)
    return nnf.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    return F.rgb_to_grayscale(x, num_output_channels=3)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    factor = factor.view(-1, 1, 1, 1)
    return (factor * x + (1 - factor) * other).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x)[:, :1].mean((-2, -1), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return shift_hue(x, shift.view(-1, 1, 1, 1))


_JITTER = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def colour_jitter(x: torch.Tensor, mask: torch.Tensor, brightness: float, contrast: float, saturation: float,
                  hue: float, g: torch.Generator) -> torch.Tensor:
    """torchvision's ColorJitter on the images where `mask` is true, each with its own factors and its
    own random order of the four operations."""
    n = len(x)
    order = torch.rand(n, 4, generator=g, device=g.device).argsort(1)
    factors = [_uniform((n,), max(0.0, 1 - s), 1 + s, g) if s > 0 else None
               for s in (brightness, contrast, saturation)]
    factors.append(_uniform((n,), -hue, hue, g) if hue > 0 else None)
    x = x.clone()
    for position in range(4):
        for op, factor in enumerate(factors):
            if factor is not None:
                chosen = mask & (order[:, position] == op)
                x[chosen] = _JITTER[op](x[chosen], factor[chosen])
    return x


def blur_kernel_size(size: int) -> int:
    """The CPU pipelines' kernel: ~10% of the image, odd, at least 3."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """torchvision's `gaussian_blur` (reflect padding) with one sigma per image: two depthwise 1-D
    convolutions over all images' channels at once."""
    n, c, h, w = x.shape
    if n == 0:
        return x
    t = torch.arange(kernel_size, device=x.device, dtype=x.dtype) - kernel_size // 2
    kernel = torch.exp(-0.5 * (t / sigma.view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)
    half = kernel_size // 2
    y = nnf.pad(x.reshape(1, n * c, h, w), (half, half, half, half), mode="reflect")
    y = nnf.conv2d(y, kernel.view(n * c, 1, kernel_size, 1), groups=n * c)
    y = nnf.conv2d(y, kernel.view(n * c, 1, 1, kernel_size), groups=n * c)
    return y.view(n, c, h, w)


def normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


# -- views ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """What one view does, read from a CPU pipeline's `View`."""

    size: int
    scale: tuple[float, float]
    hflip_p: float
    rotation_p: float
    rotation_degrees: float
    colour: Colour

    @classmethod
    def of(cls, view: View) -> "Recipe":
        return cls(view.size, tuple(view.scale), view.hflip_p, view.rotation_p, view.rotation_degrees, view.colour)

    def __call__(self, images: torch.Tensor, index: torch.Tensor, g: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of images[index[k]] for every k, float (len(index), 3, size, size) and normalised, and
        their crop boxes (x0, y0, x1, y1) normalised to the square source, x0 > x1 where flipped."""
        n, c, side = len(index), self.colour, images.shape[-1]
        boxes = crop_boxes(n, side, self.scale, g)
        x = resized_crops(images, index, boxes, self.size)
        flipped = _chance(n, self.hflip_p, g)
        x = hflip(x, flipped)
        boxes = torch.where(flipped.view(-1, 1), boxes[:, [2, 1, 0, 3]], boxes) / side
        if self.rotation_p > 0 and self.rotation_degrees > 0:
            angles = _uniform((n,), -self.rotation_degrees, self.rotation_degrees, g)
            x = torch.where(_chance(n, self.rotation_p, g).view(-1, 1, 1, 1), rotate(x, angles), x)
        b, ct, s, h = (v * c.strength for v in c.jitter)
        if c.strength > 0:
            x = colour_jitter(x, _chance(n, c.jitter_p, g), b, ct, s, min(h, 0.5), g)
        x = torch.where(_chance(n, c.gray_p, g).view(-1, 1, 1, 1), grayscale(x), x)
        if c.blur_p > 0:
            blurred = _chance(n, c.blur_p, g)
            sigma = _uniform((n,), 0.1, 2.0, g)
            x = x.clone()
            x[blurred] = gaussian_blur(x[blurred], blur_kernel_size(self.size), sigma[blurred])
        if c.solarize_p > 0:
            x = torch.where(_chance(n, c.solarize_p, g).view(-1, 1, 1, 1) & (x >= 0.5), 1 - x, x)
        return normalize(x), boxes


class DeviceViews:
    """A pipeline's views made from a uint8 batch (N, 3, L, L) on its device: `views(batch, step_generator(...))`.

    Consecutive views with the same recipe (SimCLR's two, multi-crop's locals) are made in one call.
    With `provides=("boxes",)` it returns `{"views": [...], "boxes": float32 (N, n_views, 4)}` as the
    CPU pipeline's batches, boxes normalised to the square the loader made.
    """

    def __init__(self, recipes: list[Recipe], load_size: int, provides: tuple[str, ...] = ()):
        self.recipes = recipes
        self.load = LoadSquare(load_size)
        self.provides = provides

    def __len__(self) -> int:
        return len(self.recipes)

    def __call__(self, batch: torch.Tensor, g: torch.Generator
                 ) -> list[torch.Tensor] | dict[str, list[torch.Tensor] | torch.Tensor]:
        images = batch.float().div_(255)
        n = len(images)
        views: list[torch.Tensor] = []
        boxes: list[torch.Tensor] = []
        for recipe, same in groupby(self.recipes):
            count = len(list(same))
            index = torch.arange(n, device=images.device).repeat(count)
            x, b = recipe(images, index, g)
            views.extend(x.split(n))
            boxes.extend(b.split(n))
        return {"views": views, "boxes": torch.stack(boxes, 1)} if "boxes" in self.provides else views


def step_generator(seed: int, epoch: int, step: int, device: torch.device, part: tuple[int, ...] = ()
                   ) -> torch.Generator:
    """The generator of one training step's views: a pure function of (seed, epoch, step), and of
    `part` = (process, micro-batch) when a step is split across processes or micro-batches."""
    return torch.Generator(device=device).manual_seed(hash((seed, epoch, step, *part)) & 0x7FFF_FFFF_FFFF_FFFF)


def build_device_views(name: str, size: int, options: dict | None = None,
                       load_size: int | None = None) -> DeviceViews:
    """The device version of pipeline `name` (same options as `build_transform`); others are an error."""
    if name not in SUPPORTED:
        raise ConfigError(f"gpu_augment supports the transforms {', '.join(SUPPORTED)} (got {name!r}): choose one "
                          f"with --transform or drop --gpu-augment")
    pipeline = build_transform(name, size, options)
    return DeviceViews([Recipe.of(view) for view in pipeline.transforms], load_size or default_load_size(size),
                       pipeline.provides)
