"""The Gradio demo: its answers in-process, then the real page in headless Chromium (upload -> k results)."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from serve_helpers import free_port, make_model_dir

from pretrain.cli import main
from serve.browser import search_in_browser
from serve.demo import answer, example_images, launch
from serve.engine import Engine
from serve.settings import Settings


@pytest.fixture(scope="module")
def engine(served) -> Engine:
    return Engine.load(Settings(model=str(served[0]), index=str(served[1])))


def test_answer_is_the_engines_search_with_files_to_show(engine, served):
    query = sorted(served[2].rglob("*.jpg"))[5]
    gallery, probs = answer(engine, str(query), 4)
    hits = engine.search(engine.features(engine.prepare([query])), 4)[0]
    assert [Path(f) for f, _ in gallery] == [served[2] / h["path"] for h in hits]
    assert all(Path(f).is_file() for f, _ in gallery)
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
