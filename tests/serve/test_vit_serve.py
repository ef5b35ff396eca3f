"""A ViT trained by MAE is served like any backbone: `bentoml serve` of its model dir (no index) answers /embed
with the encoder's embeddings, as export's Embedder gives them in-process."""
from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_helpers import serve
from shared_helpers import make_tiny_config, write_image_folder

from export.embedder import Embedder
from pretrain.train.trainer import Trainer


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a tiny MAE ViT's model dir, its images)."""
    root = tmp_path_factory.mktemp("mae-serve")
    images = write_image_folder(root / "images")
    cfg = make_tiny_config(images, root / "mae", method="mae", backbone="test_vit", epochs=1, optimizer="adamw",
                           lr=1e-3, backbone_args={"img_size": 32, "patch_size": 8},
                           method_args={"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2})
    return Trainer(cfg, progress=False).fit(), images


@pytest.fixture(scope="module")
def mae_server(mae_run, tmp_path_factory):
    yield from serve(tmp_path_factory, {"SSLFORGE_MODEL": str(mae_run[0])})


def test_embed_over_http_is_the_mae_encoders_embedding(mae_server, mae_run) -> None:
    run, images = mae_run
    files = sorted(images.rglob("*.jpg"))[:4]
    reference = Embedder.load(run).embed(files)
    with httpx.Client(base_url=mae_server.url, timeout=60) as client:
        r = client.post("/embed", files=[("images", (f.name, f.read_bytes(), "image/jpeg")) for f in files])
        assert r.status_code == 200, r.text
        vectors = np.array(r.json()["embeddings"])
        assert vectors.shape == reference.shape and r.json()["dim"] == reference.shape[1]
        np.testing.assert_allclose(vectors, reference, atol=1e-5)
        r = client.post("/search", files=[("image", (files[0].name, files[0].read_bytes(), "image/jpeg"))])
        assert r.status_code == 404 and "no index" in r.text  # none served: a clear refusal, the server stays up
        assert client.post("/embed", files=[("images", (files[0].name, files[0].read_bytes(), "image/jpeg"))]
                           ).status_code == 200
