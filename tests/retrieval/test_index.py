import json

import numpy as np
import pytest
from retrieval_helpers import brute_force, clustered, collection

import retrieval.exact as exact
from retrieval import BackendError, Index, IndexDirError, ModelMismatchError, choose_kind, exact_search
from retrieval.metrics import recall_at_k


def test_flat_equals_numpy_brute_force() -> None:
    x, paths, labels = collection()
    index = Index.build(x, paths, labels, kind="flat")
    queries = clustered(50, seed=1)[0]
    scores, ids, meta = index.search(queries, 10)
    ref_scores, ref_ids = brute_force(x, queries, 10)
    assert recall_at_k(ids, ref_ids) == 1.0
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert meta[3][0] == {"id": int(ids[3, 0]), "path": paths[ids[3, 0]], "label": labels[ids[3, 0]],
                          "score": pytest.approx(float(scores[3, 0]))}


@pytest.mark.parametrize("backend", ["faiss-cpu", "torch-cpu"])
def test_exact_backends_agree_with_numpy_and_pad(backend) -> None:
    x = clustered(700, seed=2)[0]
    q = clustered(9, seed=3)[0]
    scores, ids = exact_search(x, q, 5, backend=backend)
    ref_scores, ref_ids = brute_force(x, q, 5)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    scores, ids = exact_search(x[:3], q, 5, backend=backend)  # fewer rows than k
    assert (ids[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    assert sorted(ids[0, :3].tolist()) == [0, 1, 2]


def test_torch_fallback_equals_faiss_flat(monkeypatch) -> None:
    x, paths, labels = collection()
    q = clustered(40, seed=5)[0]
    with_faiss = Index.build(x, paths, labels, kind="flat").search_ids(q, 7)
    monkeypatch.setattr(exact, "faiss_or_none", lambda: None)
    monkeypatch.setattr("retrieval.kinds.faiss_or_none", lambda: None)
    assert exact.exact_backend("cpu") == "torch-cpu"
    without = Index.build(x, paths, labels, kind="flat").search_ids(q, 7)
    np.testing.assert_array_equal(with_faiss[1], without[1])
    np.testing.assert_allclose(with_faiss[0], without[0], atol=1e-5)
    with pytest.raises(BackendError, match="needs Faiss"):
        Index.build(x, paths, labels, kind="hnsw")


def test_gpu_request_without_gpu_is_a_clear_error() -> None:
    x, paths, labels = collection()
    if exact.faiss_gpus() or exact.torch_cuda():
        pytest.skip("this machine has a GPU")  # the error path only exists on CPU-only machines
    with pytest.raises(BackendError, match="no GPU search backend"):
        exact_search(x, x[:2], 3, device="gpu")
    with pytest.raises(BackendError, match="Faiss sees no GPU"):
        Index.build(x, paths, labels, kind="ivf", device="gpu", progress=False)


@pytest.mark.parametrize("kind, params, floor", [
    ("hnsw", {"hnsw_m": 16, "ef_construction": 80}, 0.95),
    ("ivf", {"nlist": 32, "nprobe": 8}, 0.9),
    ("ivfpq", {"nlist": 16, "m": 8, "nprobe": 8, "refine": 8}, 0.9),
])
def test_approximate_recall_above_floor(kind, params, floor) -> None:
    x, paths, labels = collection()
    index = Index.build(x, paths, labels, kind=kind, progress=False, **params)
    queries = clustered(100, seed=4)[0]
    recall = recall_at_k(index.search_ids(queries, 10)[1], brute_force(x, queries, 10)[1])
    assert recall >= floor, f"{kind} recall@10 {recall:.3f}"


def test_search_knobs_change_the_operating_point() -> None:
    x, paths, labels = collection()
    index = Index.build(x, paths, labels, kind="ivf", nlist=64, progress=False)
    queries = clustered(100, seed=4)[0]
    ref = brute_force(x, queries, 10)[1]
    low = recall_at_k(index.search_ids(queries, 10, nprobe=1)[1], ref)
    high = recall_at_k(index.search_ids(queries, 10, nprobe=64)[1], ref)
    assert high == 1.0 and low < high
    with pytest.raises(IndexDirError, match="'ef_search' does not apply to a ivf index"):
        index.search_ids(queries, 10, ef_search=10)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_save_load_round_trip_and_mmap(tmp_path, kind) -> None:
    x, paths, labels = collection()
    params = {"ivf": {"nlist": 16}, "ivfpq": {"nlist": 16, "m": 8}}.get(kind, {})
    index = Index.build(x, paths, labels, kind=kind, model_fingerprint="sha256:aa", progress=False, **params)
    index.remove([5, 17])
    queries = x[:20] + 0.01
    before = index.search_ids(queries, 8)
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["kind"] == kind and meta["metric"] == "ip" and meta["count"] == 3000 and meta["live"] == 2998
    assert meta["model_fingerprint"] == "sha256:aa" and meta["dim"] == 32 and meta["built_on"] == "cpu"
    for mmap in (False, True):
        loaded = Index.load(tmp_path / "idx", mmap=mmap, model_fingerprint="sha256:aa")
        after = loaded.search_ids(queries, 8)
        np.testing.assert_array_equal(before[1], after[1])
        np.testing.assert_array_equal(before[0], after[0])
        assert loaded.paths == paths and loaded.labels == labels and len(loaded) == 2998
    with pytest.raises(IndexDirError, match="loaded memory-mapped"):
        loaded.add(x[:1], ["new"])


def test_add_and_remove(tmp_path) -> None:
    x, paths, labels = collection()
    for kind, params in (("hnsw", {}), ("ivf", {"nlist": 16, "nprobe": 16}), ("flat", {})):
        index = Index.build(x[:2000], paths[:2000], labels[:2000], kind=kind, progress=False, **params)
        new = index.add(x[2000:], paths[2000:], labels[2000:])
        assert new.tolist() == list(range(2000, 3000))
        _, ids, meta = index.search(x[2500:2501], 1)
        assert ids[0, 0] == 2500 and meta[0][0]["path"] == paths[2500]
        assert index.remove([2500, 2500, 7]) == 2
        _, ids = index.search_ids(np.concatenate([x[2500:2501], x[7:8]]), 50)
        assert not np.isin(ids, [2500, 7]).any() and (ids >= 0).all()
        index.save(tmp_path / kind)
        again = Index.load(tmp_path / kind)
        assert len(again) == 2998 and not np.isin(again.search_ids(x[2500:2501], 5)[1], [2500]).any()
    _, ids = index.search_ids(x[7:8], 3000)  # exact search returns every live row, then id -1
    assert sorted(ids[0, :2998].tolist()) == sorted(set(range(3000)) - {7, 2500}) and (ids[0, 2998:] == -1).all()
    with pytest.raises(IndexDirError, match="id 3000 is not in the index"):
        index.remove([3000])


def test_fingerprint_and_dimension_mismatch(tmp_path) -> None:
    x, paths, labels = collection()
    Index.build(x, paths, labels, model_fingerprint="sha256:aa").save(tmp_path / "idx")
    with pytest.raises(ModelMismatchError, match="holds vectors of model sha256:aa, the queries come from sha256:bb"):
        Index.load(tmp_path / "idx", model_fingerprint="sha256:bb")
    index = Index.load(tmp_path / "idx")
    with pytest.raises(IndexDirError, match=r"query vectors have shape \(2, 16\), .* holds dimension 32"):
        index.search(np.ones((2, 16)), 3)


def test_broken_index_dirs(tmp_path) -> None:
    x, paths, labels = collection()
    Index.build(x, paths, labels).save(tmp_path / "idx")
    meta_file = tmp_path / "idx" / "index.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "schema_version": 7}))
    with pytest.raises(IndexDirError, match="schema_version 7 is not supported"):
        Index.load(tmp_path / "idx")
    meta_file.write_text(json.dumps({**meta, "count": 5}))
    with pytest.raises(IndexDirError, match="inconsistent"):
        Index.load(tmp_path / "idx")
    meta_file.write_text(json.dumps({k: v for k, v in meta.items() if k != "dim"}))
    with pytest.raises(IndexDirError, match="field 'dim' is missing"):
        Index.load(tmp_path / "idx")
    meta_file.write_text(json.dumps(meta))
    (tmp_path / "idx" / "ids.jsonl").write_text("not json\n")
    with pytest.raises(IndexDirError, match=r"ids.jsonl:1: expected"):
        Index.load(tmp_path / "idx")
    with pytest.raises(IndexDirError, match="not found"):
        Index.load(tmp_path / "nothing")


def test_choose_kind_and_params() -> None:
    assert choose_kind(99_999, 512)[0] == "flat"
    assert choose_kind(1_000_000, 512)[0] == "hnsw"
    assert choose_kind(10_000_000, 512)[0] == "ivfpq"
    x = clustered(500)[0]
    with pytest.raises(IndexDirError, match="--m 7 must divide the vector dimension 32"):
        Index.build(x, list(map(str, range(500))), kind="ivfpq", m=7, nlist=4)
    with pytest.raises(IndexDirError, match="--nlist does not apply to a hnsw index"):
        Index.build(x, list(map(str, range(500))), kind="hnsw", nlist=4)
    with pytest.raises(IndexDirError, match="--nlist 600 exceeds the 500 vectors"):
        Index.build(x, list(map(str, range(500))), kind="ivf", nlist=600)
