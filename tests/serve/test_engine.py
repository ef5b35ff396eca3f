"""The serving core in-process: upload checks, embeddings / probe / search against export's and retrieval's own
answers, and the startup checks (missing model, index of another model)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from serve_helpers import make_model_dir, png_bytes, png_header

from export.embedder import Embedder
from retrieval import Index
from serve.engine import BadInput, Engine, NoHead, read_image
from serve.settings import Limits, Settings, SettingsError, from_env


@pytest.fixture(scope="module")
def engine(served) -> Engine:
    model, index, _ = served
    return Engine.load(Settings(model=str(model), index=str(index)))


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("data", "status", "words"), [
    (b"", 400, "empty"),
    (b"not an image at all", 415, "not an image"),
    (png_bytes(64)[:120], 400, "truncated"),
    (png_header(5000, 5000), 413, "pixels is over the limit"),
    (png_header(30000, 30000), 413, "decompression bomb"),  # PIL refuses it while reading the header
])
def test_bad_uploads_are_refused_with_a_reason(tmp_path, data, status, words):
    with pytest.raises(BadInput, match=words) as e:
        read_image(write(tmp_path, "upload", data), Limits(max_pixels=1_000_000))
    assert e.value.status == status and "\n" not in str(e.value)


def test_upload_over_the_byte_limit(tmp_path):
    data = png_bytes(64)
    with pytest.raises(BadInput, match="bytes is over the limit") as e:
        read_image(write(tmp_path, "big.png", data), Limits(max_bytes=len(data) - 1))
    assert e.value.status == 413
    assert read_image(write(tmp_path, "ok.png", data), Limits(max_bytes=len(data))).size == (64, 64)


def test_answers_match_export_and_retrieval(engine, served):
    model, index_dir, images = served
    files = sorted(images.rglob("*.jpg"))[:5]
    feats = engine.features(engine.prepare(files))
    reference = Embedder.load(model)
    np.testing.assert_allclose(engine.embeddings(feats), reference.embed(files), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(engine.embeddings(feats), axis=1), 1, atol=1e-5)

    probs = reference.predict(files)
    top = engine.classify(feats, k=2)
    for row, answer in zip(probs, top):
        order = np.argsort(-row)[:2]
        assert [a["label"] for a in answer] == [reference.classes[j] for j in order]
        np.testing.assert_allclose([a["probability"] for a in answer], row[order], atol=1e-5)

    hits = engine.search(feats, k=3)
    scores, ids, _ = Index.load(index_dir).search(reference.embed(files), 3)
    for f, answer, srow, irow in zip(files, hits, scores, ids):
        assert answer[0]["path"] == f.relative_to(images).as_posix()
        assert answer[0]["score"] == pytest.approx(1, abs=1e-5)
        assert [a["id"] for a in answer] == irow.tolist()
        np.testing.assert_allclose([a["score"] for a in answer], srow, atol=1e-5)
    assert engine.image_root == images


def test_k_and_request_limits(engine, served):
    one = engine.features(engine.prepare([sorted(served[2].rglob("*.jpg"))[0]]))
    for k in (0, -1, engine.limits.max_k + 1):
        with pytest.raises(BadInput, match="k must be between") as e:
            engine.search(one, k)
        assert e.value.status == 422
    assert len(engine.search(one, 50)[0]) == len(engine.index)  # k above the index size: all of it
    with pytest.raises(BadInput, match="no image"):
        engine.prepare([])
    with pytest.raises(BadInput, match="the limit is 64"):
        engine.prepare([served[2]] * 65)


def test_a_model_without_head_or_index(tmp_path, served):
    model = make_model_dir(tmp_path / "nohead")
    engine = Engine.load(Settings(model=str(model.path)))
    feats = engine.features(engine.prepare(sorted(served[2].rglob("*.jpg"))[:1]))
    with pytest.raises(NoHead, match="no linear-probe head") as e:
        engine.classify(feats)
    assert e.value.status == 404
    with pytest.raises(BadInput, match="no index") as e:
        engine.search(feats)
    assert e.value.status == 404


def test_startup_refuses_missing_or_mismatched_inputs(tmp_path, served):
    model, index, _ = served
    with pytest.raises(SettingsError, match="model dir .*nowhere"):
        Engine.load(Settings(model=str(tmp_path / "nowhere")))
    with pytest.raises(SettingsError, match="index .*missing"):
        Engine.load(Settings(model=str(model), index=str(tmp_path / "missing")))
    other = make_model_dir(tmp_path / "other", seed=1)  # same architecture, other weights
    with pytest.raises(SettingsError, match="holds vectors of model"):
        Engine.load(Settings(model=str(other.path), index=str(index)))
    with pytest.raises(SettingsError, match="model.onnx"):
        Engine.load(Settings(model=str(model), backend="onnx"))


def test_settings_from_env_round_trip():
    s = Settings(model="/m", index="/i", backend="onnx", batching=False, max_batch_size=8, max_latency_ms=50,
                 limits=Limits(max_bytes=10, max_pixels=20, max_images=3, max_k=4))
    assert from_env(s.env()) == s
    with pytest.raises(SettingsError, match="SSLFORGE_MODEL is not set"):
        from_env({})
    with pytest.raises(SettingsError, match="SSLFORGE_MAX_K='x' is not an integer"):
        from_env({"SSLFORGE_MODEL": "m", "SSLFORGE_MAX_K": "x"})
    with pytest.raises(SettingsError, match="SSLFORGE_MAX_BATCH_SIZE=1 must be >= 2"):
        from_env({"SSLFORGE_MODEL": "m", "SSLFORGE_MAX_BATCH_SIZE": "1"})
    assert from_env({"SSLFORGE_MODEL": "m"}).batching


def test_settings_never_show_a_database_password_or_the_write_token():
    settings = Settings(model="m", index="postgresql://ann:s3cret@db:5432/x?table=t&password=other",
                        write_token="tok3n")
    shown = repr(settings)
    assert "s3cret" not in shown and "other" not in shown and "tok3n" not in shown
    assert "postgresql://ann:***@db:5432/x?table=t&password=***" in shown and "model='m'" in shown
