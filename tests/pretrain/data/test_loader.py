"""The shared image loader and the inference preprocessing on hostile or unusual images: EXIF orientation,
decompression bombs, thin images (bounded work)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.data.datasets import EvalDataset
from pretrain.data.images import DECODE_ERRORS, ImageList, load_rgb
from pretrain.ground.preprocess import Preprocessing


def oriented_jpeg(path: Path, orientation: int) -> Image.Image:
    """A 40x20 image, red on the left half, stored with an EXIF orientation tag; returns the upright image."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    stored = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, exif=exif, quality=95)
    return stored


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation_is_applied_once_by_the_loader(tmp_path: Path, orientation: int) -> None:
    stored = oriented_jpeg(tmp_path / "phone.jpg", orientation)
    image = load_rgb(tmp_path / "phone.jpg")
    # the camera's tag says how to turn the stored pixels upright: 6 = 90 deg clockwise, 8 = counter, 3 = 180
    turn = {6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90, 3: Image.Transpose.ROTATE_180}[orientation]
    expected = np.asarray(stored.transpose(turn), dtype=int)
    assert image.size == expected.shape[1::-1]
    assert np.abs(np.asarray(image, dtype=int) - expected).mean() < 4  # JPEG noise only
    # every stage reads through the loader: the evaluation dataset sees the upright image too
    x, _, ok = EvalDataset(ImageList(tmp_path, [tmp_path / "phone.jpg"], None, None), Preprocessing(20, 20))[0]
    assert ok and x.shape == (3, 20, 20)


def test_image_without_orientation_is_unchanged(tmp_path: Path) -> None:
    Image.new("RGB", (7, 3), (1, 2, 3)).save(tmp_path / "plain.png")
    image = load_rgb(tmp_path / "plain.png")
    assert image.size == (7, 3) and image.getpixel((6, 2)) == (1, 2, 3)


def test_decompression_bomb_is_a_decode_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 > 2 x 1000: PIL refuses it as a bomb
    with pytest.raises(DECODE_ERRORS):
        load_rgb(tmp_path / "bomb.png")
    x, _, ok = EvalDataset(ImageList(tmp_path, [tmp_path / "bomb.png"], None, None), Preprocessing(8, 8))[0]
    assert not ok and x.shape == (3, 8, 8)


def test_corrupt_exif_keeps_the_pixels_as_stored(tmp_path: Path) -> None:
    Image.new("RGB", (9, 4), (5, 6, 7)).save(tmp_path / "odd.jpg", exif=b"Exif\x00\x00MM\x00*\x00\x00\xff\xff\xff")
    assert load_rgb(tmp_path / "odd.jpg").size == (9, 4)


def record_resizes(monkeypatch: pytest.MonkeyPatch, limit: int) -> list[tuple[int, int]]:
    """Record every PIL resize and the GPU-augment loader's torch resizes; fail at once (before allocating)
    when one would make more than `limit` pixels."""
    from pretrain.views import gpu as gpu_augment

    sizes: list[tuple[int, int]] = []
    pil_resize, functional = Image.Image.resize, gpu_augment.F

    def check(width: int, height: int) -> None:
        sizes.append((width, height))
        assert width * height <= limit, f"a resize to {width}x{height} pixels"

    def spy_pil(self, size, *args, **kwargs):
        check(*size)
        return pil_resize(self, size, *args, **kwargs)

    class SpyTorch:
        def __getattr__(self, name):
            return getattr(functional, name)

        @staticmethod
        def resize(x, size, *args, **kwargs):
            h, w = x.shape[-2:]
            short = size if isinstance(size, int) else size[0]
            check(short * max(h, w) // min(h, w), short)
            return functional.resize(x, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy_pil)
    monkeypatch.setattr(gpu_augment, "F", SpyTorch())
    return sizes


@pytest.mark.parametrize("shape", [(20_000, 1), (3, 9_000)])
def test_thin_image_preprocessing_is_bounded_by_the_output_size(monkeypatch: pytest.MonkeyPatch,
                                                                shape: tuple[int, int]) -> None:
    image = Image.new("RGB", shape, (200, 100, 50))  # resized whole to a short side of 256: 5 G pixels
    pre = Preprocessing.for_size(224)
    sizes = record_resizes(monkeypatch, limit=4 * pre.resize ** 2)
    x = pre(image)
    assert sizes and x.shape == (3, 224, 224)
    expected = (torch.tensor([200, 100, 50]) / 255 - torch.tensor(pre.mean)) / torch.tensor(pre.std)
    torch.testing.assert_close(x.mean(dim=(1, 2)), expected, atol=0.02, rtol=0)


def test_gpu_augment_loader_bounds_thin_images(monkeypatch: pytest.MonkeyPatch) -> None:
    from pretrain.views.gpu import LoadSquare

    sizes = record_resizes(monkeypatch, limit=4 * 64 ** 2)
    square = LoadSquare(64)(Image.new("RGB", (1, 30_000), (9, 9, 9)))
    assert sizes and square.shape == (3, 64, 64) and int(square.float().mean().round()) == 9


def test_ordinary_images_are_preprocessed_exactly_as_before() -> None:
    from torchvision.transforms import v2

    rng = np.random.default_rng(0)
    for shape, size in [((300, 200), 224), ((40, 90), 32), ((100, 399), 64), ((5, 20), 96)]:
        image = Image.fromarray(rng.integers(0, 256, (shape[1], shape[0], 3), dtype=np.uint8))
        pre = Preprocessing.for_size(size)
        whole = v2.Compose([v2.Resize(pre.resize, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                            v2.CenterCrop(pre.crop), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(pre.mean, pre.std)])
        assert torch.equal(pre(image), whole(image)), shape
