"""Many service replicas, one collection in PostgreSQL (a real server with pgvector): two `bentoml serve`
processes on two ports share it (an /add on one is found by /search on the other at once, /remove likewise; a
kill -9 of either loses nothing acknowledged), and a streaming read replica serves /search while the primary
takes /add."""
from __future__ import annotations

import socket
import threading
import time
import uuid

import httpx
import pytest
from serve_helpers import SERVER_ENV, free_port, png_bytes
from test_collection_service import AUTH, ROOT, TOKEN, stop

from pretrain.cli import main
from retrieval.store import open_store
from tools.process import crash, start_bentoml, wait_ready


def images(n: int, seed: int) -> list:
    return [("images", (f"r-{seed}-{i}.png", png_bytes(seed=seed * 100 + i), "image/png")) for i in range(n)]


def query(seed: int, i: int = 0) -> dict:
    return {"image": images(i + 1, seed)[i][1]}


@pytest.fixture(scope="module")
def shared(served, pg_server, tmp_path_factory):
    """(url, server A, server B, folder): the served index copied into a table, two services on it."""
    model, index, _ = served
    url = pg_server.url(table=f"shared_{uuid.uuid4().hex[:8]}")
    assert main(["index", "copy", str(index), url, "--quiet"]) == 0
    root = tmp_path_factory.mktemp("replicas")
    servers = []
    try:
        for name, port in zip("ab", two_ports()):  # both start at once (each loads torch and the model: the slow part)
            env = {"SSLFORGE_MODEL": str(model), "SSLFORGE_INDEX": url, "SSLFORGE_WRITE_TOKEN": TOKEN, **SERVER_ENV}
            log = root / f"{name}.log"
            servers.append((start_bentoml(env, port, ROOT, log), f"http://127.0.0.1:{port}", log))
        for proc, server, log in servers:
            wait_ready(server, proc, log)
        a, b = [(proc, server) for proc, server, _ in servers]
        yield url, a, b, root, model
    finally:
        for proc, _, _ in servers:
            if proc.poll() is None:
                stop(proc)


def two_ports() -> tuple[int, int]:
    """Two free ports (free_port twice would give the same one: nothing is bound to it in between)."""
    first = free_port()
    for port in range(first + 1, first + 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return first, port
    raise RuntimeError("no second free port")


def top_id(url: str, seed: int, i: int = 0) -> int | None:
    hits = httpx.post(f"{url}/search", files=query(seed, i), data={"k": "1"}, timeout=60).json()["results"]
    return hits[0]["id"] if hits else None


def test_an_add_on_one_replica_is_found_by_the_other_at_once(shared):
    _, (_, a), (_, b), _, _ = shared
    r = httpx.post(f"{a}/add", files=images(2, 1), headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    ids = r.json()["ids"]
    assert top_id(b, 1, 0) == ids[0] and top_id(b, 1, 1) == ids[1]  # no wait: committed before /add answered
    r = httpx.post(f"{b}/remove", files={"ids": (None, str(ids[0]))}, headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.json()["removed"] == 1
    assert top_id(a, 1, 0) != ids[0]
    assert httpx.post(f"{a}/remove", files={"ids": (None, str(ids[0]))}, headers=AUTH, timeout=60).json() \
        ["removed"] == 0


def test_a_read_replica_serves_search_while_the_primary_takes_adds(shared, pg_server):
    url, (_, a), _, root, model = shared
    replica = pg_server.replica(pg_server.root.parent / f"replica-{uuid.uuid4().hex[:6]}")
    port, log = free_port(), root / "c.log"
    env = {"SSLFORGE_MODEL": str(model), "SSLFORGE_INDEX": url.replace(f":{pg_server.port}/", f":{replica.port}/"),
           "SSLFORGE_WRITE_TOKEN": TOKEN, **SERVER_ENV}
    proc, c = start_bentoml(env, port, ROOT, log), f"http://127.0.0.1:{port}"
    try:
        wait_ready(c, proc, log)
        answered, stop_searching = [], threading.Event()

        def search_forever():
            while not stop_searching.is_set():
                answered.append(httpx.post(f"{c}/search", files=query(2), data={"k": "3"}, timeout=60).status_code)

        searcher = threading.Thread(target=search_forever)
        searcher.start()
        try:
            added = [httpx.post(f"{a}/add", files=images(1, 2 + i), headers=AUTH, timeout=60) for i in range(4)]
        finally:
            stop_searching.set()
            searcher.join(60)
        assert all(r.status_code == 200 for r in added) and answered and set(answered) == {200}
        new = added[0].json()["ids"][0]
        pg_server.wait_replayed(replica)
        assert top_id(c, 2) == new  # streamed to the replica
        r = httpx.post(f"{c}/add", files=images(1, 9), headers=AUTH, timeout=60)
        assert r.status_code == 503 and "read-only replica" in r.json()["error"]
    finally:
        stop(proc)
        replica.stop(mode="immediate")


def test_kill_9_of_either_loses_nothing_acknowledged(shared):
    url, (pa, a), (pb, b), _, _ = shared
    acked: dict[str, list] = {"a": [], "b": []}
    errors: list[str] = []

    def add_forever(name: str, server: str, seed: int):
        with httpx.Client(base_url=server, timeout=30) as client:
            for i in range(10_000):
                try:
                    r = client.post("/add", files=images(2, seed + i), headers=AUTH)
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code != 200:
                    errors.append(r.text)
                    return
                acked[name].append((seed + i, r.json()["ids"]))

    threads = [threading.Thread(target=add_forever, args=("a", a, 1000)),
               threading.Thread(target=add_forever, args=("b", b, 5000))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while min(len(acked["a"]), len(acked["b"])) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    crash(pa)  # kill -9 mid-request, while B keeps adding
    done_a = len(acked["b"])
    while len(acked["b"]) < done_a + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    crash(pb)
    for t in threads:
        t.join(60)
    assert not errors and len(acked["a"]) >= 5 and len(acked["b"]) >= done_a + 3
    store = open_store(url)
    try:
        for seed, ids in acked["a"] + acked["b"]:
            assert [store.paths[i] for i in ids] == [f"r-{seed}-0.png", f"r-{seed}-1.png"]
        assert not set(i for _, ids in acked["a"] + acked["b"] for i in ids) & set(store.removed.tolist())
    finally:
        store.close()


def test_serve_takes_a_database_url_and_never_prints_its_password(pg_server, served, monkeypatch, capsys):
    import argparse

    from serve import cli

    url = pg_server.url(table="photos")
    started = {}
    monkeypatch.setattr(cli.os, "execve", lambda path, argv, env: started.update(env))
    args = argparse.Namespace(model=str(served[0]), index=url, backend="torch", device="cpu", max_k=None, host="h",
                              port=1, batching=True, max_batch_size=8, max_latency_ms=100)
    cli.cmd_serve(args)
    out = capsys.readouterr().out
    assert started["SSLFORGE_INDEX"] == url  # the server gets the URL as given
    assert pg_server.password not in out and "sslforge:***@127.0.0.1" in out
