"""The shared image loader and the inference preprocessing on hostile or unusual images: EXIF orientation,
decompression bombs, thin images (bounded work)."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pretrain.data import DECODE_ERRORS, ImageList, load_rgb
from pretrain.datasets import EvalDataset
from pretrain.preprocess import Preprocessing


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
