"""The shared image loader and the inference preprocessing on hostile or unusual images."""
from pathlib import Path

import pytest
from PIL import Image

from pretrain.data import DECODE_ERRORS, ImageList, load_rgb
from pretrain.datasets import EvalDataset
from pretrain.preprocess import Preprocessing


def test_decompression_bomb_is_a_decode_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 > 2 x 1000: PIL refuses it as a bomb
    with pytest.raises(DECODE_ERRORS):
        load_rgb(tmp_path / "bomb.png")
    x, _, ok = EvalDataset(ImageList(tmp_path, [tmp_path / "bomb.png"], None, None), Preprocessing(8, 8))[0]
    assert not ok and x.shape == (3, 8, 8)
