"""A live index: the change log, several writers, crashes, compaction."""
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

from retrieval.collection import Collection
from retrieval.filters import Filter
from retrieval.index import Index, IndexDirError
from retrieval.journal import LOG_FILE, add_line, header_line, read_changes

ROOT = Path(__file__).resolve().parents[2]
DIM = 8


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_index(path: Path, n: int = 20, kind: str = "flat", seed: int = 0) -> np.ndarray:
    x = unit(np.random.default_rng(seed), n)
    Index.build(x, [f"base/{i}.jpg" for i in range(n)], ["base"] * n, kind=kind, model_fingerprint="m",
                progress=False).save(path)
    return x


def test_changes_survive_a_reload_and_other_collections_see_them(tmp_path):
    path = tmp_path / "idx"
    make_index(path)
    a, b = Collection.open(path), Collection.open(path)
    x = unit(np.random.default_rng(1), 3)
    ids = a.add(x, ["new/0.jpg", "new/1.jpg", "new/2.jpg"], ["cat", "cat", "dog"], [{"cam": "p"}] * 3)
    assert ids.tolist() == [20, 21, 22]
    assert b.refresh() == 23  # b catches up from the log alone
    assert b.index.paths[20:] == ["new/0.jpg", "new/1.jpg", "new/2.jpg"] and b.index.meta[22] == {"cam": "p"}
    assert b.add(x[:1], ["other.jpg"]).tolist() == [23]  # b's id follows a's: no collision
    assert a.remove([0, 21, 21]) == 2
    fresh = Index.load(path)
    assert (fresh.ntotal, len(fresh)) == (24, 22) and fresh.removed.tolist() == [0, 21]
    np.testing.assert_allclose(fresh.vectors[20:23], x, atol=1e-6)
    _, found, _ = fresh.search(x[2:3], 1)
    assert found[0, 0] == 22
    _, found, _ = fresh.search(x, 5, where=Filter({"cam": "p"}))
    assert set(found.ravel()) - {-1} == {20, 22}  # 21 removed, base rows have no cam


def test_torn_last_line_is_ignored_then_cut_and_corruption_is_an_error(tmp_path):
    path = tmp_path / "idx"
    make_index(path)
    col = Collection.open(path)
    col.add(unit(np.random.default_rng(1), 1), ["a.jpg"])
    log = path / LOG_FILE
    whole = log.read_bytes()
    torn = add_line(21, unit(np.random.default_rng(2), 1), ["b.jpg"], [None], [{}])[:-7]  # a write cut short
    log.write_bytes(whole + torn)
    assert Index.load(path).ntotal == 21  # never acknowledged: not there
    assert Collection.open(path).add(unit(np.random.default_rng(3), 1), ["c.jpg"]).tolist() == [21]
    assert Index.load(path).paths[21] == "c.jpg" and log.read_bytes().startswith(whole)
    damaged = bytearray(log.read_bytes())
    damaged[len(whole) - 20] ^= 1  # a flipped bit inside the first add
    log.write_bytes(bytes(damaged))
    with pytest.raises(IndexDirError, match="corrupt line"):
        Index.load(path)


def test_a_log_of_another_snapshot_is_refused(tmp_path):
    make_index(tmp_path / "a")
    make_index(tmp_path / "b")
    Collection.open(tmp_path / "a").add(unit(np.random.default_rng(1), 1), ["x.jpg"])
    (tmp_path / "b" / LOG_FILE).write_bytes((tmp_path / "a" / LOG_FILE).read_bytes())
    with pytest.raises(IndexDirError, match="another snapshot"):
        Index.load(tmp_path / "b")


def test_read_changes_checks_ids_and_dimension(tmp_path):
    path = tmp_path / "idx"
    make_index(path)
    snapshot = Index.load(path).snapshot
    (path / LOG_FILE).write_bytes(header_line(snapshot, 20) + add_line(25, unit(np.random.default_rng(1), 1),
                                                                       ["gap.jpg"], [None], [{}]))
    with pytest.raises(IndexDirError, match="does not continue"):
        Index.load(path)
    changes, end = read_changes(path / LOG_FILE, DIM, snapshot, 20)
    assert changes[0].first == 25 and end == (path / LOG_FILE).stat().st_size
    with pytest.raises(IndexDirError, match="numbers for 1 rows"):
        read_changes(path / LOG_FILE, DIM * 2, snapshot, 20)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_compact_folds_the_log_in_and_keeps_ids(tmp_path, kind):
    if kind != "flat":
        pytest.importorskip("faiss")
    path = tmp_path / "idx"
    make_index(path, n=60, kind=kind)
    col, reader = Collection.open(path), Collection.open(path)
    x = unit(np.random.default_rng(5), 10)
    col.add(x, [f"n/{i}.jpg" for i in range(10)], meta=[{"batch": str(i % 2)} for i in range(10)])
    col.remove([3, 65])
    queries = unit(np.random.default_rng(6), 5)
    before = Index.load(path).search(queries, 8)
    col.compact()
    assert not (path / LOG_FILE).exists() and col.pending() == 0
    after = Index.load(path).search(queries, 8)
    np.testing.assert_array_equal(before[1], after[1])
    assert reader.refresh() == 68  # the other collection reloads the new snapshot
    assert reader.add(x[:1], ["after.jpg"]).tolist() == [70]
    assert Index.load(path).ntotal == 71


def test_mmap_with_added_rows_in_the_log(tmp_path):
    pytest.importorskip("faiss")
    make_index(tmp_path / "flat")
    make_index(tmp_path / "hnsw", kind="hnsw")
    for name in ("flat", "hnsw"):
        Collection.open(tmp_path / name).add(unit(np.random.default_rng(1), 2), ["a.jpg", "b.jpg"])
    assert Index.load(tmp_path / "flat", mmap=True).ntotal == 22
    with pytest.raises(IndexDirError, match="index compact"):
        Index.load(tmp_path / "hnsw", mmap=True)


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from retrieval.collection import Collection
    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    col = Collection.open(path)
    rng = np.random.default_rng(abs(hash(tag)) % 1000)
    for i in range(n):
        x = rng.standard_normal((4, 8)).astype(np.float32)
        ids = col.add(x, [f"{tag}/{i}/{j}.jpg" for j in range(4)])
        print(" ".join(map(str, ids)), flush=True)  # acknowledged
""")


def run_writer(path: Path, tag: str, n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag, str(n)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_two_processes_add_at_once_without_colliding(tmp_path):
    path = tmp_path / "idx"
    make_index(path)
    writers = [run_writer(path, tag, 25) for tag in ("a", "b")]
    acked = {tag: [list(map(int, line.split())) for line in w.communicate(timeout=120)[0].splitlines()]
             for tag, w in zip(("a", "b"), writers)}
    assert all(w.returncode == 0 for w in writers)
    index = Index.load(path)
    assert index.ntotal == 20 + 2 * 25 * 4
    for tag, batches in acked.items():
        for i, ids in enumerate(batches):
            assert [index.paths[j] for j in ids] == [f"{tag}/{i}/{j}.jpg" for j in range(4)]


def test_kill_9_mid_adds_loses_no_acknowledged_row(tmp_path):
    path = tmp_path / "idx"
    make_index(path)
    writer = run_writer(path, "k", 100_000)
    acked = []
    deadline = time.monotonic() + 60
    while len(acked) < 30 and time.monotonic() < deadline:
        acked.append(list(map(int, writer.stdout.readline().split())))
    os.kill(writer.pid, signal.SIGKILL)  # somewhere inside an add
    rest = writer.communicate()[0].splitlines()
    acked += [list(map(int, line.split())) for line in rest if line.strip()]
    index = Index.load(path)
    ids = [i for batch in acked for i in batch]
    assert len(ids) >= 30 * 4 and ids == list(range(20, 20 + len(ids)))
    assert index.ntotal in (20 + len(ids), 20 + len(ids) + 4)  # at most the one add in flight, whole
    assert len(set(index.paths)) == index.ntotal
    assert Collection.open(path).add(unit(np.random.default_rng(0), 1), ["after.jpg"]).tolist() == [index.ntotal]
