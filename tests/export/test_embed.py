"""`sslforge embed`'s library side: the embeddings dir written and read back, resumption after a kill
that ends with exactly the files of an uninterrupted run, corrupt images, parts and merge, reader checks."""
import json
from pathlib import Path

import numpy as np
import pytest

import export.embed as embed_module
from export.embed import embed_images, merge_parts, part_range
from export.embedder import Embedder
from export.embeddings import load_embeddings, read_manifest
from export.errors import ExportError
from export.images import find_images


@pytest.fixture
def folder(image_folder: Path) -> Path:
    """The 24-image ImageFolder plus a corrupt JPEG, a loose image at the root and a non-image file."""
    (image_folder / "class_1" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (image_folder / "loose.png").write_bytes((image_folder / "class_0" / "000.jpg").read_bytes())
    (image_folder / "class_2" / "notes.txt").write_text("not an image")
    return image_folder


@pytest.fixture(scope="module")
def embedder(resnet_dir) -> Embedder:
    return Embedder.load(resnet_dir.path, "torch")


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_embeddings_dir_written_and_read_back(embedder: Embedder, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    result = embed_images(embedder, folder, out, batch_size=4, workers=0, shard_size=10, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert result["throughput"]["images"] == 26
    assert {k: manifest[k] for k in ("format", "schema_version", "model_fingerprint", "backend", "dim", "dtype",
                                     "normalized", "root", "count", "failed", "complete")} == {
        "format": "sslforge-embeddings", "schema_version": 1, "model_fingerprint": embedder.fingerprint,
        "backend": "torch", "dim": embedder.dim, "dtype": "float32", "normalized": True,
        "root": str(folder.resolve()), "count": 25, "failed": 1, "complete": True}
    assert [s["count"] for s in manifest["shards"]] == [10, 9, 6]  # the corrupt image was in the 2nd shard
    assert [s["vectors"] for s in manifest["shards"]] == ["vectors-00000.npy", "vectors-00001.npy",
                                                          "vectors-00002.npy"]
    assert (out / "failed.txt").read_text().startswith("class_1/broken.jpg\t")

    vectors, ids, _ = load_embeddings(out)
    assert vectors.dtype == np.float32 and vectors.shape == (25, embedder.dim)
    assert ids[0] == {"path": "loose.png", "label": None}  # sorted walk: a folder's files before its sub-folders
    assert ids[1] == {"path": "class_0/000.jpg", "label": "class_0"}
    assert "class_2/notes.txt" not in {r["path"] for r in ids}
    np.testing.assert_allclose(vectors, embedder.embed([folder / r["path"] for r in ids]), atol=1e-5)

    again = embed_images(embedder, folder, out, workers=0, shard_size=10, progress=False)  # already complete
    assert again["throughput"]["images"] == 0 and again["count"] == 25


def test_resume_after_a_kill_gives_exactly_the_uninterrupted_files(embedder: Embedder, folder: Path,
                                                                   tmp_path: Path, monkeypatch) -> None:
    options = dict(batch_size=3, workers=0, shard_size=7, progress=False)
    embed_images(embedder, folder, tmp_path / "whole", **options)

    real_write_shard = embed_module.write_shard
    calls = []

    def dies_on_the_third_shard(out, index, vectors, ids):
        calls.append(index)
        if len(calls) == 3:
            (out / "vectors-00002.npy").write_bytes(b"half a file")  # the kill left debris behind
            raise KeyboardInterrupt
        return real_write_shard(out, index, vectors, ids)

    monkeypatch.setattr(embed_module, "write_shard", dies_on_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        embed_images(embedder, folder, tmp_path / "killed", **options)
    manifest = read_manifest(tmp_path / "killed")
    assert (manifest["complete"], len(manifest["shards"]), manifest["count"]) == (False, 2, 14)
    monkeypatch.setattr(embed_module, "write_shard", real_write_shard)

    resumed = embed_images(embedder, folder, tmp_path / "killed", **options)
    assert resumed["throughput"]["images"] == 26 - 14  # only the shards after the last complete one
    assert files_of(tmp_path / "killed") == files_of(tmp_path / "whole")


def test_resume_with_other_options_is_refused(embedder: Embedder, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    embed_images(embedder, folder, out, workers=0, shard_size=10, progress=False)
    with pytest.raises(ExportError, match=r"written with dtype='float32', this run has 'float16'"):
        embed_images(embedder, folder, out, workers=0, shard_size=10, dtype="float16", progress=False)
    (folder / "class_0" / "new.jpg").write_bytes((folder / "class_0" / "000.jpg").read_bytes())
    with pytest.raises(ExportError, match="files_sha256"):
        embed_images(embedder, folder, out, workers=0, shard_size=10, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    with pytest.raises(ExportError, match="exists and is not an embeddings dir"):
        embed_images(embedder, folder, tmp_path / "other", workers=0, progress=False)


def test_float16_file_list_and_loader_workers(embedder: Embedder, folder: Path, tmp_path: Path) -> None:
    listed = sorted((folder / "class_2").glob("*.jpg"))[:5]
    (tmp_path / "list.txt").write_text("".join(f"{p}\n" for p in listed))
    out = tmp_path / "emb"
    embed_images(embedder, tmp_path / "list.txt", out, batch_size=2, workers=2, dtype="float16", progress=False)
    vectors, ids, manifest = load_embeddings(out)
    assert vectors.dtype == np.float16 and manifest["root"] == str((folder / "class_2").resolve())
    assert [r["path"] for r in ids] == [p.name for p in listed] and ids[0]["label"] is None
    np.testing.assert_allclose(vectors.astype(np.float32), embedder.embed(listed), atol=2e-3)


def test_parts_merge_into_the_single_run(embedder: Embedder, folder: Path, tmp_path: Path) -> None:
    assert [len(part_range(26, (i, 3))) for i in range(3)] == [8, 9, 9]
    assert [i for p in range(3) for i in part_range(26, (p, 3))] == list(range(26))
    options = dict(workers=0, shard_size=5, progress=False)
    embed_images(embedder, folder, tmp_path / "whole", **options)
    whole_vectors, whole_ids, _ = load_embeddings(tmp_path / "whole")
    parts = [tmp_path / f"part{i}" for i in range(3)]
    for i, part in enumerate(parts):
        embed_images(embedder, folder, part, part=(i, 3), **options)
    with pytest.raises(ExportError, match=r"parts \[0, 2\] given"):
        merge_parts([parts[2], parts[0]], tmp_path / "bad")
    merged = merge_parts(list(reversed(parts)), tmp_path / "merged")
    vectors, ids, manifest = load_embeddings(tmp_path / "merged")
    assert manifest == merged and (merged["count"], merged["failed"], merged["part"]) == (25, 1, None)
    assert ids == whole_ids
    np.testing.assert_array_equal(vectors, whole_vectors)
    with pytest.raises(ExportError, match="not a part"):
        merge_parts([tmp_path / "whole"], tmp_path / "bad2")


def test_reader_checks_format_schema_and_shards(embedder: Embedder, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    embed_images(embedder, folder, out, workers=0, shard_size=10, progress=False)
    good = json.loads((out / "manifest.json").read_text())
    for change, message in (({"format": "other"}, "not an sslforge embeddings manifest"),
                            ({"schema_version": 2}, "schema version 2"),
                            ({"dim": 3}, r"vectors-00000.npy has shape \(10, \d+\), the manifest says \(10, 3\)")):
        (out / "manifest.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(ExportError, match=message):
            read_manifest(out)
    (out / "manifest.json").write_text(json.dumps(good))
    (out / "ids-00001.jsonl").unlink()
    with pytest.raises(ExportError, match="ids-00001.jsonl listed in manifest.json is missing"):
        read_manifest(out)
    with pytest.raises(ExportError, match="has no manifest.json"):
        read_manifest(tmp_path)


def test_find_images_errors(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="does not exist"):
        find_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="no image files under"):
        find_images(tmp_path / "empty")
