"""`sslforge index add | remove | compact` end to end through the CLI, on a copy of the served index."""
from __future__ import annotations

import shutil

from pretrain.cli import main
from retrieval import Index
from retrieval.journal import LOG_FILE


def test_index_add_remove_compact(served, tmp_path, capsys):
    model, index, images = served
    idx = tmp_path / "index"
    shutil.copytree(index, idx)
    before = Index.load(idx)
    new = images / "class_1"  # inside the index's image root: stored relative to it
    assert main(["index", "add", "--index", str(idx), "--images", str(new), "--model", str(model),
                 "--field", "source=cli", "--label", "fresh", "--workers", "0", "--quiet"]) == 0
    after = Index.load(idx)
    added = range(before.ntotal, after.ntotal)
    assert len(added) == len(list(new.glob("*.jpg")))
    assert all(after.paths[i].startswith("class_1/") and after.labels[i] == "fresh" for i in added)
    assert all(after.meta[i] == {"source": "cli"} for i in added)
    capsys.readouterr()
    query = sorted(new.glob("*.jpg"))[0]
    assert main(["search", "--index", str(idx), "--model", str(model), str(query), "-k", "2",
                 "--where", "source=cli"]) == 0
    hits = [line for line in capsys.readouterr().out.splitlines() if line.strip()[:2] in ("1.", "2.")]
    assert len(hits) == 2 and "fresh" in hits[0] and hits[0].split()[1].startswith("1.0")
    assert main(["index", "remove", "--index", str(idx), "--where", "source=cli"]) == 0
    assert len(Index.load(idx)) == len(before) and (idx / LOG_FILE).exists()
    assert main(["index", "compact", "--index", str(idx)]) == 0
    compacted = Index.load(idx)
    assert not (idx / LOG_FILE).exists() and compacted.ntotal == after.ntotal and len(compacted) == len(before)
    assert main(["index", "remove", "--index", str(idx), "--ids", str(10**6)]) == 2  # a one-line error
    assert "not in the index" in capsys.readouterr().err


def test_index_add_refuses_a_model_of_another_index(served, tmp_path, capsys):
    from serve_helpers import make_model_dir

    _, index, images = served
    idx = tmp_path / "index"
    shutil.copytree(index, idx)
    other = make_model_dir(tmp_path / "other", seed=7).path
    assert main(["index", "add", "--index", str(idx), "--images", str(images), "--model", str(other),
                 "--workers", "0", "--quiet"]) == 2
    assert "holds vectors of model" in capsys.readouterr().err and not (idx / LOG_FILE).exists()
