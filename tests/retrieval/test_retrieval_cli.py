"""End to end through the sslforge CLI: embed a tiny image folder, build, search, classify, eval."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from retrieval_helpers import collection
from shared_helpers import make_tiny_config, write_image_folder

from export.embedder import Embedder
from pretrain.cli import main
from pretrain.train.evaluate import knn_scores
from retrieval import Index, write_embeddings
from retrieval.knn import classify


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def tiny_run(image_folder, tmp_path_factory):
    """One tiny trained model dir shared by this module's tests (training is the slow part)."""
    from pretrain.train.trainer import Trainer

    return Trainer(make_tiny_config(image_folder, tmp_path_factory.mktemp("run") / "run", epochs=1),
                   progress=False).fit()


@pytest.fixture
def embedded(tiny_run, image_folder, tmp_path):
    files = sorted(image_folder.rglob("*.jpg"))
    embedder = Embedder.load(tiny_run, "torch", device="cpu")
    vectors, fingerprint = embedder.embed(files), embedder.fingerprint
    rel = [str(f.relative_to(image_folder)) for f in files]
    emb = write_embeddings(tmp_path / "emb", vectors, rel, [f.parent.name for f in files],
                           model_fingerprint=fingerprint, root=str(image_folder))
    return emb, files


def test_build_search_classify_eval(embedded, tiny_run, tmp_path, capsys) -> None:
    emb, files = embedded
    idx = tmp_path / "idx"
    assert main(["index", "build", "--embeddings", str(emb), "--out", str(idx), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "--kind auto picked flat: 24 vectors < 100,000" in out and "built on the cpu" in out

    sheet = tmp_path / "sheet.png"
    assert main(["search", "--index", str(idx), "--model", str(tiny_run), str(files[3]), "-k", "4",
                 "--sheet", str(sheet)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"query {files[3]}"
    first = lines[1].split()
    assert first[0] == "1." and float(first[1]) == pytest.approx(1.0, abs=1e-4) and first[3] == "class_0/003.jpg"
    assert len([ln for ln in lines if ln.strip()[:2] in ("1.", "2.", "3.", "4.")]) == 4
    with Image.open(sheet) as im:
        assert im.size == (5 * 132, 160)

    assert main(["search", "--index", str(idx), "--query-embeddings", str(emb), "--limit", "2", "-k", "2"]) == 0
    assert capsys.readouterr().out.count("query ") == 2

    assert main(["search", "--index", str(idx), "--model", str(tiny_run), str(files[3]), "-k", "30",
                 "--where", "label=class_2", "--path-prefix", "class_2/00"]) == 0
    out = capsys.readouterr().out
    hits = [ln.split()[-1] for ln in out.splitlines() if ln.strip()[:1].isdigit()]
    assert "filter: label=class_2 and path starts with 'class_2/00'" in out
    assert hits and all(h.startswith("class_2/00") for h in hits) and len(hits) == 8  # 000..007, no others
    assert main(["search", "--index", str(idx), "--model", str(tiny_run), str(files[3]), "--where", "colour=red"]) == 2
    assert "no field 'colour' in this index (fields: label)" in capsys.readouterr().err

    preds = tmp_path / "preds.csv"
    assert main(["index", "classify", "--index", str(idx), "--queries", str(emb), "-k", "5",
                 "--predictions", str(preds)]) == 0
    out = capsys.readouterr().out
    assert "on 24 labelled queries: top-1" in out
    rows = list(csv.DictReader(open(preds)))
    assert len(rows) == 24 and {r["predicted"] for r in rows} <= {"class_0", "class_1", "class_2"}

    report = tmp_path / "eval.json"
    assert main(["index", "eval", "--index", str(idx), "-k", "3", "--sample", "10", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["recall@3"] == 1.0 and result["queries"] == 10 and 0 <= result["precision@3"] <= 1
    assert "precision@3 by label" in capsys.readouterr().out


def test_cli_errors_are_one_line(embedded, tiny_run, tmp_path, capsys) -> None:
    emb, files = embedded
    idx = tmp_path / "idx"
    assert main(["index", "build", "--embeddings", str(emb), "--out", str(idx), "--kind", "hnsw", "--quiet"]) == 0
    other = write_embeddings(tmp_path / "other", np.ones((2, Index.load(idx).dim)), ["a", "b"],
                             model_fingerprint="sha256:0000")
    capsys.readouterr()
    assert main(["index", "classify", "--index", str(idx), "--queries", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sslforge: error: ") and "the queries come from sha256:0000" in err and err.count("\n") == 1
    assert main(["index", "build", "--embeddings", str(tmp_path / "nope"), "--out", str(idx)]) == 2
    assert "manifest.json not found" in capsys.readouterr().err
    assert main(["search", "--index", str(idx), str(files[0])]) == 2
    assert "need --model" in capsys.readouterr().err
    assert main(["index", "build", "--embeddings", str(emb), "--out", str(idx), "--kind", "ivf", "--nlist", "99"]) == 2
    assert "--nlist 99 exceeds the 24 vectors" in capsys.readouterr().err


def test_pretrain_knn_and_index_classify_agree() -> None:
    x, paths, labels = collection()
    bank, queries = x[:2500], x[2500:]
    index = Index.build(bank, paths[:2500], labels[:2500], kind="flat")
    ours, classes = classify(index, queries, k=20, temperature=0.1)
    codes = torch.tensor([classes.index(c) for c in labels[:2500]])
    theirs = knn_scores(torch.from_numpy(bank), codes, torch.from_numpy(queries), num_classes=len(classes), k=20,
                        temperature=0.1)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-4)


def test_quickstart_on_a_tiny_sample(embedded, tiny_run, tmp_path, capsys) -> None:
    from retrieval.quickstart import quickstart

    emb, _ = embedded
    result = quickstart(run=tiny_run, embeddings=emb, out=tmp_path / "qs", progress=False)
    out = capsys.readouterr().out
    assert "--kind auto: 24 vectors < 100,000" in out and "its 5 nearest other images" in out
    index = Index.load(tmp_path / "qs" / "index")
    assert index.kind == "flat" and len(index) == 24 and 0 <= result["top1"] <= 1
