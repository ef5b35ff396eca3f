"""Training view pipelines by name: a pipeline maps one PIL image to the list of its views.

Each pipeline is a recipe of the operations in `pretrain/views/ops.py`: a `MultiView` of `View`s, each with its
own crop, flips and colour settings. `build_transform(name, size, options)` checks the options and builds one.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable

from pretrain.ground.errors import ConfigError
from pretrain.views.ops import (
    SMALL,
    Colour,
    Jigsaw,
    LocalRotation,
    MultiView,
    PatchGrid,
    RegionConfusion,
    View,
    local_size,
)


def _blur(blur_p: float | None, size: int, default: float = 0.5) -> float:
    return (0.0 if size <= SMALL else default) if blur_p is None else blur_p


def _strength(strength: float | None, size: int) -> float:
    """SimCLR's colour strength rule: 0.5 on small (<= 64 px) inputs as in its CIFAR-10 runs, else 1."""
    return (0.5 if size <= SMALL else 1.0) if strength is None else strength


def _baseline_colour(size: int, strength: float | None, jitter_p: float, gray_p: float,
                     blur_p: float | None) -> Colour:
    """The baseline's colour (lightly's jitter 0.7, 0.7, 0.7, 0.2), shared by orthogonality, lorot and dcl."""
    return Colour((0.7, 0.7, 0.7, 0.2), _strength(strength, size), jitter_p, gray_p, _blur(blur_p, size))


def baseline(size: int, *, min_scale: float = 0.15, hflip_p: float = 0.5, rotation_p: float = 0.5,
             rotation_degrees: float = 15.0, strength: float | None = None, jitter_p: float = 0.8,
             gray_p: float = 0.2, blur_p: float | None = None) -> MultiView:
    """The common default of SSL libraries (lightly's ImageCollateFunction): crop (scale >= 0.15), flip,
    rotation by up to +-15 degrees, colour jitter (0.7, 0.7, 0.7, 0.2) x strength with p=0.8, grayscale, blur.
    On inputs <= 64 px, as SimCLR's views: no blur and half the colour strength (the full strength keeps
    Barlow Twins' kNN below random init's at 32 px: docs/benchmarks/grid.md)."""
    colour = _baseline_colour(size, strength, jitter_p, gray_p, blur_p)
    return MultiView([View(size, colour, scale=(min_scale, 1.0), hflip_p=hflip_p, rotation_p=rotation_p,
                           rotation_degrees=rotation_degrees) for _ in range(2)])


def simclr(size: int, *, min_scale: float = 0.08, hflip_p: float = 0.5, strength: float | None = None,
           jitter_p: float = 0.8, gray_p: float = 0.2, blur_p: float | None = None, views: int = 2) -> MultiView:
    """Two SimCLR views (Chen et al. 2020, appendix A): crop-and-resize, flip, colour distortion, blur.

    Defaults follow the paper per input size: colour strength 0.5 and no blur on small (<= 64 px)
    images as in its CIFAR-10 runs; strength 1.0 and a blur kernel of ~10% of the image otherwise.
    `views`: how many (1 for methods that compare one view with a memory or a label: NPID, DeepCluster, SeLA).
    """
    if views < 1:
        raise ConfigError(f"transform simclr: views must be >= 1 (got {views})")
    colour = Colour((0.8, 0.8, 0.8, 0.2), _strength(strength, size), jitter_p, gray_p, _blur(blur_p, size))
    return MultiView([View(size, colour, scale=(min_scale, 1.0), hflip_p=hflip_p) for _ in range(views)])


def jigsaw(size: int, *, grid: int = 3, keep: float = 0.85, min_scale: float = 0.08, hflip_p: float = 0.5,
           strength: float | None = None, jitter_p: float = 0.8, gray_p: float = 0.2,
           blur_p: float | None = None) -> MultiView:
    """PIRL's pair (Misra & van der Maaten 2020): a SimCLR view of the image, and its jigsaw: another crop of
    side grid x (size // grid) cut into grid x grid cells, each re-cropped to `keep` of its side and the cells
    shuffled (pretrain/views/ops.py: Jigsaw)."""
    if grid < 2 or size // grid < 4:
        raise ConfigError(f"transform jigsaw: grid must be >= 2 with cells of >= 4 px (got grid {grid} at {size} px)")
    if not 0 < keep <= 1:
        raise ConfigError(f"transform jigsaw: keep must be in (0, 1] (got {keep})")
    colour = Colour((0.8, 0.8, 0.8, 0.2), _strength(strength, size), jitter_p, gray_p, _blur(blur_p, size))
    cells = grid * (size // grid)
    return MultiView([View(size, colour, scale=(min_scale, 1.0), hflip_p=hflip_p),
                      View(cells, colour, scale=(min_scale, 1.0), hflip_p=hflip_p, confusion=Jigsaw(grid, keep))])


def patchgrid(size: int, *, grid: int = 3, keep: float = 0.85, patch_size: int = 0, patch_colour: bool = False,
              min_scale: float = 0.25, hflip_p: float = 0.5, strength: float | None = None, jitter_p: float = 0.8,
              gray_p: float = 0.2, blur_p: float | None = None) -> MultiView:
    """CPC's view (CPC v2, Henaff et al. 2019): one crop of side (grid + 1) x (size // (grid + 1)) with SimCLR's
    flip and colour, cut into grid x grid half-overlapping patches of twice that stride, each re-cropped to `keep`
    (pretrain/views/ops.py: PatchGrid); the view is the patches tiled row by row. CPC's 7 x 7 grid of 64 px
    patches on 256 px images is grid=7 at size 256; 3 x 3 patches of 16 px at 32 px by default. `patch_size` > 0
    resizes every patch to that side (e.g. the image size, so the backbone trains at the resolution it embeds at);
    `patch_colour` draws the colour of every patch on its own instead of once for the crop (CPC v2)."""
    if grid < 2 or size // (grid + 1) < 2:
        raise ConfigError(f"transform patchgrid: grid must be >= 2 with a stride of >= 2 px (got grid {grid} "
                          f"at {size} px)")
    if not 0 < keep <= 1 or patch_size < -1:
        raise ConfigError(f"transform patchgrid: keep must be in (0, 1] and patch_size >= 0 or -1 (the image size) "
                          f"(got {keep}, {patch_size})")
    colour = Colour((0.8, 0.8, 0.8, 0.2), _strength(strength, size), jitter_p, gray_p, _blur(blur_p, size))
    side = (grid + 1) * (size // (grid + 1))
    grid_op = PatchGrid(grid, keep, size if patch_size == -1 else patch_size, colour if patch_colour else None)
    view_colour = Colour(colour.jitter, 0.0, 0.0, 0.0) if patch_colour else colour
    return MultiView([View(side, view_colour, scale=(min_scale, 1.0), hflip_p=hflip_p, confusion=grid_op)])


def orthogonality(size: int, *, min_scale: float = 0.15, hflip_p: float = 0.5, vflip_p: float = 0.5,
                  turn_p: float = 0.0, strength: float | None = None, jitter_p: float = 0.8, gray_p: float = 0.2,
                  blur_p: float | None = None) -> MultiView:
    """The seed's orthogonality pipeline: the baseline's crop and colour with horizontal and vertical flips
    instead of a small rotation. `turn_p` > 0 adds 1-3 quarter turns with that probability (with the flips,
    the whole symmetry group of the square)."""
    colour = _baseline_colour(size, strength, jitter_p, gray_p, blur_p)
    return MultiView([View(size, colour, scale=(min_scale, 1.0), hflip_p=hflip_p, vflip_p=vflip_p,
                           turn_p=turn_p) for _ in range(2)])


def lorot(size: int, *, region: float = 0.5, quadrant: bool = True, min_scale: float = 0.15,
          hflip_p: float = 0.5, strength: float | None = None, jitter_p: float = 0.8, gray_p: float = 0.2,
          blur_p: float | None = None) -> MultiView:
    """LoRot-I on the baseline's crop and colour: each view gets one region turned by k quarter turns
    (k uniform in 0..3, returned per view as `rotations` for an auxiliary rotation head)."""
    if not 0 < region <= 1:
        raise ConfigError(f"transform lorot: region must be in (0, 1] (got {region})")
    colour = _baseline_colour(size, strength, jitter_p, gray_p, blur_p)
    return MultiView([View(size, colour, scale=(min_scale, 1.0), hflip_p=hflip_p,
                           lorot=LocalRotation(region, quadrant)) for _ in range(2)], provides=("rotations",))


def dcl(size: int, *, grid: int | None = None, k: int = 1, confusion_p: float = 1.0, min_scale: float = 0.15,
        hflip_p: float = 0.5, strength: float | None = None, jitter_p: float = 0.8, gray_p: float = 0.2,
        blur_p: float | None = None) -> MultiView:
    """DCL's region confusion on the baseline's crop and colour: a grid x grid tiling (4 on inputs
    <= 64 px, else 7 as in DCL) shuffled within a neighbourhood of k, with probability confusion_p."""
    grid = (4 if size <= SMALL else 7) if grid is None else grid
    if not 1 <= grid <= size or not 1 <= k < max(grid, 2):
        raise ConfigError(f"transform dcl: need 1 <= grid <= image size and 1 <= k < grid (got grid={grid}, k={k})")
    colour = _baseline_colour(size, strength, jitter_p, gray_p, blur_p)
    return MultiView([View(size, colour, scale=(min_scale, 1.0), hflip_p=hflip_p,
                           confusion=RegionConfusion(grid, k), confusion_p=confusion_p) for _ in range(2)])


def _global_local(size: int, colour: Colour, global_colours: tuple[Colour, Colour], *, local_views: int,
                  local_size_: int | None, global_min_scale: float, local_min_scale: float, local_max_scale: float,
                  hflip_p: float) -> list[View]:
    if local_views < 0 or not 0 < local_min_scale <= local_max_scale <= 1 or not 0 < global_min_scale <= 1:
        raise ConfigError("multi-crop: need local_views >= 0, 0 < local_min_scale <= local_max_scale <= 1 and "
                          f"0 < global_min_scale <= 1 (got {local_views}, {local_min_scale}, {local_max_scale}, "
                          f"{global_min_scale})")
    small = local_size(size) if local_size_ is None else local_size_
    globals_ = [View(size, c, scale=(global_min_scale, 1.0), hflip_p=hflip_p) for c in global_colours]
    locals_ = [View(small, colour, scale=(local_min_scale, local_max_scale), hflip_p=hflip_p)
               for _ in range(local_views)]
    return globals_ + locals_


def _dino_colours(size: int, strength: float, jitter_p: float, gray_p: float,
                  blur_p: float | None) -> tuple[Colour, tuple[Colour, Colour]]:
    """DINO's asymmetric views: global 1 always blurred, global 2 rarely blurred and sometimes
    solarised, locals blurred half the time; no blur or solarisation on inputs <= 64 px by default."""
    jitter = (0.4, 0.4, 0.2, 0.1)
    if blur_p is not None:
        blurs, solarize = (blur_p, blur_p, blur_p), 0.0
    elif size <= SMALL:
        blurs, solarize = (0.0, 0.0, 0.0), 0.0
    else:
        blurs, solarize = (1.0, 0.1, 0.5), 0.2
    g1 = Colour(jitter, strength, jitter_p, gray_p, blurs[0])
    g2 = Colour(jitter, strength, jitter_p, gray_p, blurs[1], solarize)
    return Colour(jitter, strength, jitter_p, gray_p, blurs[2]), (g1, g2)


def multicrop(size: int, *, local_views: int = 6, local_size: int | None = None, global_min_scale: float = 0.4,
              local_min_scale: float = 0.05, local_max_scale: float = 0.4, hflip_p: float = 0.5,
              strength: float = 1.0, jitter_p: float = 0.8, gray_p: float = 0.2,
              blur_p: float | None = None) -> MultiView:
    """SwAV / DINO multi-crop: [global_1, global_2, local_1 ... local_V]; globals at `size` with scale
    (0.4, 1), locals at 96 px for 224 (scaled with `size`, 16 px at 32) with scale (0.05, 0.4), DINO's
    colour recipe. SwAV's scales: global_min_scale=0.14 local_max_scale=0.14."""
    colour, globals_ = _dino_colours(size, strength, jitter_p, gray_p, blur_p)
    return MultiView(_global_local(size, colour, globals_, local_views=local_views, local_size_=local_size,
                                   global_min_scale=global_min_scale, local_min_scale=local_min_scale,
                                   local_max_scale=local_max_scale, hflip_p=hflip_p))


def vicregl(size: int, *, local_views: int = 6, local_size: int | None = None, global_min_scale: float = 0.2,
            local_min_scale: float = 0.05, local_max_scale: float = 0.2, hflip_p: float = 0.5,
            strength: float = 1.0, jitter_p: float = 0.8, gray_p: float = 0.2,
            blur_p: float | None = None) -> MultiView:
    """VICRegL's views (Bardes et al. 2022): 2 global crops at `size` with scale (0.2, 1) and 6 local
    crops (96 px for 224, 16 px for 32) with scale (0.05, 0.2), each with its crop box in the source
    image, (x0, y0, x1, y1) normalised to [0, 1], x0 > x1 when the view was flipped: view column
    u in [0, 1] is source x = x0 + u * (x1 - x0)."""
    colour, globals_ = _dino_colours(size, strength, jitter_p, gray_p, blur_p)
    return MultiView(_global_local(size, colour, globals_, local_views=local_views, local_size_=local_size,
                                   global_min_scale=global_min_scale, local_min_scale=local_min_scale,
                                   local_max_scale=local_max_scale, hflip_p=hflip_p), provides=("boxes",))


TRANSFORMS: dict[str, Callable[..., MultiView]] = {
    "baseline": baseline,
    "simclr": simclr,
    "orthogonality": orthogonality,
    "lorot": lorot,
    "dcl": dcl,
    "multicrop": multicrop,
    "vicregl": vicregl,
    "jigsaw": jigsaw,
    "patchgrid": patchgrid,
}

_PROBABILITIES = ("hflip_p", "vflip_p", "turn_p", "rotation_p", "jitter_p", "gray_p", "blur_p", "confusion_p")


def options_of(name: str) -> dict[str, object]:
    """The options of pipeline `name` with their defaults (None: chosen from the image size)."""
    params = list(inspect.signature(TRANSFORMS[name]).parameters.values())[1:]
    return {p.name: p.default for p in params}


def build_transform(name: str, size: int, options: dict | None = None) -> MultiView:
    """The pipeline `name` for `size`-pixel crops; unknown names and options are one-line errors."""
    if name not in TRANSFORMS:
        raise ConfigError(f"transform must be one of {', '.join(sorted(TRANSFORMS))} (got {name!r})")
    options = dict(options or {})
    known = options_of(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"transform {name!r} has no option {', '.join(unknown)}; its options: {', '.join(known)}")
    for key, value in options.items():
        default = known[key]
        kind = type(default) if default is not None else (int if key in ("grid", "local_size") else float)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"transform {name!r}: option {key} must be a {kind.__name__} (got {value!r})")
        if key in _PROBABILITIES and not 0 <= value <= 1:
            raise ConfigError(f"transform {name!r}: option {key} is a probability in [0, 1] (got {value})")
        if key.endswith("scale") and not 0 < value <= 1:
            raise ConfigError(f"transform {name!r}: option {key} must be in (0, 1] (got {value})")
        options[key] = value
    return TRANSFORMS[name](size, **options)

