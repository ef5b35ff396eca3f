"""`sslforge embed` on folders a careless user or an attacker hands it: decompression bombs, file names
that are not UTF-8."""
import json
import os
from pathlib import Path

import pytest
import torch
from shared_helpers import header_only_png

from export.embed import embed_images
from export.embedder import Embedder
from export.embeddings import load_embeddings


@pytest.fixture(scope="module")
def embedder(resnet_dir) -> Embedder:
    return Embedder.load(resnet_dir.path, "torch")


@pytest.mark.parametrize("workers", [0, 1])
def test_decompression_bomb_is_skipped_and_listed(embedder: Embedder, image_folder: Path, tmp_path: Path,
                                                  workers: int) -> None:
    header_only_png(image_folder / "class_1" / "bomb.png", 30_000, 30_000)  # 900 M pixels in ~100 bytes
    out = tmp_path / "emb"
    manifest = embed_images(embedder, image_folder, out, batch_size=8, workers=workers, progress=False)
    assert (manifest["count"], manifest["failed"], manifest["complete"]) == (24, 1, True)
    path, reason = (out / "failed.txt").read_text().splitlines()[0].split("\t")
    assert path == "class_1/bomb.png" and "DecompressionBombError" in reason
    again = embed_images(embedder, image_folder, out, batch_size=8, workers=workers, progress=False)
    assert again["count"] == 24 and again["throughput"]["images"] == 0  # the rerun finds a finished job


def test_file_names_that_are_not_utf8_round_trip(embedder: Embedder, image_folder: Path, tmp_path: Path) -> None:
    raw = [b"caf\xe9.jpg", b"\xff\xfe odd.jpg"]  # Latin-1 and plain bytes: no UTF-8 decoding of either exists
    for old, name in zip(("000.jpg", "001.jpg"), raw):
        os.rename(image_folder / "class_0" / old, image_folder / "class_0" / os.fsdecode(name))
    os.mkdir(image_folder / os.fsdecode(b"d\xe8s"))
    (image_folder / os.fsdecode(b"d\xe8s") / os.fsdecode(b"bad\x80.png")).write_bytes(b"not a png")
    (image_folder / os.fsdecode(b"d\xe8s") / os.fsdecode(b"new\nline.jpg")).write_bytes(b"not a jpeg either")
    out = tmp_path / "emb"
    embed_images(embedder, image_folder, out, batch_size=8, workers=0, shard_size=10, progress=False)
    vectors, ids, manifest = load_embeddings(out)
    assert manifest["failed"] == 2 and len(ids) == 24
    stored = {os.fsencode(row["path"]) for row in ids}
    assert {b"class_0/" + name for name in raw} <= stored
    assert all((image_folder / row["path"]).is_file() for row in ids)  # every id opens the file it names
    failed = (out / "failed.txt").read_bytes().splitlines()
    assert [line.split(b"\t")[0] for line in failed] == [b"d\xe8s/bad\x80.png", b"d\xe8s/new\\nline.jpg"]

    from retrieval import read_embeddings  # the retrieval stage reads the same names back
    assert [os.fsencode(p) for p in read_embeddings(out).paths] == [os.fsencode(r["path"]) for r in ids]

    (out / "manifest.json").write_text(json.dumps({**manifest, "complete": False, "count": 10, "failed": 0,
                                                   "shards": manifest["shards"][:1]}))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "manifest.json"}
    embed_images(embedder, image_folder, out, batch_size=8, workers=0, shard_size=10, progress=False)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "manifest.json"}
    assert after == before  # the resumed job rewrites the same bytes


def test_feature_cache_accepts_names_that_are_not_utf8(image_folder: Path, tmp_path: Path) -> None:
    from export_helpers import make_model_dir

    from pretrain.data.images import scan_images
    from pretrain.train.evaluate import cached_features

    os.rename(image_folder / "class_2" / "000.jpg", image_folder / "class_2" / os.fsdecode(b"\xe9t\xe9.jpg"))
    model = make_model_dir(tmp_path / "model")
    images = scan_images(image_folder)
    first = cached_features(model, images, workers=0, progress=False)
    assert len(first.features) == 24 and list((model.path / "cache").iterdir())
    assert torch.equal(cached_features(model, images, workers=0, progress=False).features, first.features)


@pytest.mark.parametrize(("change", "match"), [
    (lambda m: [m], r"must hold a JSON object, not a list"),
    (lambda m: {**m, "shards": [{"vectors": "../../secret.npy", "ids": "ids-00000.jsonl", "count": 1}]},
     r"shards\[0\].vectors must be a string matching"),
    (lambda m: {**m, "dim": "512"}, r"dim must be an integer from 1 to 65536"),
    (lambda m: {**m, "part": [0, 2]}, r"part must be a JSON object, not a list"),
])
def test_hostile_manifest_is_refused_in_one_line(embedder: Embedder, image_folder: Path, tmp_path: Path,
                                                 change, match: str) -> None:
    from export.embeddings import read_manifest
    from export.errors import ExportError

    out = tmp_path / "emb"
    embed_images(embedder, image_folder, out, batch_size=8, workers=0, progress=False)
    (out / "manifest.json").write_text(json.dumps(change(json.loads((out / "manifest.json").read_text()))))
    for read in (lambda: read_manifest(out), lambda: embed_images(embedder, image_folder, out, workers=0,
                                                                   progress=False)):
        with pytest.raises(ExportError, match=match) as e:
            read()
        assert "\n" not in str(e.value)
    (out / "manifest.json").write_bytes(b'{"format": "\xff"}')
    with pytest.raises(ExportError, match="is not UTF-8 text"):
        read_manifest(out)
