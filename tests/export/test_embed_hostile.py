"""`sslforge embed` on folders a careless user or an attacker hands it: decompression bombs, file names
that are not UTF-8."""
from pathlib import Path

import pytest
from shared_helpers import header_only_png

from export.embed import embed_images
from export.embedder import Embedder


@pytest.fixture(scope="module")
def embedder(resnet_dir) -> Embedder:
    return Embedder.load(resnet_dir.path, "torch")


@pytest.mark.parametrize("workers", [0, 1])
def test_decompression_bomb_is_skipped_and_listed(embedder: Embedder, image_folder: Path, tmp_path: Path,
                                                  workers: int) -> None:
    header_only_png(image_folder / "class_1" / "bomb.png", 30_000, 30_000)  # 900 M pixels in ~100 bytes
    out = tmp_path / "emb"
    manifest = embed_images(embedder, image_folder, out, batch_size=8, workers=workers, progress=False)
    assert (manifest["count"], manifest["failed"], manifest["complete"]) == (24, 1, True)
    path, reason = (out / "failed.txt").read_text().splitlines()[0].split("\t")
    assert path == "class_1/bomb.png" and "DecompressionBombError" in reason
    again = embed_images(embedder, image_folder, out, batch_size=8, workers=workers, progress=False)
    assert again["count"] == 24 and again["throughput"]["images"] == 0  # the rerun finds a finished job
