"""--gpu-augment: each batched op against a per-image torchvision computation, the views of whole
pipelines, determinism, the loader side, and training runs (CPU device: the CUDA path is the same code)."""
import csv
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms.v2 import functional as F

from pretrain.cli import main
from pretrain.ground.errors import ConfigError
from pretrain.train.trainer import Trainer
from pretrain.views import gpu as ga


class Interrupt(Exception):
    pass


def stop_at(step: int):
    def hook(s: int) -> None:
        if s == step:
            raise Interrupt
    return hook


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.read_text().splitlines()))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_images(n: int, side: int, seed: int = 0) -> torch.Tensor:
    """Float [0, 1] images without pixel-level detail, so interpolation methods agree closely."""
    coarse = torch.rand(n, 3, 6, 6, generator=gen(seed))
    return torch.nn.functional.interpolate(coarse, size=side, mode="bicubic", align_corners=False).clamp(0, 1)


def test_crop_boxes_follow_random_resized_crop_ranges() -> None:
    boxes = ga.crop_boxes(2000, 40, (0.2, 0.6), gen())
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 40 + 1e-4).all()
    assert ((w * h / 1600 >= 0.2 - 1e-5) & (w * h / 1600 <= 0.6 + 1e-5)).all()
    assert ((w / h >= 3 / 4 - 1e-4) & (w / h <= 4 / 3 + 1e-4)).all()
    assert w.std() > 1 and boxes[:, 0].std() > 1  # one box per image, not one per batch
    whole = ga.crop_boxes(5, 40, (1.0, 1.0), gen(), ratio=(2.0, 3.0))  # no candidate fits: the whole image
    torch.testing.assert_close(whole, torch.tensor([[0.0, 0.0, 40.0, 40.0]]).expand(5, 4))


def test_resized_crops_equal_torchvision_resized_crop_per_image() -> None:
    images = smooth_images(2, 40)
    boxes = torch.tensor([[5.0, 7.0, 25.0, 22.0], [3.0, 0.0, 40.0, 33.0], [0.0, 10.0, 12.0, 40.0]])
    index = torch.tensor([1, 0, 1])
    for size in (32, 16):  # upscaling and downscaling
        out = ga.resized_crops(images, index, boxes, size)
        assert out.shape == (3, 3, size, size)
        for k, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            ref = F.resized_crop(images[index[k]], y0, x0, y1 - y0, x1 - x0, [size, size], antialias=True)
            diff = (out[k] - ref).abs()
            if (x1 - x0) < size and (y1 - y0) < size:  # bilinear upscaling: exact inside the 1-px border
                assert diff[:, 1:-1, 1:-1].max() < 1e-5
            assert diff.mean() < 0.01 and diff.max() < 0.1  # borders see beyond the crop; box vs triangle filter


def test_flip_rotation_and_grayscale_per_image() -> None:
    x = torch.rand(4, 3, 24, 24, generator=gen())
    mask = torch.tensor([True, False, True, False])
    flipped = ga.hflip(x, mask)
    for i in range(4):
        torch.testing.assert_close(flipped[i], F.horizontal_flip(x[i]) if mask[i] else x[i])
    angles = torch.tensor([10.0, -15.0, 0.0, 90.0])
    rotated = ga.rotate(x, angles)
    for i in range(4):
        same = (rotated[i] == F.rotate(x[i], float(angles[i]))).float().mean()
        assert same > 0.99, (i, same)
    gray = ga.grayscale(x)
    for i in range(4):
        torch.testing.assert_close(gray[i], F.rgb_to_grayscale(x[i], num_output_channels=3))


@pytest.mark.parametrize("op, ref, factors", [
    (ga.adjust_brightness, F.adjust_brightness, [0.4, 1.0, 1.6, 0.9]),
    (ga.adjust_contrast, F.adjust_contrast, [0.4, 1.0, 1.6, 0.0]),
    (ga.adjust_saturation, F.adjust_saturation, [0.4, 1.0, 1.6, 0.0]),
    (ga.adjust_hue, F.adjust_hue, [-0.5, 0.0, 0.2, 0.45]),
])
def test_jitter_ops_equal_torchvision_per_image_factor(op, ref, factors) -> None:
    x = torch.rand(4, 3, 12, 12, generator=gen(1))
    out = op(x.clone(), torch.tensor(factors))
    for i, f in enumerate(factors):
        torch.testing.assert_close(out[i], ref(x[i], f), atol=2e-6, rtol=0)


def test_colour_jitter_draws_factors_per_image_and_respects_the_mask() -> None:
    x = torch.rand(64, 3, 8, 8, generator=gen(2)) * 0.5 + 0.1  # in [0.1, 0.6]: no clamping up to x1.5
    mask = torch.arange(64) % 2 == 0
    out = ga.colour_jitter(x, mask, 0.5, 0.0, 0.0, 0.0, gen(3))
    torch.testing.assert_close(out[~mask], x[~mask])
    ratio = (out[mask] / x[mask]).flatten(1)
    torch.testing.assert_close(ratio.min(1).values, ratio.max(1).values)  # one factor per image
    assert ratio.min() >= 0.5 - 1e-6 and ratio.max() <= 1.5 + 1e-6 and ratio[:, 0].std() > 0.1
    hue_only = ga.colour_jitter(x, torch.ones(64, dtype=torch.bool), 0.0, 0.0, 0.0, 0.3, gen(4))
    changed = (hue_only - x).flatten(1).abs().amax(1)
    assert (changed > 1e-3).float().mean() > 0.9  # a shift drawn in [-0.3, 0.3] for every image


def test_gaussian_blur_equals_torchvision_per_sigma() -> None:
    x = torch.rand(3, 3, 20, 20, generator=gen(5))
    sigma = torch.tensor([0.3, 1.0, 2.0])
    out = ga.gaussian_blur(x, 5, sigma)
    for i in range(3):
        torch.testing.assert_close(out[i], F.gaussian_blur(x[i], [5, 5], [float(sigma[i])] * 2), atol=1e-6, rtol=0)


def test_normalize_equals_the_cpu_pipelines() -> None:
    x = torch.rand(2, 3, 4, 4, generator=gen(6))
    from pretrain.ground.preprocess import IMAGENET_MEAN, IMAGENET_STD
    torch.testing.assert_close(ga.normalize(x), F.normalize(x, IMAGENET_MEAN, IMAGENET_STD))


def test_load_square_resizes_the_short_side_and_centre_crops() -> None:
    image = Image.fromarray(torch.randint(0, 256, (40, 60, 3), dtype=torch.uint8, generator=gen()).numpy())
    out = ga.LoadSquare(32)(image)
    ref = F.center_crop(F.resize(F.pil_to_tensor(image), 32, antialias=True), [32, 32])
    assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)
    assert torch.equal(out, ref)
    assert ga.default_load_size(32) == 32 and ga.default_load_size(224) == 256


@pytest.mark.parametrize("name, sizes", [("simclr", [32, 32]), ("baseline", [32, 32]),
                                         ("multicrop", [32, 32] + [16] * 6), ("vicregl", [32, 32] + [16] * 6)])
def test_pipelines_give_their_views_deterministically(name: str, sizes: list[int]) -> None:
    views = ga.build_device_views(name, 32)
    batch = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=gen())
    a = views(batch, ga.step_generator(0, 0, 3, torch.device("cpu")))
    a = a["views"] if name == "vicregl" else a
    assert [v.shape for v in a] == [(5, 3, s, s) for s in sizes] and len(views) == len(sizes)
    assert all(v.dtype == torch.float32 for v in a)
    b = views(batch, ga.step_generator(0, 0, 3, torch.device("cpu")))
    b = b["views"] if name == "vicregl" else b
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = views(batch, ga.step_generator(0, 0, 4, torch.device("cpu")))
    c = c["views"] if name == "vicregl" else c
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])  # two views of one image differ


def test_vicregl_boxes_map_back_to_the_right_pixels() -> None:
    plain = {"strength": 0.0, "gray_p": 0.0, "blur_p": 0.0}  # views are crops + flips only
    views = ga.build_device_views("vicregl", 32, plain, load_size=40)
    batch = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8, generator=gen())
    out = views(batch, ga.step_generator(0, 0, 0, torch.device("cpu")))
    assert out["boxes"].shape == (6, 8, 4)
    flipped = out["boxes"][..., 0] > out["boxes"][..., 2]
    assert flipped.any() and (~flipped).any()
    images = batch.float() / 255
    for k, view in enumerate(out["views"]):
        for i in range(6):
            box = out["boxes"][i, k] * 40
            x0, x1 = sorted(box[[0, 2]].tolist())
            ref = ga.resized_crops(images, torch.tensor([i]), torch.tensor([[x0, box[1], x1, box[3]]]), view.shape[-1])
            ref = ref.flip(-1) if flipped[i, k] else ref
            torch.testing.assert_close(view[i], ga.normalize(ref)[0], atol=1e-4, rtol=0)


def test_blur_and_solarisation_at_large_sizes() -> None:
    views = ga.build_device_views("multicrop", 96, {"local_views": 2})
    assert views.load.size == 110 and [r.colour.blur_p for r in views.recipes] == [1.0, 0.1, 0.5, 0.5]
    batch = torch.randint(0, 256, (3, 3, 110, 110), dtype=torch.uint8, generator=gen())
    out = views(batch, ga.step_generator(1, 0, 0, torch.device("cpu")))
    assert [v.shape[-1] for v in out] == [96, 96, 40, 40]


def test_unsupported_pipelines_are_a_config_error(image_folder: Path, tmp_path: Path, tiny_config) -> None:
    with pytest.raises(ConfigError, match="gpu_augment supports the transforms baseline, multicrop, simclr, vicregl"):
        ga.build_device_views("lorot", 32)
    cfg = tiny_config(image_folder, tmp_path / "run", gpu_augment=True, transform="dcl")
    with pytest.raises(ConfigError, match=r"\(got 'dcl'\)"):
        Trainer(cfg, progress=False).fit()
    with pytest.raises(ConfigError, match="gpu_load_size applies only with gpu_augment"):
        tiny_config(image_folder, tmp_path / "run", gpu_load_size=40)


@pytest.mark.parametrize("method, small", [("simclr", ["out_dim=16"]),
                                           ("swav", ["prototypes=10", "proj_hidden_dim=32", "proj_dim=16"]),
                                           ("vicregl", ["proj_dim=16", "local_proj_dim=16"])])
def test_pretrain_with_gpu_augment(image_folder: Path, tmp_path: Path, method: str, small: list[str]) -> None:
    out = tmp_path / "run"
    small = [arg for value in small for arg in ("--method-arg", value)]
    assert main(["pretrain", "--method", method, "--gpu-augment", "--data", str(image_folder), "--out", str(out),
                 "--epochs", "1", "--max-images", "16", "--backbone", "test_resnet", "--image-size", "32",
                 "--batch-size", "8", "--workers", "0", "--quiet", *small]) == 0
    rows = read_csv(out / "metrics.csv")
    assert len(rows) == 2 and all(math.isfinite(float(r["loss"])) for r in rows)
    assert json.loads((out / "model.json").read_text())["training"]["steps"] == 2
    saved = (out / "config.yaml").read_text()
    assert "gpu_augment: true" in saved and "gpu_load_size: 32" in saved


def test_loader_yields_uint8_squares(image_folder: Path, tmp_path: Path, tiny_config) -> None:
    trainer = Trainer(tiny_config(image_folder, tmp_path / "run", gpu_augment=True, gpu_load_size=40),
                      progress=False)
    trainer._build()
    images, _, _ = next(iter(trainer.loader))
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 40, 40)
    views, extras = trainer._to_device(images, 0, 0)
    assert [v.shape for v in views] == [(8, 3, 32, 32)] * 2 and extras == {}


def test_interrupted_and_resumed_gpu_augment_run_equals_uninterrupted(image_folder: Path, tmp_path: Path,
                                                                      tiny_config) -> None:
    small = dict(gpu_augment=True, max_images=16)  # 2 epochs of 2 steps
    full = Trainer(tiny_config(image_folder, tmp_path / "full", **small), progress=False).fit()
    cfg = tiny_config(image_folder, tmp_path / "cut", checkpoint_every_steps=3, **small)
    with pytest.raises(Interrupt):  # killed after step 4 of 4, resumed from the checkpoint of step 3 (mid-epoch 2)
        Trainer(cfg, on_step=stop_at(4), progress=False).fit()
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] == 3
    resumed = Trainer(cfg, resume=True, progress=False).fit()
    a, b = load_file(full / "backbone.safetensors"), load_file(resumed / "backbone.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    for x, y in zip(read_csv(full / "metrics.csv"), read_csv(resumed / "metrics.csv"), strict=True):
        assert float(x["loss"]) == pytest.approx(float(y["loss"]), abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the CPU device runs the same code")
def test_views_on_cuda_are_deterministic_and_stay_there() -> None:
    device = torch.device("cuda")
    views = ga.build_device_views("multicrop", 32)
    batch = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=gen()).to(device)
    a = views(batch, ga.step_generator(0, 0, 0, device))
    b = views(batch, ga.step_generator(0, 0, 0, device))
    assert all(v.device.type == "cuda" for v in a) and [v.shape[-1] for v in a] == [32, 32] + [16] * 6
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_runs_saved_before_the_option_existed_still_resume(image_folder: Path, tmp_path: Path, tiny_config) -> None:
    cfg = tiny_config(image_folder, tmp_path / "run", epochs=1, max_images=8)
    Trainer(cfg, progress=False).fit()
    saved = tmp_path / "run" / "config.yaml"
    saved.write_text("".join(line for line in saved.read_text().splitlines(keepends=True)
                             if not line.startswith("gpu_")))
    Trainer(cfg.replace(epochs=2), resume=True, progress=False).fit()
    assert [r["step"] for r in read_csv(tmp_path / "run" / "metrics.csv")] == ["1", "2"]
    with pytest.raises(ConfigError, match="gpu_augment was False"):
        Trainer(cfg.replace(epochs=3, gpu_augment=True), resume=True, progress=False)
