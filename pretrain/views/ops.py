"""The operations view pipelines are made of (pretrain/views/recipes.py names the pipelines): crops, flips,
colour jitter, blur, local rotation, region confusion, and `View` / `MultiView`, which chain them.

A pipeline that also produces per-view information (crop boxes, rotation labels) returns
`{"views": [...], name: tensor with one row per view}` and lists those names in its `provides`
attribute; methods name what they use in `Method.needs`.

Speed: the image is converted to a uint8 tensor once, each view is cropped and resized on uint8
(torchvision's fast antialiased path), then converted to float once for the colour operations and
the same normalisation as the inference preprocessing, so training and deployment share one input scale.
All randomness comes from torch's global RNG, which `ViewsDataset` seeds per sample.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop, v2
from torchvision.transforms.v2 import functional as F

from pretrain.ground.preprocess import IMAGENET_MEAN, IMAGENET_STD

SMALL = 64  # inputs up to this size get the small-image defaults (no blur, local crops scaled down)
Box = tuple[float, float, float, float]


def to_uint8(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """A (3, H, W) uint8 tensor, converting a PIL image once per sample."""
    return image if isinstance(image, torch.Tensor) else F.pil_to_tensor(image)


def denormalize(view: torch.Tensor) -> torch.Tensor:
    """A normalised view back to a uint8 (3, H, W) image, for pictures and tests."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (view.float() * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)


def coin(p: float) -> bool:
    """True with probability p, from torch's global RNG (no draw at all for p of 0 or 1)."""
    return p >= 1 or (p > 0 and bool(torch.rand(()) < p))


def local_size(size: int, reference: int = 96) -> int:
    """The local-crop size for `size`-pixel global crops: 96 at 224 (DINO, SwAV, VICRegL), scaled and
    rounded to a multiple of 8 (16 px at 32 px), at least 8."""
    return max(8, 8 * round(size * reference / 224 / 8))


# -- colour --------------------------------------------------------------------------------------
_HUE_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).view(3, 1, 1)


def uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def shift_hue(view: torch.Tensor, shift: float | torch.Tensor) -> torch.Tensor:
    """torchvision's `adjust_hue` (HSV hue + shift turns) on a float (..., 3, H, W) view, equal to 1e-5 and
    about 5x faster on CPU (docs/benchmarks/views.md): the hue sector from masks made float once (bool
    `where` and comparisons are the slow kernels here), then the closed-form HSV -> RGB.
    A batch may take one shift per image, as a tensor of shape (N, 1, 1, 1)."""
    r, g, b = view.unbind(-3)
    top = torch.maximum(torch.maximum(r, g), b)
    delta = top - torch.minimum(torch.minimum(r, g), b)
    red = (r == top).to(view.dtype)
    green = (g == top).to(view.dtype).sub_(red).clamp_(min=0)  # torchvision's priority: red, then green
    blue = 1 - red - green
    # hue in sixths of a turn, times delta: g - b in the red sector, 2 delta + b - r in green, 4 delta + r - g in blue
    hue = (g - b).mul_(red).add_((b - r).add_(delta, alpha=2).mul_(green)).add_((r - g).add_(delta, alpha=4).mul_(blue))
    hue = hue.div_(delta.clamp_min(1e-12)).unsqueeze(-3).add_(6 * shift)  # grey pixels: 0 / tiny = 0
    k = hue + _HUE_OFFSETS.to(view.device)
    k = k.sub_(torch.floor(k / 6).mul_(6))
    return top.unsqueeze(-3) - delta.unsqueeze(-3) * torch.minimum(k, 4 - k).clamp_(0, 1)


def colour_jitter(view: torch.Tensor, brightness: float, contrast: float, saturation: float,
                  hue: float) -> torch.Tensor:
    """torchvision's ColorJitter: factors drawn uniformly around 1 (hue around 0), applied in random order."""
    order = torch.randperm(4).tolist()
    factors = [uniform(max(0.0, 1 - x), 1 + x) if x > 0 else None for x in (brightness, contrast, saturation)]
    shift = uniform(-hue, hue) if hue > 0 else None
    for op in order:
        if op == 0 and factors[0] is not None:
            view = F.adjust_brightness(view, factors[0])
        elif op == 1 and factors[1] is not None:
            view = F.adjust_contrast(view, factors[1])
        elif op == 2 and factors[2] is not None:
            view = F.adjust_saturation(view, factors[2])
        elif op == 3 and shift is not None:
            view = shift_hue(view, shift)
    return view


def _blur_matrix(n: int, kernel: torch.Tensor) -> torch.Tensor:
    """The (n, n) matrix of a 1-D convolution with reflect padding, so a blur is small matmuls."""
    half = len(kernel) // 2
    index = (torch.arange(n).view(n, 1) + torch.arange(len(kernel)).view(1, -1) - half).abs()
    index = torch.where(index >= n, 2 * (n - 1) - index, index)
    return torch.zeros(n, n).scatter_add_(1, index, kernel.expand(n, -1).contiguous())


def _banded_matmul(matrix: torch.Tensor, x: torch.Tensor, half: int, block: int = 32) -> torch.Tensor:
    """`matrix @ x` for a band matrix of half-width `half`, one block of output rows at a time, skipping
    the zeros: at 224 px and a 23-tap kernel that is about 4x fewer multiply-adds than the full product."""
    n = matrix.shape[0]
    if n <= block + 2 * half:
        return matrix @ x
    out = torch.empty_like(x)
    for start in range(0, n, block):
        end = min(n, start + block)
        low, high = max(0, start - half), min(n, end + half)
        torch.matmul(matrix[start:end, low:high], x[..., low:high, :], out=out[..., start:end, :])
    return out


def gaussian_blur(view: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """torchvision's `gaussian_blur` (reflect padding) as band-matrix products along each axis: equal to
    1e-5 and about 10x faster than its depthwise convolution on CPU at 224 px (docs/benchmarks/views.md)."""
    x = torch.arange(kernel_size, dtype=torch.float32) - kernel_size // 2
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    _, h, w = view.shape
    half = kernel_size // 2
    rows = _banded_matmul(_blur_matrix(h, kernel), view, half)
    return _banded_matmul(_blur_matrix(w, kernel), rows.transpose(-1, -2), half).transpose(-1, -2)


@dataclass(frozen=True)
class Colour:
    """Photometric operations on a float [0, 1] view, in the order of SimCLR / BYOL / DINO."""

    jitter: tuple[float, float, float, float]  # brightness, contrast, saturation, hue at strength 1
    strength: float = 1.0
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    solarize_p: float = 0.0

    def __call__(self, view: torch.Tensor) -> torch.Tensor:
        b, c, s, h = (x * self.strength for x in self.jitter)
        if coin(self.jitter_p) and self.strength > 0:
            view = colour_jitter(view, b, c, s, min(h, 0.5))
        if coin(self.gray_p):
            view = F.rgb_to_grayscale(view, num_output_channels=3)
        if coin(self.blur_p):  # kernel ~10% of the image, odd (SimCLR appendix A); sigma in [0.1, 2]
            view = gaussian_blur(view, max(3, int(0.1 * min(view.shape[1:])) // 2 * 2 + 1), uniform(0.1, 2.0))
        if coin(self.solarize_p):
            view = torch.where(view >= 0.5, 1 - view, view)
        return view


# -- structural operations applied to a finished (float) view ------------------------------------
class LocalRotation:
    """LoRot-I (Moon et al. 2022): rotate one square region of the view in place by k quarter turns.

    The region is a random quadrant (`quadrant=True`, the paper's informative variant) or a square of
    side `region` x size at a random position. k is uniform in 0..3 and is the view's rotation label.
    """

    def __init__(self, region: float = 0.5, quadrant: bool = True):
        self.region, self.quadrant = region, quadrant

    def __call__(self, view: torch.Tensor) -> tuple[torch.Tensor, int]:
        _, h, w = view.shape
        side = max(1, round(self.region * min(h, w)))
        if self.quadrant:
            y = int(torch.randint(2, ())) * (h - side)
            x = int(torch.randint(2, ())) * (w - side)
        else:
            y = int(torch.randint(h - side + 1, ()))
            x = int(torch.randint(w - side + 1, ()))
        k = int(torch.randint(4, ()))
        if k:
            view = view.clone()
            view[:, y:y + side, x:x + side] = torch.rot90(view[:, y:y + side, x:x + side], k, dims=(1, 2))
        return view, k


def neighbourhood_permutation(n: int, k: int) -> torch.Tensor:
    """DCL's region confusion: sort i + U(-k, k); each index moves by at most 2k - 1 places."""
    return torch.argsort(torch.arange(n) + (torch.rand(n) * 2 - 1) * k)


class RegionConfusion:
    """DCL's region confusion mechanism (Chen et al. 2019): split the view into a grid x grid of tiles,
    shuffle the tiles of each row, then of each column, within a neighbourhood of k.

    A tile moves at most 2k - 1 places along each axis. When the size is not a multiple of the grid,
    the remaining right and bottom pixels stay in place.
    """

    def __init__(self, grid: int, k: int):
        self.grid, self.k = grid, k

    def __call__(self, view: torch.Tensor) -> torch.Tensor:
        c, h, w = view.shape
        g = self.grid
        th, tw = h // g, w // g
        tiles = view[:, :g * th, :g * tw].reshape(c, g, th, g, tw).permute(1, 3, 0, 2, 4)  # (row, col, c, th, tw)
        rows = torch.arange(g).view(g, 1).expand(g, g)
        cols = torch.stack([neighbourhood_permutation(g, self.k) for _ in range(g)])  # per row: source column
        tiles = tiles[rows, cols]
        rows = torch.stack([neighbourhood_permutation(g, self.k) for _ in range(g)], dim=1)  # per column
        tiles = tiles[rows, torch.arange(g).view(1, g).expand(g, g)]
        out = view.clone()
        out[:, :g * th, :g * tw] = tiles.permute(2, 0, 3, 1, 4).reshape(c, g * th, g * tw)
        return out


# -- one view ------------------------------------------------------------------------------------
class Jigsaw:
    """PIRL's jigsaw (Misra & van der Maaten 2020) on a float view of side grid x cell: the view is cut into
    grid x grid cells, each cell is cropped at a random place to `keep` of its side and resized back (so the
    network cannot match patches by their borders), and the cells are put back in a random order. The result
    keeps the view's shape, so it batches like any view; the method cuts it into its patches again."""

    def __init__(self, grid: int = 3, keep: float = 0.85):
        if grid < 2 or not 0 < keep <= 1:
            raise ValueError(f"jigsaw: grid must be >= 2 and keep in (0, 1] (got {grid}, {keep})")
        self.grid, self.keep = grid, keep

    def __call__(self, view: torch.Tensor) -> torch.Tensor:
        g = self.grid
        cell = view.shape[-1] // g
        patches = [_recrop(view, r * cell, c * cell, cell, self.keep) for r in range(g) for c in range(g)]
        order = torch.randperm(g * g).tolist()
        return _tile([patches[i] for i in order], g)


class PatchGrid:
    """CPC's input (van den Oord et al. 2018; Henaff et al. 2019): a view of side (grid + 1) x stride cut into
    grid x grid patches of side 2 x stride at that stride (each overlaps its neighbours by half), each
    re-cropped at a random place to `keep` of its side and resized back, or to `patch_size` px when it is > 0
    (CPC v2's per-patch crop: no matching by shared pixels). `colour`, when given, is drawn anew for every
    patch (CPC v2's per-patch colour: no matching by a shared colour cast). The patches are tiled row by row
    without overlap into one image of side grid x patch, which batches like any view; `patches_of(view, grid)`
    cuts it into the patches again."""

    def __init__(self, grid: int = 3, keep: float = 0.85, patch_size: int = 0, colour: Colour | None = None):
        if grid < 2 or not 0 < keep <= 1 or patch_size < 0:
            raise ValueError(f"patch grid: grid must be >= 2, keep in (0, 1] and patch_size >= 0 "
                             f"(got {grid}, {keep}, {patch_size})")
        self.grid, self.keep, self.patch_size, self.colour = grid, keep, patch_size, colour

    def __call__(self, view: torch.Tensor) -> torch.Tensor:
        g = self.grid
        stride = view.shape[-1] // (g + 1)
        out = self.patch_size or 2 * stride  # 0: each patch at its own resolution
        patches = [_recrop(view, r * stride, c * stride, 2 * stride, self.keep, out)
                   for r in range(g) for c in range(g)]
        if self.colour is not None:
            patches = [self.colour(patch) for patch in patches]
        return _tile(patches, g)


def _recrop(view: torch.Tensor, top: int, left: int, cell: int, keep: float, out: int = 0) -> torch.Tensor:
    """The cell x cell square at (top, left), cropped at a random place to `keep` of its side and resized to
    out x out (0: back to cell x cell)."""
    side = max(1, round(cell * keep))
    i = top + int(torch.randint(0, cell - side + 1, ()))
    j = left + int(torch.randint(0, cell - side + 1, ()))
    return F.resize(view[:, i:i + side, j:j + side], [out or cell] * 2, antialias=True)


def _tile(patches: list[torch.Tensor], grid: int) -> torch.Tensor:
    """grid * grid equal patches, row by row, as one image."""
    rows = [torch.cat(patches[r * grid:(r + 1) * grid], dim=2) for r in range(grid)]
    return torch.cat(rows, dim=1)


def patches_of(views: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, g*p, g*p) -> (B * g * g, C, p, p): the cells of each view, row by row."""
    b, ch, side, _ = views.shape
    p = side // grid
    x = views[:, :, :grid * p, :grid * p].reshape(b, ch, grid, p, grid, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b * grid * grid, ch, p, p)


@dataclass
class ViewSample:
    view: torch.Tensor
    box: Box  # crop in the source, normalised; flips swap the coordinates
    rotation: int  # LoRot quarter turns of the rotated region, 0 without LoRot


class View:
    """One random view of a uint8 image: crop + resize, flips, rotations, colour, structure, normalise."""

    def __init__(self, size: int, colour: Colour, *, scale: tuple[float, float] = (0.08, 1.0),
                 hflip_p: float = 0.5, vflip_p: float = 0.0, turn_p: float = 0.0, rotation_p: float = 0.0,
                 rotation_degrees: float = 0.0, lorot: LocalRotation | None = None,
                 confusion: RegionConfusion | Jigsaw | PatchGrid | None = None, confusion_p: float = 1.0):
        self.size, self.scale = size, scale
        self.hflip_p, self.vflip_p, self.turn_p = hflip_p, vflip_p, turn_p
        self.rotation_p, self.rotation_degrees = rotation_p, rotation_degrees
        self.rotation = v2.RandomApply([v2.RandomRotation(rotation_degrees)], p=rotation_p) \
            if rotation_p > 0 and rotation_degrees > 0 else None
        self.colour = colour
        self.lorot, self.confusion, self.confusion_p = lorot, confusion, confusion_p

    def __call__(self, image: torch.Tensor) -> ViewSample:
        _, height, width = image.shape
        i, j, h, w = RandomResizedCrop.get_params(image, list(self.scale), [3 / 4, 4 / 3])
        view = F.resized_crop(image, i, j, h, w, [self.size, self.size], antialias=True)
        x0, y0, x1, y1 = j / width, i / height, (j + w) / width, (i + h) / height
        if coin(self.hflip_p):
            view, x0, x1 = F.horizontal_flip(view), x1, x0
        if coin(self.vflip_p):
            view, y0, y1 = F.vertical_flip(view), y1, y0
        if coin(self.turn_p):
            view = torch.rot90(view, int(torch.randint(1, 4, ())), dims=(1, 2))
        if self.rotation is not None:
            view = self.rotation(view)
        view = self.colour(F.to_dtype(view, torch.float32, scale=True))
        rotation = 0
        if self.lorot is not None:
            view, rotation = self.lorot(view)
        if self.confusion is not None and coin(self.confusion_p):
            view = self.confusion(view)
        return ViewSample(F.normalize(view, IMAGENET_MEAN, IMAGENET_STD), (x0, y0, x1, y1), rotation)


class MultiView:
    """Apply each view transform to the same image: `MultiView([t1, t2])(img) -> [t1(img), t2(img)]`.

    Views built from `View` share one uint8 conversion of the image and may report per-view extras:
    `provides=("boxes",)` and/or `("rotations",)` make the pipeline return
    `{"views": [...], "boxes": float32 [n_views, 4], "rotations": int64 [n_views]}`. Other callables
    (e.g. a torchvision Compose on PIL images) receive the PIL image and return a tensor.
    """

    def __init__(self, transforms: Sequence[Callable], provides: tuple[str, ...] = ()):
        self.transforms = list(transforms)
        self.provides = provides

    def __call__(self, image: Image.Image) -> list[torch.Tensor] | dict[str, list[torch.Tensor] | torch.Tensor]:
        pixels = to_uint8(image) if any(isinstance(t, View) for t in self.transforms) else None
        samples = [t(pixels) if isinstance(t, View) else ViewSample(t(image), (0.0, 0.0, 1.0, 1.0), 0)
                   for t in self.transforms]
        views = [s.view for s in samples]
        if not self.provides:
            return views
        out: dict[str, list[torch.Tensor] | torch.Tensor] = {"views": views}
        if "boxes" in self.provides:
            out["boxes"] = torch.tensor([s.box for s in samples], dtype=torch.float32)
        if "rotations" in self.provides:
            out["rotations"] = torch.tensor([s.rotation for s in samples], dtype=torch.int64)
        return out

    def __len__(self) -> int:
        return len(self.transforms)

