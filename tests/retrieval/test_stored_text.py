"""What a live write may store (clean, bounded text), how stored strings are shown, huge ids, idempotency keys,
and what a compaction reclaims."""
from __future__ import annotations

import json
import logging
import zlib

import numpy as np
import pytest

from retrieval import collection as collection_module
from retrieval.collection import Collection, KeyReused
from retrieval.filters import Filter, UnknownField
from retrieval.index import IDS_FILE, Index, IndexDirError
from retrieval.journal import LOG_FILE, add_line, remove_line
from retrieval.text import MAX_TEXT, clean, shown

DIM = 4


def unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def col(tmp_path) -> Collection:
    Index.build(unit(5), [f"{i}.jpg" for i in range(5)], ["a"] * 5, model_fingerprint="m",
                progress=False).save(tmp_path / "idx")
    return Collection.open(tmp_path / "idx")


def raw_line(obj: dict) -> bytes:
    text = json.dumps(obj).encode()
    return b"%08x %s\n" % (zlib.crc32(text), text)


@pytest.mark.parametrize(("paths", "labels", "meta", "says"), [
    (["a.jpg"], ["\x1b[31mRED"], [{}], "label: a control character"),
    (["a\x00b.jpg"], [None], [{}], "path: a control character"),
    (["a.jpg"], [None], [{"k": "v\x07"}], "field 'k': a control character"),
    (["a.jpg"], [None], [{"k\udcff": "v"}], "field name 'k\\udcff': not valid UTF-8"),
    (["a.jpg"], ["x\ud800"], [{}], "label: not valid UTF-8"),
    (["a.jpg"], ["l" * (MAX_TEXT + 1)], [{}], f"label: {MAX_TEXT + 1:,} characters"),
    (["p" * (MAX_TEXT + 1)], [None], [{}], "path: 1,025 characters"),
])
def test_a_live_write_stores_only_clean_bounded_text(col, paths, labels, meta, says):
    before = col.pending()
    with pytest.raises(IndexDirError, match="row 0: ") as e:
        col.add(unit(1, 1), paths, labels, meta)
    assert says in str(e.value) and "\n" not in str(e.value)
    str(e.value).encode("utf-8")  # the message itself is clean
    assert col.pending() == before and col.index.ntotal == 5


def test_stored_strings_are_shown_escaped():
    assert shown("\x1b[31mRED\x00\x9b") == "\\x1b[31mRED\\x00\\x9b"
    assert shown("k\udcff\u202e") == "k\\udcff\\u202e" and shown("café 猫") == "café 猫"
    assert json.dumps(clean({"k\udcff": ["a\x00", 1]}), ensure_ascii=False).encode("utf-8")


def test_a_huge_id_is_refused_in_one_line(col):
    for ids in ([99999999999999999999], [-(2**70)]):
        with pytest.raises(IndexDirError, match="is not in the index"):
            col.remove(ids)


def test_a_log_line_removing_a_huge_id_is_reported_and_the_rest_loads(col, caplog):
    path = col.path
    col.add(unit(2, 2), ["n0.jpg", "n1.jpg"], ["b", "b"])  # acknowledged: must survive
    with open(path / LOG_FILE, "ab") as f:  # a well-formed line no writer of ours makes
        f.write(raw_line({"remove": [99999999999999999999, 1]}))
    col.add(unit(1, 3), ["n2.jpg"])  # (this writer skips it too, and says so)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sslforge.index"):
        again = Collection.open(path)
    assert again.index.ntotal == 8 and again.index.paths[5:] == ["n0.jpg", "n1.jpg", "n2.jpg"]
    assert again.index.removed.tolist() == [1]  # the id it has is removed
    [record] = [r for r in caplog.records if "was skipped" in r.getMessage()]
    assert "\n" not in record.getMessage() and "999999999999" in record.getMessage()


def test_a_log_line_adding_at_a_huge_id_is_one_line(col):
    col.add(unit(1, 1), ["first.jpg"])
    with open(col.path / LOG_FILE, "ab") as f:
        f.write(add_line(2**64, unit(1), ["x.jpg"], [None], [{}]))
    with pytest.raises(IndexDirError, match="not a change this version writes") as e:
        Collection.open(col.path)
    assert "\n" not in str(e.value)


def test_an_old_bad_field_name_never_breaks_an_error_and_compaction_clears_it(col):
    """A field name with a lone surrogate written before the write check (an older version): the index loads, an
    unknown-field error is clean text, and remove + compact drop it along with the row's strings."""
    col.add(unit(1, 4), ["ok.jpg"], ["fine"])
    with open(col.path / LOG_FILE, "ab") as f:
        f.write(add_line(6, unit(1, 5), ["bad.jpg"], ["l" * 5000], [{"k\udcff": "v" * 1000}]))
    col.refresh()
    with pytest.raises(UnknownField) as e:
        col.search(unit(1), 3, where=Filter({"nope": "1"}))
    str(e.value).encode("utf-8")
    assert e.value.field == "nope"
    big = (col.path / IDS_FILE).stat().st_size
    col.compact()
    assert (col.path / IDS_FILE).stat().st_size > big  # the bad row is in the snapshot now
    col.remove([6])
    col.compact()
    fresh = Index.load(col.path)
    assert fresh.paths[6] == "" and fresh.labels[6] is None and fresh.meta[6] == {}
    assert (col.path / IDS_FILE).stat().st_size < 400  # removed rows' strings are gone from ids.jsonl
    assert fresh.paths[5] == "ok.jpg" and fresh.labels[5] == "fine"
    with pytest.raises(UnknownField, match=r"fields: label\)"):
        fresh.search(unit(1), 3, where=Filter({"k\udcff": "v"}))


def test_an_idempotency_key_adds_once_across_restarts_and_compactions(col):
    x = unit(2, 6)
    ids = col.add(x, ["a.jpg", "b.jpg"], ["c", "c"], key="req-1").tolist()
    assert ids == [5, 6]
    assert col.add(x, ["a.jpg", "b.jpg"], ["c", "c"], key="req-1").tolist() == ids and col.index.ntotal == 7
    other = Collection.open(col.path)  # another process, or the service after a restart
    assert other.add(x, ["a.jpg", "b.jpg"], ["c", "c"], key="req-1").tolist() == ids
    with pytest.raises(KeyReused, match="another add"):
        other.add(x[:1], ["z.jpg"], key="req-1")
    other.compact()
    again = Collection.open(col.path)
    assert again.add(x, ["a.jpg", "b.jpg"], ["c", "c"], key="req-1").tolist() == ids
    assert again.index.ntotal == 7 and col.refresh() == 7
    assert again.add(x[:1], ["z.jpg"], key="req-2").tolist() == [7]
    with pytest.raises(IndexDirError, match="printable ASCII"):
        again.add(x[:1], ["z.jpg"], key="bad\nkey")


def test_the_key_store_is_bounded(col, monkeypatch):
    monkeypatch.setattr(collection_module, "MAX_KEYS", 3)
    for i in range(5):
        col.add(unit(1, 10 + i), [f"{i}.jpg"], key=f"k{i}")
    assert list(col.keys) == ["k2", "k3", "k4"]
    assert list(Collection.open(col.path).keys) == ["k2", "k3", "k4"]
    assert col.add(unit(1, 10), ["0.jpg"], key="k0").tolist() == [10]  # forgotten: a new add
    assert remove_line(np.array([1]))  # (the log stays readable with keys in it)
    assert Index.load(col.path).ntotal == 11
