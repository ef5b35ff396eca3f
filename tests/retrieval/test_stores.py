"""The collection's behaviour, the same on both stores (an index dir and a PostgreSQL table with pgvector, on a
real server): build and search against brute force, add, remove, filters, the model fingerprint, kill -9 in the
middle of the adds, the CLI."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from retrieval_helpers import brute_force, clustered

from retrieval.filters import Filter, FilterError
from retrieval.kinds import IndexDirError, ModelMismatchError
from retrieval.store import build_store, open_store

ROOT = Path(__file__).resolve().parents[2]
N, DIM = 2000, 16
STORES = ("dir", "pg")


@pytest.fixture(params=STORES)
def location(request, tmp_path, pg_url):
    return str(tmp_path / "idx") if request.param == "dir" else pg_url()


def rows(n: int = N, seed: int = 0):
    x, groups = clustered(n, DIM, seed=seed)
    paths = [f"{'shop' if i % 7 == 0 else 'img'}/{i:05d}.jpg" for i in range(n)]
    labels = [f"c{g % 5}" for g in groups]
    meta = [{"camera": str(i % 20), **({"rare": "yes"} if i == 1234 else {})} for i in range(n)]
    return x, paths, labels, meta


def build(location: str, kind: str = "flat", n: int = N):
    x, paths, labels, meta = rows(n)
    store = build_store(location, x, paths, labels, kind=kind, model_fingerprint="m1", meta=meta, progress=False)
    return store, x, paths, labels, meta


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_search_matches_brute_force(location, kind):
    store, x, *_ = build(location, kind)
    q = clustered(50, DIM, seed=9)[0]
    scores, ids, hits = store.search(q, 10)
    ref_scores, ref_ids = brute_force(x, q, 10)
    if kind == "flat":
        assert (ids == ref_ids).all()
    else:
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ref_ids)]) >= 0.95
        _, few = store.search_ids(q, 10, **({"ef_search": 10} if kind == "hnsw" else {"nprobe": 1}))
        assert (few != ids).any()  # the search knob reaches the index
    _, many = store.search_ids(q[:3], 300)  # more than the default candidate list (ef_search 128)
    assert (many >= 0).all() and all(len(set(row)) == 300 for row in many)
    np.testing.assert_allclose(scores[:, 0], ref_scores[:, 0], atol=1e-4)
    assert hits[0][0]["path"] == f"{'shop' if ids[0, 0] % 7 == 0 else 'img'}/{ids[0, 0]:05d}.jpg"
    assert store.kind == kind and store.dim == DIM and len(store) == N and store.model_fingerprint == "m1"
    store.close()


def test_an_idempotency_key_adds_once_on_every_opening(location):
    from retrieval.keys import KeyReused

    store, *_ = build(location, n=50)
    other = open_store(location)
    new = np.random.default_rng(4).standard_normal((2, DIM)).astype(np.float32)
    first = store.add(new, ["a.jpg", "b.jpg"], ["x", None], [{"k": "1"}, {}], key="req-1")
    again = other.add(new, ["a.jpg", "b.jpg"], ["x", None], [{"k": "1"}, {}], key="req-1")  # a retry elsewhere
    assert again.tolist() == first.tolist() and len(other) == 52
    with pytest.raises(KeyReused, match="another add"):
        other.add(new, ["c.jpg", "d.jpg"], key="req-1")
    assert len(store) == 52 and len(other) == 52
    assert store.add(new[:1], ["e.jpg"], key="req-2").tolist() != first.tolist()
    with pytest.raises(IndexDirError, match="printable ASCII"):
        store.add(new[:1], ["f.jpg"], key="caf\u00e9")
    with pytest.raises(IndexDirError, match="control"):
        store.add(new[:1], ["\x1b[31mred.jpg"])
    assert len(store) == 53
    store.close()
    other.close()


def test_add_and_remove_are_seen_by_another_opening(location):
    store, x, *_ = build(location)
    other = open_store(location)
    new = np.random.default_rng(3).standard_normal((3, DIM)).astype(np.float32)
    ids = store.add(new, ["a.jpg", "b.jpg", "c.jpg"], ["new", None, "new"], [{"camera": "z"}, {}, {"k": "v"}])
    assert len(set(ids.tolist())) == 3 and min(ids) >= N
    other.refresh()
    _, found, hits = other.search(new, 1)
    assert found[:, 0].tolist() == ids.tolist() and hits[2][0]["k"] == "v" and hits[0][0]["label"] == "new"
    assert len(other) == N + 3
    assert store.remove([ids[0], 5]) == 2 and store.remove([ids[0]]) == 0
    other.refresh()
    assert len(other) == N + 1
    _, found, _ = other.search(new[:1], 5)
    assert ids[0] not in found and 5 not in other.search(x[5:6], 5)[1]
    with pytest.raises(IndexDirError, match="not in the index"):
        store.remove([10**9])
    with pytest.raises(IndexDirError, match="dimension"):
        store.add(new[:, :4], ["d.jpg"] * 3)
    assert other.ntotal >= N + 3 and {5, int(ids[0])} <= set(other.removed.tolist())
    assert other.paths[int(ids[1])] == "b.jpg" and other.meta[int(ids[2])] == {"k": "v"}
    store.close()
    other.close()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_filters_match_brute_force(location, kind):
    store, x, paths, labels, meta = build(location, kind)
    q = clustered(20, DIM, seed=5)[0]
    cases = [(Filter({"label": "c1"}), lambda i: labels[i] == "c1"),
             (Filter({"camera": "3"}), lambda i: meta[i]["camera"] == "3"),  # 1 row in 20
             (Filter({"camera": "3", "label": "c2"}), lambda i: meta[i]["camera"] == "3" and labels[i] == "c2"),
             (Filter(path_prefix="shop/"), lambda i: paths[i].startswith("shop/")),
             (Filter({"rare": "yes"}), lambda i: i == 1234)]  # one row: still found
    for where, keep in cases:
        allowed = np.array([keep(i) for i in range(N)])
        sub = np.flatnonzero(allowed)
        _, local = brute_force(x[sub], q, min(10, len(sub)))
        truth = sub[local]
        _, ids, hits = store.search(q, 10, where=where)
        got = [[i for i in row if i >= 0] for row in ids]
        assert all(len(g) == min(10, len(sub)) for g in got), where
        assert all(allowed[i] for g in got for i in g), where
        recall = np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth)])
        assert recall == 1.0 if kind == "flat" else recall >= 0.95, (where, recall)
    with pytest.raises(FilterError, match="no field 'nope'"):
        store.search(q, 5, where=Filter({"nope": "1"}))
    assert store.remove_where(Filter({"camera": "3"})) == N // 20
    assert not (store.search(q, 10, where=Filter({"camera": "3"}))[1] >= 0).any()
    store.close()


def test_a_query_from_another_model_is_refused(location):
    build(location)[0].close()
    with pytest.raises(ModelMismatchError, match="holds vectors of model m1, the queries come from m2"):
        open_store(location, model_fingerprint="m2")
    store = open_store(location, model_fingerprint="m1")
    with pytest.raises(ModelMismatchError, match="no recorded model"):
        store.check_model(None)
    store.close()


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from retrieval.store import open_store
    store = open_store(sys.argv[1])
    rng = np.random.default_rng(0)
    for i in range(100_000):
        ids = store.add(rng.standard_normal((4, 16)).astype(np.float32), [f"k/{i}/{j}.jpg" for j in range(4)])
        print(" ".join(map(str, ids)), flush=True)  # acknowledged
""")


def test_kill_9_mid_adds_loses_no_acknowledged_row(location):
    build(location, n=50)[0].close()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, location], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    acked, deadline = [], time.monotonic() + 60
    while len(acked) < 30 and time.monotonic() < deadline:
        acked.append(list(map(int, writer.stdout.readline().split())))
    os.kill(writer.pid, signal.SIGKILL)  # somewhere inside an add
    acked += [list(map(int, line.split())) for line in writer.communicate()[0].splitlines() if line.strip()]
    store = open_store(location)
    ids = [i for batch in acked for i in batch]
    assert len(ids) >= 120 and len(set(ids)) == len(ids)
    for n, batch in enumerate(acked):
        assert [store.paths[i] for i in batch] == [f"k/{n}/{j}.jpg" for j in range(4)]
    assert len(store) in (50 + len(ids), 50 + len(ids) + 4)  # at most the one add in flight, whole
    live = [p for i, p in enumerate(store.paths) if i not in set(store.removed.tolist())]
    assert len(set(live)) == len(live) == len(store)
    after = store.add(np.ones((1, DIM), np.float32), ["after.jpg"])
    assert after[0] > max(ids)
    store.close()
