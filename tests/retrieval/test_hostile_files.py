"""Hostile or broken index and embeddings dirs: each refused with one line naming the file (never a traceback,
never a large allocation), and an index that cannot be matched to the model is refused, not warned about."""
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from retrieval_helpers import collection

from retrieval import EmbeddingsError, Index, IndexDirError, ModelMismatchError, read_embeddings, write_embeddings

FP = "sha256:0123456789abcdef"


@pytest.fixture(params=["flat", "hnsw"])
def index_dir(request, tmp_path: Path) -> Path:
    x, paths, labels = collection(300)
    Index.build(x, paths, labels, kind=request.param, model_fingerprint=FP, progress=False).save(tmp_path / "idx")
    return tmp_path / "idx"


def edit_meta(path: Path, **changes) -> None:
    meta = json.loads((path / "index.json").read_text())
    meta.update(changes)
    (path / "index.json").write_text(json.dumps(meta))


def refused(path: Path, match: str, error=IndexDirError, **load) -> None:
    with pytest.raises(error, match=match) as e:
        Index.load(path, **load)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("content", "match"), [
    (b"[1, 2]", r"index.json: format is None"),
    (b'{"format": "sslforge-index", "x": "\xff"}', r"is not UTF-8 text"),
    (b"[" * 50_000 + b"]" * 50_000, r"nests deeper than 32 levels"),
    (b'{"format": "sslforge-index", "count": ' + b"7" * 6000 + b"}", r"is not valid JSON"),
])
def test_index_json_that_is_not_a_record(index_dir: Path, content: bytes, match: str) -> None:
    (index_dir / "index.json").write_bytes(content)
    refused(index_dir, match)


@pytest.mark.parametrize(("change", "match"), [
    ({"dim": 10**9}, r"dim must be an integer from 1 to 65536"),
    ({"count": -1}, r"count must be an integer"),
    ({"file": "../../../etc/passwd"}, r"file must be one of"),
    ({"metric": "l2"}, r"metric must be one of ip"),
    ({"params": ["ef_search"]}, r"params must be a JSON object"),
    ({"params": {"ef_search": "many"}}, r"ef-search must be an integer"),
    ({"params": {"ef_search": 2**40}}, r"ef_search must be an integer from 1 to"),
    ({"model_fingerprint": {"a": 1}}, r"model_fingerprint must be a string"),
    ({"root": 5}, r"root must be a string"),
])
def test_hostile_index_json_fields(index_dir: Path, change: dict, match: str) -> None:
    meta = json.loads((index_dir / "index.json").read_text())
    if meta["kind"] == "flat" and "params" in change:
        change = {**change, "kind": "hnsw", "file": "index.faiss"}
    edit_meta(index_dir, **change)
    refused(index_dir, match)


def test_garbage_or_lying_faiss_file(tmp_path: Path) -> None:
    x, paths, labels = collection(300)
    index = Index.build(x, paths, labels, kind="hnsw", model_fingerprint=FP, progress=False)
    path = index.save(tmp_path / "idx")
    good = (path / "index.faiss").read_bytes()
    (path / "index.faiss").write_bytes(b"IHNf" + bytes(range(256)) * 8)
    refused(path, r"index.faiss is not a readable Faiss index")
    lying = bytearray(good)
    struct.pack_into("<Q", lying, 177, 1 << 38)  # a vector length of 2^38 inside the HNSW graph
    (path / "index.faiss").write_bytes(bytes(lying))
    refused(path, r"index.faiss is not a readable Faiss index")
    other = Index.build(x[:, :16], paths, labels, kind="hnsw", progress=False)
    other.save(tmp_path / "other")
    (path / "index.faiss").write_bytes((tmp_path / "other" / "index.faiss").read_bytes())
    refused(path, r"index.faiss holds an? .* index of dimension 16, index.json says hnsw of dimension 32")


@pytest.mark.parametrize("kind", ["garbage", "pickle", "shape", "dtype"])
def test_hostile_vectors_file(tmp_path: Path, kind: str) -> None:
    x, paths, labels = collection(300)
    path = Index.build(x, paths, labels, model_fingerprint=FP).save(tmp_path / "idx")
    with open(path / "vectors.npy", "wb") as f:
        if kind == "garbage":
            f.write(b"\x93NUMPY\x01\x00" + b"\xff" * 100)
        elif kind == "pickle":
            np.save(f, np.array([{"a": 1}] * 300, dtype=object), allow_pickle=True)
        elif kind == "shape":
            np.save(f, np.zeros((300, 16), np.float32))
        else:
            np.save(f, np.zeros((300, 32), np.int64))
    refused(path, r"vectors.npy (is not a readable|holds)")


@pytest.mark.parametrize(("ids", "match"), [
    (b'{"path": "a\xff.jpg", "label": null}\n', r"ids.jsonl:1: expected"),
    (b'["a.jpg"]\n', r"ids.jsonl:1: expected"),
    (b'{"path": 17, "label": null}\n', r"ids.jsonl:1: expected"),
    (b'{"path": "a.jpg", "label": ' + b"[" * 5000 + b"]" * 5000 + b"}\n", r"ids.jsonl:1: expected"),
])
def test_hostile_id_table(index_dir: Path, ids: bytes, match: str) -> None:
    (index_dir / "ids.jsonl").write_bytes(ids * 300)
    refused(index_dir, match)


def test_hostile_removed_ids(index_dir: Path) -> None:
    np.save(index_dir / "removed.npy", np.array([5, 10**12]))
    refused(index_dir, r"removed.npy must hold row ids from 0 to 299")
    (index_dir / "removed.npy").write_bytes(b"junk")
    refused(index_dir, r"removed.npy is not a readable")


def test_an_index_without_fingerprint_is_refused_for_a_model(tmp_path: Path) -> None:
    x, paths, labels = collection(300)
    path = Index.build(x, paths, labels).save(tmp_path / "idx")  # no model recorded
    refused(path, r"records no model fingerprint.*rebuild", ModelMismatchError, model_fingerprint=FP)
    index = Index.load(path)  # without a model to match, it still loads (numpy vectors, tests, eval)
    with pytest.raises(ModelMismatchError, match="records no model fingerprint"):
        index.check_model(FP)
    with pytest.raises(ModelMismatchError, match="come from no recorded model"):
        Index.build(x, paths, labels, model_fingerprint=FP).check_model(None)


@pytest.mark.parametrize(("change", "match"), [
    ({"shards": [{"vectors": "../../../../etc/passwd", "ids": "ids-00000.jsonl", "count": 4}]},
     r"shards\[0\]: vectors must be a string matching"),
    ({"dim": 2**40}, r"dim must be an integer from 1 to 65536"),
    ({"dtype": "object"}, r"dtype must be one of float32, float16"),
    ({"shards": {"a": 1}}, r"shards must be a list"),
])
def test_hostile_embeddings_manifest(tmp_path: Path, change: dict, match: str) -> None:
    e = write_embeddings(tmp_path / "e", np.ones((4, 3)), list("abcd"))
    m = json.loads((e / "manifest.json").read_text())
    (e / "manifest.json").write_text(json.dumps({**m, **change}))
    with pytest.raises(EmbeddingsError, match=match) as err:
        read_embeddings(e)
    assert "\n" not in str(err.value)


def test_garbage_embeddings_shard(tmp_path: Path) -> None:
    e = write_embeddings(tmp_path / "e", np.ones((4, 3)), list("abcd"))
    (e / "vectors-00000.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(EmbeddingsError, match=r"vectors-00000.npy is not a readable"):
        read_embeddings(e)
