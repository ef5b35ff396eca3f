"""The BentoML service as a user runs it: `bentoml serve` from the project root on a free loopback port.

One server for the session (conftest's live_server: its startup is the cost). Every endpoint is checked over HTTP
against export's and retrieval's in-process answers; every kind of bad input gets a 4xx with a one-line
reason and the server keeps answering; 32 concurrent clients x 20 requests finish without an error.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_helpers import MAX_BYTES, free_port, make_model_dir, png_bytes, png_header

from export.embedder import Embedder


@pytest.fixture(scope="module")
def server(live_server):
    with httpx.Client(base_url=live_server.url, timeout=60) as client:
        yield client


def upload(path: Path, field: str = "image") -> tuple[str, tuple[str, bytes, str]]:
    return field, (path.name, path.read_bytes(), "application/octet-stream")


def jpgs(served) -> list[Path]:
    return sorted(served[2].rglob("*.jpg"))


def test_health_readiness_metrics(server):
    for route in ("/livez", "/readyz", "/metrics"):
        assert server.get(route).status_code == 200, route
    assert "bentoml_service_request_total" in server.get("/metrics").text


def test_embed_one_or_many(server, served):
    files = jpgs(served)[:3]
    reference = Embedder.load(served[0]).embed(files)
    r = server.post("/embed", files=[upload(f, "images") for f in files])
    assert r.status_code == 200, r.text
    vectors = np.array(r.json()["embeddings"])
    assert vectors.shape == reference.shape and r.json()["dim"] == reference.shape[1]
    np.testing.assert_allclose(vectors, reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    one = server.post("/embed", files=[upload(files[1], "images")]).json()["embeddings"]
    np.testing.assert_allclose(one, reference[1:2], atol=1e-5)


def test_classify(server, served):
    f = jpgs(served)[4]
    emb = Embedder.load(served[0])
    probs = emb.predict([f])[0]
    r = server.post("/classify", files=[upload(f)], data={"k": "2"})
    assert r.status_code == 200, r.text
    answer = r.json()["predictions"]
    order = np.argsort(-probs)[:2]
    assert [a["label"] for a in answer] == [emb.classes[j] for j in order]
    np.testing.assert_allclose([a["probability"] for a in answer], probs[order], atol=1e-5)


def test_search(server, served):
    model, index, images = served
    f = jpgs(served)[7]
    r = server.post("/search", files=[upload(f)], data={"k": "4"})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert len(hits) == 4 and hits[0]["path"] == f.relative_to(images).as_posix()
    assert hits[0]["label"] == f.parent.name and hits[0]["score"] == pytest.approx(1, abs=1e-5)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


BAD = {
    "not an image": ({"files": [("image", ("a.jpg", b"hello, not an image", "image/jpeg"))]}, 415),
    "truncated": ({"files": [("image", ("t.png", png_bytes(64)[:150], "image/png"))]}, 400),
    "empty file": ({"files": [("image", ("e.jpg", b"", "image/jpeg"))]}, 400),
    "no body": ({}, 400),
    "json instead of a file": ({"json": {"image": "x.jpg"}}, 400),
    "too many pixels": ({"files": [("image", ("p.png", png_header(8000, 8000), "image/png"))]}, 413),
    "decompression bomb": ({"files": [("image", ("b.png", png_header(30000, 30000), "image/png"))]}, 413),
    "too many bytes": ({"files": [("image", ("big.png", png_bytes(400), "image/png"))]}, 413),
    "k = 0": ({"data": {"k": "0"}}, 422),
    "k too large": ({"data": {"k": "1000"}}, 422),
    "k not a number": ({"data": {"k": "three"}}, 400),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("route", ["/search", "/classify"])
def test_bad_input_gets_a_4xx_and_the_server_keeps_serving(server, served, route, case):
    kwargs, status = BAD[case]
    if "data" in kwargs:
        kwargs = {**kwargs, "files": [upload(jpgs(served)[0])]}
    assert len(png_bytes(400)) > MAX_BYTES
    r = server.post(route, **kwargs)
    assert r.status_code == status, r.text
    assert "\n" not in r.text and r.json()["error"]
    assert server.post(route, files=[upload(jpgs(served)[1])]).status_code == 200


def test_one_bad_image_among_many_is_named(server, served):
    files = [upload(jpgs(served)[0], "images"), ("images", ("x.jpg", b"garbage", "image/jpeg"))]
    r = server.post("/embed", files=files)
    assert r.status_code == 415 and "image 1: not an image" in r.text
    assert server.post("/features", json={"batch": [[1.0, 2.0]]}).status_code == 404  # the encoder is internal


def test_concurrent_clients(server, served):
    """32 clients x 20 searches at once on loopback: no error, and adaptive batching joined requests."""
    files = [f.read_bytes() for f in jpgs(served)]

    async def client(i: int, http: httpx.AsyncClient) -> list[int | str]:
        codes: list[int | str] = []
        for j in range(20):
            try:
                r = await http.post("/search", data={"k": "3"},
                                    files={"image": ("q.jpg", files[(i + j) % len(files)], "image/jpeg")})
            except httpx.HTTPError as e:
                codes.append(f"{type(e).__name__}: {e}")
                continue
            codes.append(r.status_code if r.status_code != 200 or len(r.json()["results"]) == 3 else "not 3 hits")
        return codes

    async def main() -> list[int | str]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=str(server.base_url), timeout=120, limits=limits) as http:
            return [c for codes in await asyncio.gather(*(client(i, http) for i in range(32))) for c in codes]

    codes = asyncio.run(main())
    assert len(codes) == 640 and Counter(codes) == {200: 640}, Counter(codes)
    metrics = server.get("/metrics").text
    count = _metric(metrics, "bentoml_service_adaptive_batch_size_count")
    total = _metric(metrics, "bentoml_service_adaptive_batch_size_sum")
    assert count >= 1 and total / count > 1, "no request was batched with another"


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_sslforge_serve_fails_fast_on_an_index_of_another_model(served, tmp_path):
    other = make_model_dir(tmp_path / "other", seed=1)
    cmd = [str(Path(sys.executable).parent / "sslforge"), "serve", "--model", str(other.path),
           "--index", str(served[1]), "--port", str(free_port())]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=os.environ, cwd=tmp_path)
    assert out.returncode != 0
    assert "holds vectors of model" in out.stderr and "Traceback" not in out.stderr
