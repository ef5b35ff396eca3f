"""Near-duplicate groups: every pair at or above the threshold (against a plain double loop), joined into groups."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

import retrieval.dedup as dedup
from pretrain.cli import main
from retrieval import Index, IndexDirError
from retrieval.dedup import components, find_groups, similar_pairs


def planted(n: int = 300, dim: int = 16, copies: int = 40, seed: int = 0):
    """n random unit vectors, plus near-copies of the first `copies` (some copied twice: groups of 3)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    sources = list(range(copies)) + list(range(10))  # rows 0-9 get two copies
    noisy = x[sources] + 0.05 * rng.standard_normal((len(sources), dim)).astype(np.float32)
    x = np.concatenate([x, noisy])
    return x / np.linalg.norm(x, axis=1, keepdims=True), sources


def test_similar_pairs_equal_a_double_loop():
    x, _ = planted()
    live = np.ones(len(x), bool)
    live[[3, 301]] = False
    i, j = similar_pairs(x, live, 0.9)
    expected = {(a, b) for a in range(len(x)) for b in range(a + 1, len(x))
                if live[a] and live[b] and x[a] @ x[b] >= 0.9}
    assert set(zip(i.tolist(), j.tolist())) == expected and len(i) == len(expected)
    dedup.BLOCK_FLOATS = 1000  # tiny blocks: the same pairs
    try:
        assert set(zip(*[a.tolist() for a in similar_pairs(x, live, 0.9)])) == expected
    finally:
        dedup.BLOCK_FLOATS = 1 << 25


def test_components_join_chains_and_sort_largest_first():
    groups = components(8, np.array([0, 1, 5, 6]), np.array([1, 2, 6, 7]))
    assert [g.tolist() for g in groups] == [[0, 1, 2], [5, 6, 7]]
    assert components(5, np.array([], np.int64), np.array([], np.int64)) == []


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_planted_copies_are_found(kind):
    x, sources = planted()
    paths = [f"img/{i:04d}.jpg" for i in range(len(x))]
    index = Index.build(x, paths, kind=kind, progress=False, **({"nlist": 4} if kind == "ivf" else {}))
    groups = find_groups(index, 0.95)
    found = {frozenset(g.tolist()) for g in groups.rows}
    truth = {}
    for copy, src in enumerate(sources):
        truth.setdefault(src, {src}).add(300 + copy)
    assert found == {frozenset(v) for v in truth.values()}
    assert groups.exact and len(groups.rows[0]) == 3


def test_cli_writes_groups_and_sheet(tmp_path, capsys):
    x, sources = planted(n=40, copies=5)
    images = tmp_path / "images"
    images.mkdir()
    paths = []
    for i in range(len(x)):
        Image.new("RGB", (8, 8), (i * 5 % 255, 0, 0)).save(images / f"{i:03d}.png")
        paths.append(f"{i:03d}.png")
    index = Index.build(x, paths, [None] * len(x), kind="flat")
    index.info["root"] = str(images)
    index.remove([len(x) - 1])  # the last copy (of row 9's second copy... here of row 9) is removed
    index.save(tmp_path / "idx")
    out, png = tmp_path / "dups.csv", tmp_path / "dups.png"
    assert main(["dedup", "--index", str(tmp_path / "idx"), "--threshold", "0.95", "--out", str(out),
                 "--sheet", str(png)]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(open(out)))
    groups = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(int(r["id"]))
        assert float(r["similarity_to_first"]) >= 0.95 - 1e-6 or r["id"] == groups[r["group"]][0]
    assert len(x) - 1 not in {i for g in groups.values() for i in g}  # removed rows are never grouped
    assert f"{len(groups)} groups holding {len(rows)} images" in printed and png.is_file()
    with Image.open(png) as im:
        assert im.width > 128
    assert main(["dedup", "--index", str(tmp_path / "idx"), "--threshold", "1.5", "--out", str(out)]) == 2
    assert "between -1 and 1" in capsys.readouterr().err


def test_threshold_and_neighbours_are_checked():
    x, _ = planted(n=20, copies=2)
    index = Index.build(x, [str(i) for i in range(len(x))], kind="flat")
    with pytest.raises(IndexDirError, match="max-neighbours"):
        find_groups(index, 0.9, max_neighbours=0)


def test_above_the_exact_limit_the_nearest_neighbours_find_the_same_groups(monkeypatch):
    x, sources = planted()
    index = Index.build(x, [str(i) for i in range(len(x))], kind="hnsw", progress=False)
    exact = find_groups(index, 0.95)
    monkeypatch.setattr(dedup, "EXACT_MAX", 0)
    approx = find_groups(index, 0.95, max_neighbours=8)
    assert not approx.exact and approx.pairs == exact.pairs
    assert [g.tolist() for g in approx.rows] == [g.tolist() for g in exact.rows]


def test_a_threshold_that_pairs_everything_is_refused_with_advice():
    x, _ = planted(n=200, copies=5)
    index = Index.build(x, [str(i) for i in range(len(x))], kind="flat")
    with pytest.raises(IndexDirError, match=r"over 4,300 pairs have cosine >= -1.0.*raise --threshold above"):
        find_groups(index, -1.0)


def test_components_of_a_long_chain_and_a_star():
    n = 1000
    chain = np.arange(n - 1)
    groups = components(n, chain, chain + 1)
    assert len(groups) == 1 and groups[0].tolist() == list(range(n))
    groups = components(10, np.array([9, 9, 9]), np.array([1, 4, 7]))
    assert [g.tolist() for g in groups] == [[1, 4, 7, 9]]
