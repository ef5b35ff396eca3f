"""Near-duplicate groups of an index: every pair of live rows with cosine >= a threshold, joined into groups.

    sslforge dedup --index idx/NAME --threshold 0.95 --out dups.csv [--sheet dups.png]

Pairs: up to EXACT_MAX rows (every flat index, and the others when their vectors can be read back), all pairs
are compared exactly, block by block (no pair is missed); above that, each row's `max_neighbours` nearest rows
from the index itself (approximate: a row with more near-copies than that keeps only its nearest, and the groups
join through them). Groups are the connected components of the pairs (a chain a~b~c is one group even when a and
c are further apart than the threshold). dups.csv: group, size, id, path, label, similarity to the group's first
row; groups largest first.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pretrain.ground.atomic import write_text
from retrieval.kinds import IndexDirError

EXACT_MAX = 200_000
BLOCK_FLOATS = 1 << 25  # similarities computed at a time (128 MB of float32)
MAX_PAIRS_PER_ROW = 20  # more pairs than this per row: the threshold is too low to mean duplicates


@dataclass
class Groups:
    rows: list[np.ndarray]  # ids of each group (sorted), largest group first
    pairs: int  # pairs at or above the threshold
    exact: bool  # all pairs compared (else the nearest max_neighbours of each row)


def index_vectors(index) -> np.ndarray:
    """The (normalised) vectors of every row of a store (zero rows where removed)."""
    return index.vectors() if callable(getattr(index, "vectors", None)) else index.all_vectors()


def similar_pairs(x: np.ndarray, live: np.ndarray, threshold: float,
                  max_pairs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) with i < j, both live, x[i] . x[j] >= threshold: every pair, in blocks of rows; IndexDirError past
    `max_pairs` (a threshold so low that most images pair up says nothing about duplicates)."""
    rows = np.flatnonzero(live)
    sub = x[rows]
    block = max(1, BLOCK_FLOATS // max(1, len(rows)))
    found_i, found_j = [], []
    for start in range(0, len(rows), block):
        sims = sub[start:start + block] @ sub.T
        a, b = np.nonzero(sims >= threshold)
        a = a + start
        keep = b > a
        found_i.append(rows[a[keep]])
        found_j.append(rows[b[keep]])
        total = sum(len(f) for f in found_i)
        if max_pairs is not None and total > max_pairs:
            raise IndexDirError(too_many_pairs(sub, threshold, max_pairs))
    return (np.concatenate(found_i) if found_i else np.zeros(0, np.int64),
            np.concatenate(found_j) if found_j else np.zeros(0, np.int64))


def too_many_pairs(x: np.ndarray, threshold: float, max_pairs: int) -> str:
    sample = x[np.random.default_rng(0).choice(len(x), min(len(x), 1000), replace=False)]
    sims = (sample @ sample.T)[np.triu_indices(len(sample), 1)]
    p999 = float(np.percentile(sims, 99.9)) if len(sims) else float("nan")
    return (f"over {max_pairs:,} pairs have cosine >= {threshold}: at this threshold unrelated images pair up (in a "
            f"sample, 1 pair in 1,000 is above {p999:.4f}); raise --threshold above that")


def neighbour_pairs(index, x: np.ndarray, live: np.ndarray, threshold: float,
                    max_neighbours: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j), i < j: each live row's nearest `max_neighbours` live rows from the index, at or above `threshold`."""
    rows = np.flatnonzero(live)
    found_i, found_j = [], []
    for start in range(0, len(rows), 4096):
        q = rows[start:start + 4096]
        scores, ids = index.search_ids(x[q], max_neighbours + 1)
        a = np.repeat(q, ids.shape[1]).reshape(ids.shape)
        keep = (ids >= 0) & (scores >= threshold) & (ids != a)
        i, j = np.minimum(a[keep], ids[keep]), np.maximum(a[keep], ids[keep])
        found_i.append(i)
        found_j.append(j)
    pairs = np.unique(np.stack([np.concatenate(found_i), np.concatenate(found_j)], axis=1), axis=0) \
        if found_i else np.zeros((0, 2), np.int64)
    return pairs[:, 0], pairs[:, 1]


def components(n: int, i: np.ndarray, j: np.ndarray) -> list[np.ndarray]:
    """Connected components (size >= 2) of the graph with edges (i, j) over n nodes, largest first.

    Vectorised min-label propagation with pointer jumping: each round every edge pulls both ends to the smaller
    label, then labels jump to their label's label; it ends when nothing changes (rounds grow with log of the
    longest chain, each round is a few numpy passes over the edges)."""
    label = np.arange(n)
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    while True:
        low = np.minimum(label[i], label[j])
        new = label.copy()
        np.minimum.at(new, i, low)
        np.minimum.at(new, j, low)
        new = new[new]  # pointer jumping
        if np.array_equal(new, label):
            break
        label = new
    members = np.unique(np.concatenate([i, j])) if len(i) else np.zeros(0, np.int64)
    if not len(members):
        return []
    order = np.argsort(label[members], kind="stable")
    sorted_members, roots = members[order], label[members][order]
    cuts = np.flatnonzero(np.diff(roots)) + 1
    return sorted((np.sort(g) for g in np.split(sorted_members, cuts)), key=lambda g: (-len(g), g[0]))


def find_groups(index, threshold: float, max_neighbours: int = 64) -> Groups:
    if not -1 <= threshold <= 1:
        raise IndexDirError(f"--threshold is a cosine similarity, between -1 and 1 (got {threshold})")
    if max_neighbours < 1:
        raise IndexDirError(f"--max-neighbours must be >= 1 (got {max_neighbours})")
    live = np.ones(index.ntotal, bool)
    live[index.removed] = False
    x = index_vectors(index)
    exact = int(live.sum()) <= EXACT_MAX
    max_pairs = MAX_PAIRS_PER_ROW * max(1, int(live.sum()))
    i, j = similar_pairs(x, live, threshold, max_pairs) if exact else \
        neighbour_pairs(index, x, live, threshold, max_neighbours)
    return Groups(components(index.ntotal, i, j), len(i), exact)


def write_groups(out: str | Path, index, groups: Groups, x: np.ndarray) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["group", "size", "id", "path", "label", "similarity_to_first"])
    for g, rows in enumerate(groups.rows):
        sims = x[rows] @ x[rows[0]]
        for r, s in zip(rows.tolist(), sims.tolist()):
            w.writerow([g, len(rows), r, index.paths[r], index.labels[r] or "", f"{s:.4f}"])
    write_text(out, buf.getvalue())


def sheet(out: str | Path, index, groups: Groups, x: np.ndarray, count: int = 8, per_group: int = 8) -> Path:
    """A contact sheet of the `count` largest groups: the first row, then up to `per_group` others with scores."""
    from retrieval.sheet import contact_sheet

    root = Path(index.info.get("root", ""))
    shown = groups.rows[:count]
    queries = [(root / index.paths[g[0]], f"{len(g)} images") for g in shown]
    results = [[(root / index.paths[r], index.labels[r] or "", float(x[r] @ x[g[0]])) for r in g[1:per_group + 1]]
               for g in shown]
    return contact_sheet(out, queries, results, first="group")
