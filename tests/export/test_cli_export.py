"""The export commands end to end through `sslforge`, and their one-line errors."""
import json
from pathlib import Path

import numpy as np
import pytest
from export_helpers import make_model_dir

from export.embedder import Embedder
from export.embeddings import load_embeddings
from pretrain.cli import main
from tests.pretrain.test_cli import subcommand_parsers


def test_commands_are_added_with_help() -> None:
    names = {name for name, _ in subcommand_parsers()}
    assert {("export",), ("export", "onnx"), ("export", "tensorrt"), ("embed",), ("embed", "merge")} <= names
    for name, parser in subcommand_parsers():
        for action in parser._actions:
            assert action.help and len(action.help) > 8, f"{' '.join(name)}: {action.option_strings} has no help"


def test_export_then_embed_then_merge(tmp_path: Path, image_folder: Path, capsys) -> None:
    model = make_model_dir(tmp_path / "run", "test_convnext", classes=["class_0", "class_1", "class_2"])
    assert main(["export", "onnx", str(model.path), "--with-head", "--images", str(image_folder),
                 "--parity-images", "4"]) == 0
    printed = capsys.readouterr().out
    assert "parity ONNX embedding vs PyTorch (fp32, 8 images): max abs diff" in printed and ": ok" in printed
    assert "parity ONNX logits" in printed and f"wrote {model.path / 'model.onnx'}" in printed

    out = tmp_path / "emb"
    common = ["--model", str(model.path), "--images", str(image_folder), "--batch-size", "8", "--workers", "0",
              "--quiet"]
    assert main(["embed", *common, "--out", str(out), "--backend", "onnx", "--shard-size", "16"]) == 0
    printed = capsys.readouterr().out
    assert f"embedded 24 images into {out} (2 shards" in printed
    assert "backend onnx: onnxruntime with CPUExecutionProvider)" in printed  # says where it ran
    vectors, ids, manifest = load_embeddings(out)
    assert manifest["backend"] == "onnx" and manifest["complete"]
    reference = Embedder.load(model.path, "torch").embed([image_folder / r["path"] for r in ids])
    assert np.abs(vectors - reference).max() < 1e-4

    for i in range(2):
        assert main(["embed", *common, "--out", str(tmp_path / f"p{i}"), "--backend", "onnx", "--shard-size", "16",
                     "--shard", f"{i}/2"]) == 0
    assert main(["embed", "merge", "--out", str(tmp_path / "merged"), str(tmp_path / "p0"), str(tmp_path / "p1")]) == 0
    merged_vectors, merged_ids, _ = load_embeddings(tmp_path / "merged")
    assert merged_ids == ids
    np.testing.assert_array_equal(merged_vectors, vectors)


@pytest.mark.parametrize("argv, message", [
    (["export", "onnx", "/no/run"], "model dir /no/run does not exist"),
    (["embed", "--model", "/no/run", "--images", ".", "--out", "x"], "model dir /no/run does not exist"),
    (["embed", "--images", "."], "sslforge embed needs --model, --out"),
    (["embed", "--model", "RUN", "--images", "/no/images", "--out", "OUT"], "image folder /no/images does not exist"),
    (["embed", "--model", "RUN", "--images", ".", "--out", "OUT", "--shard", "3/2"], "--shard 3/2: need 0 <= i < n"),
    (["embed", "--model", "RUN", "--images", ".", "--out", "OUT", "--backend", "onnx"], "run `sslforge export onnx"),
    (["embed", "merge", "--out", "OUT", "/no/part"], "/no/part is not an embeddings dir"),
])
def test_bad_input_is_one_clear_line(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    argv = [a.replace("RUN", str(tmp_path / "run")).replace("OUT", str(tmp_path / "out")) for a in argv]
    make_model_dir(tmp_path / "run")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_model_dir_of_another_schema_is_refused(tmp_path: Path, capsys) -> None:
    model = make_model_dir(tmp_path / "run")
    info = json.loads((model.path / "model.json").read_text())
    (model.path / "model.json").write_text(json.dumps({**info, "schema_version": 7}))
    assert main(["export", "onnx", str(model.path)]) == 2
    assert "schema version 7" in capsys.readouterr().err


def test_under_torchrun_each_rank_embeds_its_part(tmp_path: Path, image_folder: Path, monkeypatch, capsys) -> None:
    model = make_model_dir(tmp_path / "run")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    out = tmp_path / "emb"
    assert main(["embed", "--model", str(model.path), "--images", str(image_folder), "--out", str(out),
                 "--workers", "0", "--quiet", "--device", "cpu"]) == 0
    manifest = json.loads((tmp_path / "emb-part1" / "manifest.json").read_text())
    assert manifest["part"] == {"index": 1, "count": 2, "first": 12, "total": 24} and manifest["count"] == 12
    assert "part 1/2 done" in capsys.readouterr().out
