"""The view pipelines: counts and sizes, crop boxes, LoRot, DCL, orthogonality, seeding, options."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as F

from pretrain.data.datasets import EpochSampler, ViewsDataset
from pretrain.data.images import scan_images
from pretrain.ground.errors import ConfigError
from pretrain.views.ops import colour_jitter, denormalize, gaussian_blur, local_size, shift_hue
from pretrain.views.recipes import TRANSFORMS, build_transform

NO_COLOUR = {"jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0}
EXTRAS = {"lorot": "rotations", "vicregl": "boxes"}


def noise_image(size: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def seeded(transform, image, seed: int):
    torch.manual_seed(seed)
    return transform(image)


def views_of(out) -> list[torch.Tensor]:
    return out["views"] if isinstance(out, dict) else out


@pytest.mark.parametrize("size", [32, 224])
@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_number_and_sizes_of_views(name: str, size: int) -> None:
    source = Image.new("RGB", (size + 40, size + 8), (90, 140, 200))
    out = seeded(build_transform(name, size), source, 0)
    views = views_of(out)
    local = {32: 16, 224: 96}[size]
    expected = [size, size] + ([local] * 6 if name in ("multicrop", "vicregl") else [])
    if name == "jigsaw":  # the image, then its 3 x 3 cells of size // 3
        expected = [size, 3 * (size // 3)]
    if name == "patchgrid":  # one view: 3 x 3 patches of 2 x (size // 4) px, tiled without overlap
        expected = [3 * 2 * (size // 4)]
    assert [tuple(v.shape) for v in views] == [(3, s, s) for s in expected]
    assert all(v.dtype == torch.float32 for v in views)
    if name in EXTRAS:
        assert set(out) == {"views", EXTRAS[name]}
        assert out[EXTRAS[name]].shape[0] == len(views)
        assert build_transform(name, size).provides == (EXTRAS[name],)
    else:
        assert isinstance(out, list) and not getattr(build_transform(name, size), "provides", ())


def test_local_size_scales_with_the_input() -> None:
    assert [local_size(s) for s in (32, 64, 96, 160, 224, 448)] == [16, 24, 40, 72, 96, 192]
    views = views_of(build_transform("multicrop", 64, {"local_views": 3, "local_size": 40})(noise_image(80)))
    assert [v.shape[-1] for v in views] == [64, 64, 40, 40, 40]


def test_views_are_normalised_like_inference() -> None:
    """A view of a flat grey image is that grey through the inference normalisation, whatever the pipeline."""
    from pretrain.ground.preprocess import Preprocessing

    grey = Image.new("RGB", (48, 48), (128, 128, 128))
    expected = Preprocessing.for_size(32)(grey)
    for name in TRANSFORMS:
        opts = {**NO_COLOUR, **({"local_views": 0} if name in ("multicrop", "vicregl") else {})}
        for view in views_of(seeded(build_transform(name, 32, opts), grey, 1)):
            side = view.shape[-1]  # a jigsaw's cells cover 3 x (32 // 3) px, a patch grid's tiles 48 px
            grey_view = expected[:, :side, :side] if side <= 32 else expected[:, :1, :1].expand(-1, side, side)
            torch.testing.assert_close(view, grey_view, atol=1e-5, rtol=0)


def gradient_image(width: int = 256, height: int = 200) -> Image.Image:
    """R = column index, G = row index: every pixel says where it came from."""
    x = np.broadcast_to(np.arange(width, dtype=np.uint8), (height, width))
    y = np.broadcast_to(np.arange(height, dtype=np.uint8)[:, None], (height, width))
    return Image.fromarray(np.stack([x, y, np.full_like(x, 128)], axis=-1))


@pytest.mark.parametrize("hflip_p", [0.0, 1.0])
def test_vicregl_boxes_map_view_pixels_to_their_source(hflip_p: float) -> None:
    width, height = 256, 200
    source = gradient_image(width, height)
    transform = build_transform("vicregl", 32, {**NO_COLOUR, "hflip_p": hflip_p})
    for seed in range(4):
        out = seeded(transform, source, seed)
        assert out["boxes"].dtype == torch.float32 and out["boxes"].shape == (8, 4)
        for view, (x0, y0, x1, y1) in zip(out["views"], out["boxes"].tolist()):
            assert (x0 > x1) == bool(hflip_p) and y0 < y1
            assert all(0 <= v <= 1 for v in (x0, y0, x1, y1))
            pixels = denormalize(view).float()
            s = view.shape[-1]
            u = (torch.arange(s) + 0.5) / s  # view pixel centres in [0, 1]
            want_x = (x0 + u * (x1 - x0)) * width - 0.5  # the source pixel whose value is its column index
            want_y = (y0 + u * (y1 - y0)) * height - 0.5
            inner = slice(1, s - 1)  # the antialiasing filter is cut at the crop's edge
            assert (pixels[0, inner, inner] - want_x[inner].view(1, -1)).abs().max() <= 1.0
            assert (pixels[1, inner, inner] - want_y[inner].view(-1, 1)).abs().max() <= 1.0


def test_extras_survive_the_default_collate(image_folder) -> None:
    images = scan_images(image_folder)
    for name, key, shape in (("vicregl", "boxes", (4, 8, 4)), ("lorot", "rotations", (4, 2))):
        dataset = ViewsDataset(images, build_transform(name, 32))
        batch, failures, _ = next(iter(DataLoader(dataset, batch_size=4, sampler=EpochSampler(len(images), 4, 0))))
        assert len(batch["views"]) == shape[1] and batch["views"][0].shape == (4, 3, 32, 32)
        assert batch[key].shape == shape and failures.tolist() == [0] * 4
    assert batch["rotations"].dtype == torch.int64


def full_view_options() -> dict:
    """Crop = the whole (square) source at its own size, no flip, no colour: only the structure op acts."""
    return {**NO_COLOUR, "min_scale": 1.0, "hflip_p": 0.0}


@pytest.mark.parametrize("quadrant, region", [(True, 0.5), (False, 0.375)])
def test_lorot_rotates_one_region_in_place_and_labels_it(quadrant: bool, region: float) -> None:
    source = F.pil_to_tensor(noise_image(32))
    transform = build_transform("lorot", 32, {**full_view_options(), "quadrant": quadrant, "region": region})
    side = round(region * 32)
    labels = []
    for seed in range(12):
        out = seeded(transform, F.to_pil_image(source), seed)
        for view, k in zip(out["views"], out["rotations"].tolist()):
            labels.append(k)
            pixels = denormalize(view)
            if k == 0:
                assert torch.equal(pixels, source)
                continue
            corners = [(0, 0), (0, 32 - side), (32 - side, 0), (32 - side, 32 - side)] if quadrant else \
                [(y, x) for y in range(33 - side) for x in range(33 - side)]
            matches = []
            for y, x in corners:
                expected = source.clone()
                expected[:, y:y + side, x:x + side] = torch.rot90(source[:, y:y + side, x:x + side], k, (1, 2))
                matches += [(y, x)] if torch.equal(pixels, expected) else []
            assert len(matches) == 1, f"seed {seed}: view is not the source with one region turned {k} times"
            assert not torch.equal(pixels, source)
    assert set(labels) == {0, 1, 2, 3}


def tiles(image: torch.Tensor, grid: int) -> torch.Tensor:
    c, h, w = image.shape
    t = h // grid
    return image.reshape(c, grid, t, grid, t).permute(1, 3, 0, 2, 4).reshape(grid, grid, -1)


@pytest.mark.parametrize("grid, k", [(4, 1), (8, 2)])
def test_dcl_permutes_tiles_within_the_neighbourhood(grid: int, k: int) -> None:
    source = F.pil_to_tensor(noise_image(32))
    src_tiles = tiles(source, grid)
    where = {tuple(src_tiles[r, c].tolist()): (r, c) for r in range(grid) for c in range(grid)}
    transform = build_transform("dcl", 32, {**full_view_options(), "grid": grid, "k": k})
    largest = 0
    for seed in range(6):
        for view in seeded(transform, F.to_pil_image(source), seed):
            out_tiles = tiles(denormalize(view), grid)
            moves = [(r - where[tuple(out_tiles[r, c].tolist())][0], c - where[tuple(out_tiles[r, c].tolist())][1])
                     for r in range(grid) for c in range(grid)]  # KeyError: a tile that is not from the source
            sources = {(r - dr, c - dc) for (dr, dc), (r, c) in zip(moves, np.ndindex(grid, grid))}
            assert len(sources) == grid * grid  # a permutation: every source tile exactly once
            assert max(max(abs(dr), abs(dc)) for dr, dc in moves) <= 2 * k - 1
            largest = max(largest, *(max(abs(dr), abs(dc)) for dr, dc in moves))
    assert largest == 2 * k - 1  # tiles do move, up to the bound


def _orthogonal_views_seen(transform_args: dict) -> set[tuple[int, bool]]:
    """Which (quarter turns, horizontal flip) of the square's symmetry group the views are; each view must be one."""
    source = F.pil_to_tensor(noise_image(32))
    group = {(turns, flip): torch.rot90(F.horizontal_flip(source) if flip else source, turns, (1, 2))
             for turns in range(4) for flip in (False, True)}
    transform = build_transform("orthogonality", 32, {**NO_COLOUR, "min_scale": 1.0, **transform_args})
    seen = set()
    for seed in range(16):
        for view in seeded(transform, F.to_pil_image(source), seed):
            found = [g for g, image in group.items() if torch.equal(denormalize(view), image)]
            assert len(found) == 1
            seen.add(found[0])
    return seen


def test_orthogonality_views_are_horizontal_and_vertical_flips() -> None:
    # the seed's pipeline: identity, horizontal flip, vertical flip (= half turn of the h-flip), both (= half turn)
    assert _orthogonal_views_seen({}) == {(0, False), (0, True), (2, True), (2, False)}


def test_orthogonality_turn_p_adds_right_angle_turns() -> None:
    seen = _orthogonal_views_seen({"turn_p": 0.5})
    assert len(seen) >= 6  # more than the 4 flips: turns happen too


@pytest.mark.parametrize("name", ["baseline", "orthogonality", "lorot", "dcl", "simclr"])
def test_colour_strength_halves_on_small_images(name: str) -> None:
    # SimCLR's CIFAR rule for every two-view pipeline: strength 0.5 and no blur at <= 64 px, 1.0 and blur above
    for size, strength, blurred in ((32, 0.5, False), (64, 0.5, False), (96, 1.0, True), (224, 1.0, True)):
        colours = [view.colour for view in build_transform(name, size, {}).transforms]
        assert [c.strength for c in colours] == [strength, strength]
        assert all((c.blur_p > 0) == blurred for c in colours)
    assert [v.colour.strength for v in build_transform(name, 32, {"strength": 1}).transforms] == [1.0, 1.0]


def test_fast_colour_ops_equal_torchvision() -> None:
    torch.manual_seed(0)
    view = torch.rand(3, 40, 56)
    view[:, :3, :3] = 0.5  # grey pixels have no hue
    for shift in (-0.5, -0.13, 0.0, 0.27, 0.5):
        torch.testing.assert_close(shift_hue(view, shift), F.adjust_hue(view, shift), atol=1e-5, rtol=0)
    large = torch.rand(3, 100, 90)  # past 32 rows + the kernel: the banded product runs block by block
    for image in (view, large):
        for kernel, sigma in ((3, 0.1), (9, 1.3), (23, 2.0)):
            torch.testing.assert_close(gaussian_blur(image, kernel, sigma),
                                       F.gaussian_blur(image, [kernel, kernel], [sigma, sigma]), atol=1e-5, rtol=0)
    # colour_jitter applies the same four torchvision operations in a random order
    torch.manual_seed(3)
    jittered = colour_jitter(view, 0.4, 0.4, 0.4, 0.1)
    torch.manual_seed(3)
    order = torch.randperm(4).tolist()
    factors = [0.6 + 0.8 * float(torch.rand(())) for _ in range(3)] + [-0.1 + 0.2 * float(torch.rand(()))]
    ops = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
    expected = view
    for op in order:
        expected = ops[op](expected, factors[op])
    torch.testing.assert_close(jittered, expected, atol=1e-5, rtol=0)


def test_views_are_a_function_of_the_sample_seed_whatever_the_workers(image_folder) -> None:
    images = scan_images(image_folder)
    dataset = ViewsDataset(images, build_transform("vicregl", 32))
    a, b, c = dataset[(3, 11)][0], dataset[(3, 11)][0], dataset[(3, 12)][0]
    assert all(torch.equal(x, y) for x, y in zip(a["views"], b["views"])) and torch.equal(a["boxes"], b["boxes"])
    assert not torch.equal(a["boxes"], c["boxes"])

    def batches(workers: int) -> list:
        dataset = ViewsDataset(images, build_transform("lorot", 32))
        sampler = EpochSampler(len(images), 4, seed=5)
        sampler.set_epoch(1)
        loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=workers)
        return [(torch.stack(b[0]["views"]), b[0]["rotations"]) for b in loader][:3]

    for (v0, r0), (v2, r2) in zip(batches(0), batches(2)):
        assert torch.equal(v0, v2) and torch.equal(r0, r2)


@pytest.mark.parametrize("name, options, message", [
    ("nope", {}, "transform must be one of"),
    ("simclr", {"strenght": 0.5}, "has no option strenght; its options: min_scale"),
    ("dcl", {"grid": 2.5}, "option grid must be a int"),
    ("baseline", {"gray_p": 1.5}, "gray_p is a probability in [0, 1]"),
    ("multicrop", {"local_min_scale": 0.0}, "local_min_scale must be in (0, 1]"),
    ("multicrop", {"local_min_scale": 0.5, "local_max_scale": 0.3}, "local_min_scale <= local_max_scale"),
    ("dcl", {"k": 4}, "1 <= k < grid"),
    ("lorot", {"quadrant": 1}, "option quadrant must be a bool"),
])
def test_bad_options_are_one_line_errors(name: str, options: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        build_transform(name, 32, options)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_integer_option_values_are_accepted_for_floats() -> None:
    views = build_transform("simclr", 32, {"strength": 1, "min_scale": 1})(noise_image(32))
    assert len(views) == 2


@pytest.mark.parametrize("transform, args", [("multicrop", ["--transform-arg", "local_views=2"]), ("lorot", [])])
def test_any_transform_trains_any_method_from_the_cli(transform: str, args: list, image_folder, tmp_path) -> None:
    import json

    from pretrain.cli import main

    out = tmp_path / "run"
    argv = ["pretrain", "--method", "simclr", "--transform", transform, *args, "--data", str(image_folder),
            "--max-images", "8", "--epochs", "1", "--backbone", "test_resnet", "--image-size", "32",
            "--batch-size", "8", "--workers", "0", "--optimizer", "sgd", "--lr", "0.1", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    model = json.loads((out / "model.json").read_text())
    assert model["method"]["transform"] == transform
    assert model["training"]["steps"] == 1


def test_plot_views_writes_a_grid_png(image_folder, tmp_path, capsys) -> None:
    from pretrain.cli import main

    png = tmp_path / "views.png"
    assert main(["plot", "views", "--transform", "multicrop", "--transform-arg", "local_views=2", "--data",
                 str(image_folder), "--images", "3", "--out", str(png)]) == 0
    assert str(png) in capsys.readouterr().out
    with Image.open(png) as im:
        wide = im.size
    assert main(["views", "--transform", "simclr", "--data", str(image_folder), "--images", "3",
                 "--out", str(png)]) == 0  # `sslforge views` is `sslforge plot views`
    with Image.open(png) as im:
        narrow = im.size
    assert wide[0] > narrow[0] and wide[1] == narrow[1]  # 1 + 4 columns against 1 + 2, 3 rows in both
    assert main(["plot", "views", "--transform", "simclr", "--transform-arg", "nope=1", "--data",
                 str(image_folder), "--out", str(png)]) == 2
    assert "has no option nope" in capsys.readouterr().err
