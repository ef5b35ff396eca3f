"""A live collection over HTTP: a real `bentoml serve` with the write token; /add, /remove, filtered /search,
/duplicates; a kill -9 in the middle of the adds loses no acknowledged row."""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_helpers import SERVER_ENV, TOKEN, free_port, png_bytes

from export.embedder import Embedder
from retrieval import Index
from retrieval.filters import Filter
from tools.process import crash, start_bentoml, wait_ready

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def start(model: Path, index: Path, log: Path, token: str | None = TOKEN) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {"SSLFORGE_MODEL": str(model), "SSLFORGE_INDEX": str(index), **SERVER_ENV}
    if token:
        env["SSLFORGE_WRITE_TOKEN"] = token
    proc = start_bentoml(env, port, ROOT, log)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, log)
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        crash(proc)


@pytest.fixture(scope="module")
def writable(served, writable_server):
    """(client, model dir, index dir): the session's writable server (conftest), writes allowed with TOKEN."""
    server, index = writable_server
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client, served[0], index


def images(n: int, seed: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (f"new-{seed}-{i}.png", png_bytes(seed=seed * 100 + i), "image/png")) for i in range(n)]


def test_writes_need_the_token(writable):
    client, _, index = writable
    before = Index.load(index).ntotal
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
        r = client.post("/add", files=images(1, 0), headers=headers)
        assert r.status_code == 403 and "write token" in r.json()["error"]
        r = client.post("/remove", files={"ids": (None, "0")}, headers=headers)
        assert r.status_code == 403
    assert Index.load(index).ntotal == before and not len(Index.load(index).removed)


def test_a_service_without_a_token_is_read_only(live_server):
    r = httpx.post(f"{live_server.url}/add", files=images(1, 0), headers=AUTH, timeout=60)
    assert r.status_code == 403 and "read-only" in r.json()["error"]


def test_added_images_are_found_with_their_fields(writable):
    client, model, index = writable
    first = Index.load(index).ntotal
    meta = [{"camera": "x", "label": "new"}, {"camera": "y"}, {"camera": "x", "path": "shop/item.png"}]
    r = client.post("/add", files=images(3, 1), data={"meta": json.dumps(meta)}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["ids"] == [first, first + 1, first + 2]
    rows = Index.load(index)  # durable: on disk when the answer came
    assert rows.paths[first:] == ["new-1-0.png", "new-1-1.png", "shop/item.png"]
    assert rows.labels[first:] == ["new", None, None] and rows.meta[first + 1] == {"camera": "y"}
    query = images(1, 1)[0][1]
    hits = client.post("/search", files={"image": query}, data={"k": "3"}).json()["results"]
    assert hits[0]["id"] == first and hits[0]["score"] > 0.999 and hits[0]["camera"] == "x"
    expected = Embedder.load(model).embed([rows_file(query, index)])
    _, ids, _ = rows.search(expected, 5, where=Filter({"camera": "x"}))
    hits = client.post("/search", files={"image": query}, data={"k": "5", "where": '{"camera": "x"}'}).json()
    assert [h["id"] for h in hits["results"]] == [i for i in ids[0] if i >= 0] == [first, first + 2]
    hits = client.post("/search", files={"image": query}, data={"k": "5", "path_prefix": "shop/"}).json()
    assert [h["id"] for h in hits["results"]] == [first + 2]
    r = client.post("/search", files={"image": query}, data={"where": '{"nope": "1"}'})
    assert r.status_code == 400 and "no field 'nope'" in r.json()["error"]


def rows_file(upload: tuple[str, bytes, str], folder: Path) -> Path:
    file = folder.parent / upload[0]
    file.write_bytes(upload[1])
    return file


def test_filters_match_brute_force_over_http(writable, served):
    client, model, index = writable
    query = sorted(served[2].rglob("*.jpg"))[0]
    rows = Index.load(index)
    q = Embedder.load(model).embed([query])[0]
    for where, keep in (('{"label": "class_1"}', lambda i: rows.labels[i] == "class_1"),
                        ('{"label": "class_2"}', lambda i: rows.labels[i] == "class_2")):
        live = [i for i in range(rows.ntotal) if keep(i) and i not in set(rows.removed.tolist())]
        truth = sorted(live, key=lambda i: -float(rows.vectors[i] @ q))[:3]
        r = client.post("/search", files={"image": (query.name, query.read_bytes(), "image/jpeg")},
                        data={"k": "3", "where": where}).json()["results"]
        assert [h["id"] for h in r] == truth


def test_remove_then_search_no_longer_returns_it(writable):
    client, _, index = writable
    r = client.post("/add", files=images(1, 2), headers=AUTH).json()
    new = r["ids"][0]
    query = {"image": images(1, 2)[0][1]}
    assert client.post("/search", files=query, data={"k": "1"}).json()["results"][0]["id"] == new
    r = client.post("/remove", files={"ids": (None, f"{new}")}, headers=AUTH)
    assert r.status_code == 200 and r.json()["removed"] == 1
    assert new in Index.load(index).removed
    assert new not in [h["id"] for h in client.post("/search", files=query, data={"k": "10"}).json()["results"]]
    assert client.post("/remove", files={"ids": (None, "[999999]")}, headers=AUTH).status_code == 404
    assert client.post("/remove", files={"ids": (None, "three")}, headers=AUTH).status_code == 400
    r = client.post("/add", files=images(2, 3), data={"meta": "[{}]"}, headers=AUTH)
    assert r.status_code == 400 and "list of 2 objects" in r.json()["error"]


def test_an_idempotency_key_answers_a_retry_with_the_first_answer(writable):
    client, _, index = writable
    key = {**AUTH, "Idempotency-Key": "0b6f3c1e-retry"}
    first = client.post("/add", files=images(2, 7), data={"meta": '{"camera": "k"}'}, headers=key)
    assert first.status_code == 200, first.text
    count = Index.load(index).ntotal
    again = client.post("/add", files=images(2, 7), data={"meta": '{"camera": "k"}'}, headers=key)
    assert again.status_code == 200 and again.json()["ids"] == first.json()["ids"]
    assert Index.load(index).ntotal == count  # nothing added twice
    other = client.post("/add", files=images(1, 8), headers=key)
    assert other.status_code == 422 and "another add" in other.json()["error"]
    for bad in ("k" * 300, "cl\xc3\xa9".encode("latin-1")):  # too long; not ASCII
        r = client.post("/add", files=images(1, 8), headers={**AUTH, "Idempotency-Key": bad})
        assert r.status_code == 400 and "Idempotency-Key" in r.json()["error"]
    assert Index.load(index).ntotal == count


def test_duplicates_of_an_indexed_image(writable, served):
    client, _, _ = writable
    image = sorted(served[2].rglob("*.jpg"))[5]
    upload = {"image": (image.name, image.read_bytes(), "image/jpeg")}
    r = client.post("/duplicates", files=upload, data={"threshold": "0.999"}).json()
    assert r["duplicates"] and r["duplicates"][0]["path"] == image.relative_to(served[2]).as_posix()
    assert all(h["score"] >= 0.999 for h in r["duplicates"])
    loose = client.post("/duplicates", files=upload, data={"threshold": "0.5"}).json()["duplicates"]
    assert len(loose) >= len(r["duplicates"]) and all(h["score"] >= 0.5 for h in loose)
    assert client.post("/duplicates", files=upload, data={"threshold": "1.5"}).status_code == 422


def test_kill_9_in_the_middle_of_the_adds(served, tmp_path):
    model, index, _ = served
    shutil.copytree(index, tmp_path / "index")
    log = tmp_path / "bentoml.log"
    proc, url = start(model, tmp_path / "index", log)
    acked, errors, stop_adding = [], [], threading.Event()

    def add_forever():
        with httpx.Client(base_url=url, timeout=30) as client:
            for i in range(10_000):
                if stop_adding.is_set():
                    return
                try:
                    r = client.post("/add", files=images(2, 1000 + i), headers={**AUTH, "Idempotency-Key": f"add-{i}"})
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code != 200:
                    errors.append(r.text)
                    return
                acked.append(r.json()["ids"])

    adder = threading.Thread(target=add_forever)
    adder.start()
    try:
        while len(acked) < 8 and adder.is_alive():
            threading.Event().wait(0.05)
        crash(proc)  # kill -9 the server and its workers, mid-request
    finally:
        stop_adding.set()
        adder.join(60)
    assert not errors and len(acked) >= 8
    ids = [i for batch in acked for i in batch]
    first = Index.load(index).ntotal
    assert ids == list(range(first, first + len(ids)))
    proc, url = start(model, tmp_path / "index", log)  # restart: the log is replayed
    try:
        rows = Index.load(tmp_path / "index")
        assert rows.ntotal in (first + len(ids), first + len(ids) + 2)  # at most the add in flight, whole
        assert len(set(rows.paths)) == rows.ntotal  # nothing twice
        with httpx.Client(base_url=url, timeout=60) as client:
            last = len(acked) - 1
            hits = client.post("/search", files={"image": images(2, 1000 + last)[1][1]}, data={"k": "1"}).json()
            assert hits["results"][0]["id"] == acked[last][1]
            key = {**AUTH, "Idempotency-Key": f"add-{last}"}
            retry = client.post("/add", files=images(2, 1000 + last), headers=key)
            assert retry.json()["ids"] == acked[last]  # a retry after the crash and restart: the first answer
            assert client.post("/add", files=images(1, 5), headers=AUTH).json()["ids"] == [rows.ntotal]
    finally:
        stop(proc)
    assert np.isfinite(Index.load(tmp_path / "index").vectors).all()
