"""Filtered search: never a non-matching row; on flat indexes the true top-k among the matching rows."""
from __future__ import annotations

import numpy as np
import pytest
from retrieval_helpers import clustered, collection

from retrieval import Index, IndexDirError
from retrieval.filters import Filter, FilterError


def rows_meta(n: int) -> list[dict]:
    return [{"source": "phone" if i % 3 == 0 else "camera", **({"year": str(2020 + i % 4)} if i % 2 else {})}
            for i in range(n)]


def brute_filtered(x, paths, labels, meta, removed, queries, k, flt):
    """An independent re-computation: normalise, keep the matching live rows, sort by inner product."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    keep = [i for i in range(len(paths)) if i not in set(removed)
            and all((labels[i] if f == "label" else meta[i].get(f)) == v for f, v in flt.equals.items())
            and (flt.path_prefix is None or paths[i].startswith(flt.path_prefix))]
    out = []
    for row in q:
        sims = {i: float(x[i] @ row) for i in keep}
        out.append(sorted(sims, key=lambda i: -sims[i])[:k])
    return keep, out


FILTERS = [Filter({"label": "c1"}), Filter({"source": "phone"}), Filter({"source": "camera", "year": "2021"}),
           Filter(path_prefix="img/00"), Filter({"label": "c2"}, "img/0")]


@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: f.describe())
def test_flat_filtered_search_is_the_true_top_k_among_matching_rows(flt):
    x, paths, labels = collection()
    meta = rows_meta(len(paths))
    index = Index.build(x, paths, labels, kind="flat", meta=meta)
    index.remove([0, 5, 9])
    queries = clustered(20, seed=7)[0]
    _, ids, hits = index.search(queries, 8, where=flt)
    keep, expected = brute_filtered(x, paths, labels, meta, [0, 5, 9], queries, 8, flt)
    assert keep, "the filter must match some rows for the test to mean anything"
    for got, want, row in zip(ids, expected, hits):
        assert [i for i in got if i >= 0] == want
        for hit in row:
            if hit is not None:
                assert hit["id"] in keep and {k: hit[k] for k in meta[hit["id"]]} == meta[hit["id"]]


@pytest.mark.parametrize("kind,params", [("hnsw", {}), ("ivf", {"nlist": 8}), ("ivfpq", {"nlist": 8, "m": 4}),
                                          ("ivfpq", {"nlist": 8, "m": 4, "refine": 4})])
def test_faiss_kinds_never_return_a_non_matching_row(kind, params):
    x, paths, labels = collection()
    meta = rows_meta(len(paths))
    index = Index.build(x, paths, labels, kind=kind, meta=meta, progress=False, **params)
    index.remove([1, 2, 3])
    queries = clustered(20, seed=8)[0]
    knobs = {"nprobe": 8} if kind != "hnsw" else {}

    def recall(flt):
        _, ids = index.search_ids(queries, 10, where=flt, **knobs)
        keep, expected = brute_filtered(x, paths, labels, meta, [1, 2, 3], queries, 10, flt)
        assert set(ids[ids >= 0].tolist()) <= set(keep)  # never a non-matching or removed row
        return np.mean([len(set(g[g >= 0].tolist()) & set(w)) / max(1, len(w)) for g, w in zip(ids, expected)])

    unfiltered = recall(Filter())
    for flt in FILTERS:
        # hnsw and ivf find the filtered top-k; PQ kinds rank by compressed codes, so they are held to their own
        # unfiltered recall: the filter must not make them worse
        floor = 0.9 if kind in ("hnsw", "ivf") else unfiltered - 0.15
        assert recall(flt) >= floor, (flt.describe(), unfiltered)


def test_a_filter_matching_nothing_or_few_rows_pads(tmp_path):
    x, paths, labels = collection()
    index = Index.build(x, paths, labels, kind="flat", meta=rows_meta(len(paths)))
    scores, ids = index.search_ids(x[:2], 5, where=Filter({"label": "no such class"}))
    assert (ids == -1).all() and np.isneginf(scores).all()
    one = Filter(path_prefix=paths[7])
    _, ids = index.search_ids(x[:2], 5, where=one)
    assert ids[:, 0].tolist() == [7, 7] and (ids[:, 1:] == -1).all()


def test_meta_round_trips_and_is_checked(tmp_path):
    x, paths, labels = collection()
    meta = rows_meta(len(paths))
    index = Index.build(x, paths, labels, kind="flat", meta=meta)
    index.add(x[:2], ["new/a.jpg", "new/b.jpg"], ["c1", None], meta=[{"source": "upload"}, {}])
    index.save(tmp_path / "idx")
    back = Index.load(tmp_path / "idx")
    assert back.meta == meta + [{"source": "upload"}, {}]
    _, ids = back.search_ids(x[:1], 3, where=Filter({"source": "upload"}))
    assert set(ids[0][ids[0] >= 0].tolist()) == {len(paths)}
    with pytest.raises(FilterError, match="no field 'colour'"):
        back.search_ids(x[:1], 3, where=Filter({"colour": "red"}))
    for bad in ([{"label": "x"}], [{"k": 3}], [{"k" * 65: "v"}], [{"k": "v" * 1025}], ["not an object"]):
        with pytest.raises(IndexDirError, match="metadata row 0"):
            index.add(x[:1], ["p.jpg"], meta=bad)
    (tmp_path / "idx" / "meta.jsonl").write_text('{"a": 1}\n' * (len(paths) + 2))
    with pytest.raises(IndexDirError, match="meta.jsonl.*rebuild the index"):
        Index.load(tmp_path / "idx")


def test_parse_where_options():
    f = Filter.parse(["label=cat", "source = phone", "empty="], "a/b")
    assert f.equals == {"label": "cat", "source": " phone", "empty": ""} and f.path_prefix == "a/b"
    assert not Filter.parse([], None)
    with pytest.raises(FilterError, match="FIELD=VALUE"):
        Filter.parse(["novalue"])


def _plain_mask(where, paths, labels, meta, removed):
    """The filter's meaning, row by row (the reference the column cache must agree with)."""
    out = []
    for i, (p, lab, m) in enumerate(zip(paths, labels, meta)):
        row = {**m, "label": lab}
        ok = i not in set(removed) and all(row.get(k) is not None and str(row.get(k)) == v
                                           for k, v in where.equals.items())
        out.append(ok and (not where.path_prefix or p.startswith(where.path_prefix)))
    return np.array(out)


def test_column_cache_agrees_with_a_row_by_row_reference_as_rows_grow():
    from retrieval.filters import Columns, Filter

    rng = np.random.default_rng(0)
    paths, labels, meta = [], [], []
    columns = Columns()
    prefixes = ["a/", "a/b", "b/", "ab", "a", "z/", "\U0010ffff", "b/\U0010ffff"]
    for _round in range(4):  # rows are appended between searches, as adds do
        for _ in range(50):
            paths.append(rng.choice(["a/", "a/b/", "b/", "ab/", "b/\U0010ffff"]) + f"{rng.integers(1000)}.jpg")
            labels.append(rng.choice(["cat", "dog", None]))
            meta.append({k: str(rng.integers(3)) for k in ("shard", "camera") if rng.random() < 0.7})
        removed = np.unique(rng.integers(0, len(paths), 10))
        for where in [Filter({"shard": "1"}), Filter({"label": "cat", "camera": "0"}), Filter({"shard": "9"}),
                      *[Filter({}, p) for p in prefixes], Filter({"label": "dog"}, "a/")]:
            got = where.mask(paths, labels, meta, removed, columns)
            assert (got == _plain_mask(where, paths, labels, meta, removed)).all(), where
    with pytest.raises(FilterError, match="no field 'lens'"):
        Filter({"lens": "x"}).mask(paths, labels, meta, removed, columns)
    labels[0] = "bird"  # a row rewritten in place: reset, then it is seen
    columns.reset()
    assert Filter({"label": "bird"}).mask(paths, labels, meta, np.array([], np.int64), columns)[0]
