"""In process: the text fields' bounds (deep JSON, huge numbers and ids), the per-request pixel limit and the
per-worker pixel budget, anonymous error answers that show no field names or paths, terminal-safe `sslforge
search`, and the process manager's private control sockets."""
from __future__ import annotations

import io
import os
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pretrain.cli import main
from retrieval import Index, write_embeddings
from serve import circus
from serve.engine import BadInput, Engine, PixelBudget
from serve.fields import FieldError, parse_ids, parse_meta, parse_where
from serve.settings import Limits, Settings

DEEP = "[" * 100_000 + "]" * 100_000
DIGITS = "9" * 5000


@pytest.mark.parametrize(("where", "path_prefix"), [
    (DEEP, ""), ('{"label": ' + DIGITS + "}", ""), ('{"a": ' + "[" * 2000 + "]" * 2000 + "}", ""),
    ("", DEEP), ("", DIGITS), ('{"' + "k" * 2000 + '": "v"}', ""),
])
def test_where_and_path_prefix_are_bounded(where, path_prefix):
    with pytest.raises(FieldError) as e:
        parse_where(where, path_prefix)
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


@pytest.mark.parametrize("ids", [DEEP, DIGITS, "[" + DIGITS + "]", "99999999999999999999", "[99999999999999999999]",
                                 "[-1]", "1," + DIGITS])
def test_ids_are_row_ids(ids):
    with pytest.raises(FieldError) as e:
        parse_ids(ids)
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


@pytest.mark.parametrize("meta", [DEEP, '{"camera": ' + DIGITS + "}", "[" * 3000 + "{}" + "]" * 3000])
def test_meta_is_bounded(meta):
    with pytest.raises(FieldError):
        parse_meta(meta, ["a.png"])


def png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_request_over_its_pixels_is_refused_from_the_headers(served, tmp_path, monkeypatch):
    engine = Engine.load(Settings(model=str(served[0]), limits=Limits(max_request_pixels=3 * 400 * 400)))
    files = []
    for i in range(4):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(png(400))
    decoded = []
    monkeypatch.setattr("serve.engine.decode", lambda path, name: decoded.append(path) or Image.new("RGB", (9, 9)))
    with pytest.raises(BadInput, match="limit per request is 480,000") as e:
        engine.prepare(files)
    assert e.value.status == 413 and decoded == []  # nothing decoded
    assert engine.prepare(files[:3]).shape[0] == 3 and decoded == files[:3]


def test_a_request_holds_one_decoded_image_at_a_time(served, tmp_path, monkeypatch):
    engine = Engine.load(Settings(model=str(served[0])))
    files = []
    for i in range(5):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(png(64))
    alive, most = set(), [0]
    real_decode = __import__("serve.engine", fromlist=["decode"]).decode

    class Tracked:
        def __init__(self, path, name):
            self.image = real_decode(path, name)
            alive.add(id(self))
            most[0] = max(most[0], len(alive))

        def __getattr__(self, name):
            return getattr(self.image, name)

        def close(self):
            alive.discard(id(self))
            self.image.close()

    monkeypatch.setattr("serve.engine.decode", Tracked)
    monkeypatch.setattr(engine.embedder, "preprocess", lambda images: __import__("torch").zeros(
        len(images), 3, engine.embedder.preprocessing.crop, engine.embedder.preprocessing.crop))
    assert engine.prepare(files).shape[0] == 5 and most[0] == 1


def test_the_pixel_budget_bounds_concurrent_decodes():
    budget, held, most, lock = PixelBudget(100), [0], [0], threading.Lock()

    def work(pixels):
        with budget.hold(pixels):
            with lock:
                held[0] += min(pixels, 100)
                most[0] = max(most[0], held[0])
            time.sleep(0.02)
            with lock:
                held[0] -= min(pixels, 100)

    threads = [threading.Thread(target=work, args=(p,)) for p in (60, 60, 30, 500, 10, 90, 40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most[0] <= 100 and budget.free == 100 and not any(t.is_alive() for t in threads)


def test_anonymous_errors_name_no_fields_and_no_paths(served, tmp_path, monkeypatch):
    index = Index.load(served[1])
    index.meta = [{"secret_field": "x"} for _ in range(index.ntotal)]
    index.save(tmp_path / "index")
    engine = Engine.load(Settings(model=str(served[0]), index=str(tmp_path / "index")))
    feats = engine.features(engine.prepare(sorted(served[2].rglob("*.jpg"))[:1]))
    with pytest.raises(BadInput) as e:
        engine.search(feats, 3, engine.parse_where('{"nope\\udcff": "1"}'))
    message = str(e.value)
    assert "no field 'nope\\udcff'" in message and "secret_field" not in message
    message.encode("utf-8")
    monkeypatch.setattr(type(engine.embedder), "classes", property(lambda self: None))
    with pytest.raises(BadInput) as e:
        engine.require_head()
    assert str(served[0]) not in str(e.value) and "/" not in str(e.value).split(":")[0]


def test_sslforge_search_escapes_stored_strings(tmp_path, capsys):
    x = np.eye(4, dtype=np.float32)
    Index.build(x, ["a\x1b[2J.jpg", "b\udcff.jpg", "c.jpg", "d.jpg"], ["\x1b[31mRED", "ok", "ok", "\x00nul"],
                model_fingerprint="m", progress=False).save(tmp_path / "idx")
    emb = write_embeddings(tmp_path / "emb", x, ["q\x1b.jpg"] * 4, [None] * 4, model_fingerprint="m")
    assert main(["search", "--index", str(tmp_path / "idx"), "--query-embeddings", str(emb), "-k", "4"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x00" not in out and "\\x1b[31mRED" in out and "a\\x1b[2J.jpg" in out
    assert "b\\udcff.jpg" in out and "\\x00nul" in out
    out.encode("utf-8")


def test_the_arbiter_binds_private_unix_sockets():
    from bentoml._internal.utils.circus import create_standalone_arbiter

    assert circus.lock_down() and circus.lock_down()  # idempotent
    arbiter = create_standalone_arbiter([])
    try:
        assert arbiter.endpoint.startswith("ipc://") and arbiter.pubsub_endpoint.startswith("ipc://")
        folder = Path(arbiter.endpoint[len("ipc://"):]).parent
        assert folder.name.startswith(circus.PREFIX) and stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert folder.stat().st_uid == os.getuid() and arbiter.multicast_endpoint is None
    finally:
        arbiter.exit_stack.__enter__()
        arbiter.exit_stack.__exit__(None, None, None)
    assert not folder.exists()
