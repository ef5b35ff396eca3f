"""The Gradio demo: its answers in-process, the real page in headless Chromium (upload -> k results), and the real
server's file route, which serves indexed images only, whatever the index says."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_helpers import free_port, make_model_dir, png_bytes

from pretrain.cli import main
from retrieval import Index
from serve.demo import answer, example_images, launch
from serve.engine import Engine
from serve.settings import Limits, Settings
from tools.browser import search_in_browser


@pytest.fixture(scope="module")
def engine(served) -> Engine:
    return Engine.load(Settings(model=str(served[0]), index=str(served[1])))


@pytest.fixture(params=["dir", "pg"])
def any_engine(request, engine, served, pg_url):
    """The module's engine (an index dir), and one on a copy of its index in PostgreSQL."""
    if request.param == "dir":
        yield engine
        return
    from pretrain.cli import main

    url = pg_url()
    assert main(["index", "copy", str(served[1]), url, "--quiet"]) == 0
    on_pg = Engine.load(Settings(model=str(served[0]), index=url))
    yield on_pg
    on_pg.close()


def test_answer_is_the_engines_search_with_images_to_show(any_engine, served):
    engine = any_engine
    query = sorted(served[2].rglob("*.jpg"))[5]
    gallery, probs = answer(engine, str(query), 4)
    hits = engine.search(engine.features(engine.prepare([query])), 4)[0]
    assert len(gallery) == len(hits) == 4
    for (shown, _), hit in zip(gallery, hits):
        np.testing.assert_array_equal(np.asarray(shown), np.asarray(Image.open(served[2] / hit["path"]).convert("RGB")))
    assert gallery[0][1] == f"{query.parent.name} · 1.000"
    assert set(probs) == set(engine.embedder.classes) and sum(probs.values()) == pytest.approx(1, abs=1e-5)
    assert answer(engine, None, 4) == ([], None)
    assert len(example_images(engine)) == 4


def test_demo_in_a_real_browser(engine, served, tmp_path):
    """Upload an image on the page; the gallery shows k images, the query itself first; screenshot saved."""
    port = free_port()
    demo = launch(engine, port=port, k=8, block=False)
    try:
        query = sorted(served[2].rglob("*.jpg"))[9]
        shot = tmp_path / "demo.png"
        page = search_in_browser(f"http://127.0.0.1:{port}/", query, k=5, screenshot=shot)
    finally:
        demo.close()
    assert page["images"] == 5 and len(page["captions"]) == 5
    assert page["captions"][0] == f"{query.parent.name} · 1.000"
    assert all(c in page["probe"] for c in engine.embedder.classes)
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.width == 1280


def test_sslforge_demo_refuses_an_index_of_another_model(served, tmp_path, capsys):
    other = make_model_dir(tmp_path / "other", seed=1)
    assert main(["demo", "--model", str(other.path), "--index", str(served[1])]) == 2
    err = capsys.readouterr().err
    assert "holds vectors of model" in err and len(err.strip().splitlines()) == 1


def hostile_index(served, tmp_path: Path, root: str | None) -> tuple[Path, list[Path]]:
    """The served images copied to tmp_path/images, with files the demo must never serve next to them (secrets, an
    image nobody indexed, a link out of the folder), and an index of the copy whose first rows name a path out of
    the root, an absolute path, that link and /etc/passwd; index.json's root is `root` (default: the copy).
    Returns the index dir and the files the demo may show (indexed, inside the root, images)."""
    images = tmp_path / "images"
    shutil.copytree(served[2], images)
    (tmp_path / "outside.png").write_bytes(png_bytes(32, seed=3))
    for name, data in [("secret.txt", b"password=hunter2"), (".env", b"TOKEN=abc"), ("extra.png", png_bytes(32, 4))]:
        (images / name).write_bytes(data)
    (images / "class_0" / "link.jpg").symlink_to(tmp_path / "outside.png")
    index = Index.load(served[1])
    index.paths[:4] = ["../outside.png", str(tmp_path / "outside.png"), "class_0/link.jpg", "etc/passwd"]
    index.info["root"] = root or str(images)
    index.save(tmp_path / "index")
    return tmp_path / "index", [images / p for p in index.paths[4:]] if root is None else []


@pytest.mark.parametrize("root", [None, "/"], ids=["root-is-the-images", "root-is-slash"])
def test_the_demo_serves_indexed_images_only(served, tmp_path, root):
    """Search for everything through the real demo: the gallery holds exactly the showable indexed images (decoded
    and re-encoded), and the file route refuses every other file: secrets, unindexed images, the indexed files by
    their own path, /etc/passwd, whatever index.json's root says."""
    from gradio_client import Client, handle_file

    index_dir, showable = hostile_index(served, tmp_path, root)
    engine = Engine.load(Settings(model=str(served[0]), index=str(index_dir), limits=Limits(max_bytes=100_000)))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    demo = launch(engine, port=port, k=8, block=False)
    try:
        client = Client(url, verbose=False, download_files=False)
        query = sorted(served[2].rglob("*.jpg"))[0]
        gallery, _ = client.predict(handle_file(str(query)), len(engine.index), api_name="/run")
        shown = []
        for item in gallery:
            r = httpx.get(item["image"]["url"] if "://" in item["image"]["url"] else url + item["image"]["url"])
            assert r.status_code == 200
            shown.append(np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")))
        expected = [np.asarray(Image.open(f).convert("RGB")) for f in showable]
        assert len(shown) == len(expected)
        for pixels in expected:
            assert any(p.shape == pixels.shape and np.array_equal(p, pixels) for p in shown)
        probes = [p for p in tmp_path.rglob("*") if p.is_file()] + [Path("/etc/passwd")]
        for path in probes:
            r = httpx.get(f"{url}/gradio_api/file={path}")
            assert r.status_code in (403, 404), f"{path} was served ({r.status_code})"
        r = httpx.get(f"{url}/gradio_api/file=http://93.184.215.14/x.png")  # Gradio would fetch and relay it
        assert r.status_code == 403 and "fetches no URL" in r.json()["error"]
        big = {"files": ("big.png", png_bytes(32) + b"\0" * 100_000, "image/png")}
        assert httpx.post(f"{url}/gradio_api/upload", files=big).status_code == 413  # over the byte limit
    finally:
        demo.close()
