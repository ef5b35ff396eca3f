import json

import numpy as np
import pytest

from retrieval.embeddings import EmbeddingsError, read_embeddings, write_embeddings


def test_round_trip_over_shards_and_float16(tmp_path) -> None:
    x = np.random.default_rng(0).normal(size=(25, 8)).astype(np.float32)
    paths = [f"a/{i}.jpg" for i in range(25)]
    labels = [None if i % 5 == 0 else f"c{i % 3}" for i in range(25)]
    write_embeddings(tmp_path / "e", x, paths, labels, model_fingerprint="sha256:ab", shard_size=10, dtype="float16")
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert [s["count"] for s in manifest["shards"]] == [10, 10, 5]
    emb = read_embeddings(tmp_path / "e")
    assert emb.vectors.dtype == np.float32 and emb.vectors.shape == (25, 8)
    np.testing.assert_allclose(emb.vectors, x.astype(np.float16).astype(np.float32))
    assert emb.paths == paths and emb.labels == labels and emb.model_fingerprint == "sha256:ab"


def _manifest_edit(path, **changes):
    m = json.loads((path / "manifest.json").read_text())
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("change, message", [
    ({"format": "other"}, "format is 'other'"),
    ({"schema_version": 99}, "schema_version 99 is not supported"),
    ({"complete": False}, "unfinished"),
    ({"count": 7}, "count is 7"),
    ({"dim": 9}, "has shape (4, 3)"),
])
def test_bad_manifest_gives_one_line_error(tmp_path, change, message) -> None:
    e = write_embeddings(tmp_path / "e", np.ones((4, 3)), list("abcd"))
    _manifest_edit(e, **change)
    with pytest.raises(EmbeddingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_embeddings(e)


def test_missing_shard_and_missing_dir(tmp_path) -> None:
    e = write_embeddings(tmp_path / "e", np.ones((4, 3)), list("abcd"))
    (e / "ids-00000.jsonl").unlink()
    with pytest.raises(EmbeddingsError, match="ids-00000.jsonl is listed .* but missing"):
        read_embeddings(e)
    with pytest.raises(EmbeddingsError, match="not found"):
        read_embeddings(tmp_path / "nothing")
