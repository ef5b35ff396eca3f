"""The readers-writer lock and a Collection's searches: readers overlap, a writer holds the index alone, a waiting
writer goes before new readers, and searches beside adds from another thread stay correct."""
from __future__ import annotations

import threading
import time

import numpy as np

from retrieval.collection import Collection
from retrieval.index import Index
from retrieval.rwlock import ReadWriteLock


def _spans(lock: ReadWriteLock, kinds: list[str], hold: float = 0.15) -> list[tuple[str, float, float]]:
    """Start one thread per kind ('r' or 'w', 20 ms apart); each holds its side for `hold` s; their spans."""
    spans, guard = [], threading.Lock()

    def run(kind: str) -> None:
        with lock.read() if kind == "r" else lock.write():
            start = time.perf_counter()
            time.sleep(hold)
            with guard:
                spans.append((kind, start, time.perf_counter()))

    threads = [threading.Thread(target=run, args=(k,)) for k in kinds]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join()
    return sorted(spans, key=lambda s: s[1])


def _overlap(a, b) -> bool:
    return a[1] < b[2] and b[1] < a[2]


def test_readers_overlap_and_a_writer_is_alone():
    spans = _spans(ReadWriteLock(), ["r", "r", "w", "r"])
    reads, (write,) = [s for s in spans if s[0] == "r"], [s for s in spans if s[0] == "w"]
    assert _overlap(reads[0], reads[1])  # the first two readers share the lock
    assert not any(_overlap(write, r) for r in reads)  # the writer never runs beside a reader
    # the reader that came after the waiting writer runs after it, not beside the first two
    assert [s[0] for s in spans] == ["r", "r", "w", "r"]


def test_the_write_side_is_reentrant_and_may_read():
    lock = ReadWriteLock()

    def nested() -> None:
        with lock.write(), lock.write(), lock.read():
            pass

    thread = threading.Thread(target=nested, daemon=True)
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive()  # a lock that is not re-entrant would hang here
    def read_after() -> None:
        with lock.read():
            pass

    other = threading.Thread(target=read_after, daemon=True)  # the nested holds were all released
    other.start()
    other.join(timeout=5)
    assert not other.is_alive()
    first, second = _spans(ReadWriteLock(), ["w", "w"], 0.05)
    assert not _overlap(first, second)  # two writers never hold it together


def test_collection_searches_run_side_by_side_and_see_adds(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    Index.build(x, [f"{i}.jpg" for i in range(50)], ["a"] * 50, kind="flat", model_fingerprint="m",
                progress=False).save(tmp_path / "idx")
    col = Collection.open(tmp_path / "idx")
    real, inside, most = Index.search, [0], [0]
    guard = threading.Lock()

    def slow_search(self, *args, **kwargs):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.1)
        try:
            return real(self, *args, **kwargs)
        finally:
            with guard:
                inside[0] -= 1

    monkeypatch.setattr(Index, "search", slow_search)
    results = {}

    def search(i: int) -> None:
        results[i] = col.search(x[i:i + 1], 1)[1][0, 0]

    threads = [threading.Thread(target=search, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] >= 2  # searches overlapped (one lock around every call would give 1)
    assert results == {i: i for i in range(4)}
    other = Collection.open(tmp_path / "idx")  # another writer: this collection catches up before it searches
    new = rng.standard_normal((1, 8)).astype(np.float32)
    (added,) = other.add(new / np.linalg.norm(new), ["new.jpg"])
    assert col.search(new / np.linalg.norm(new), 1)[1][0, 0] == added == 50
