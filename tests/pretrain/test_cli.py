"""The command line end to end: help texts, pretrain -> eval knn -> eval linear, quickstart, bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.cli import build_parser, main
from pretrain.ground.modeldir import load_model_dir
from pretrain.train.config import PretrainConfig
from pretrain.train.options import DICT_OPTIONS

TINY = ["--backbone", "test_resnet", "--image-size", "32", "--batch-size", "8", "--workers", "0",
        "--optimizer", "sgd", "--lr", "0.5", "--quiet"]


def subcommand_parsers(parser=None, prefix=()):
    parser = parser or build_parser()
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            for name, sub in action.choices.items():
                yield prefix + (name,), sub
                yield from subcommand_parsers(sub, prefix + (name,))


def test_every_option_of_every_command_has_help() -> None:
    parsers = list(subcommand_parsers())
    assert {p for p, _ in parsers} >= {("pretrain",), ("eval",), ("eval", "knn"), ("eval", "linear"), ("quickstart",)}
    for name, parser in parsers:
        for action in parser._actions:
            assert action.help and len(action.help) > 8, f"{' '.join(name)}: {action.option_strings} has no help"


def test_pretrain_help_lists_every_config_field() -> None:
    text = subprocess.run([sys.executable, "-m", "pretrain.cli", "pretrain", "--help"], capture_output=True,
                          text=True, check=True).stdout
    for f in PretrainConfig.fields():
        flag = DICT_OPTIONS.get(f.name, "--" + f.name.replace("_", "-"))
        assert flag in text, flag


def test_pretrain_then_knn_then_linear_probe(image_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(image_folder), "--epochs", "1", "--out", str(out),
                 "--method-arg", "out_dim=16", *TINY]) == 0
    assert f"model dir: {out}" in capsys.readouterr().out

    common = ["--model", str(out), "--train", str(image_folder), "--test", str(image_folder), "--workers", "0",
              "--quiet"]
    assert main(["eval", "knn", *common, "--k", "5"]) == 0
    assert "top-1" in capsys.readouterr().out
    assert main(["eval", "linear", *common, "--epochs", "20"]) == 0
    printed = capsys.readouterr().out
    top1 = float(printed.split("top-1 ")[1].split()[0])
    assert top1 > 0.9  # colour-coded classes: the probe must find them

    model = load_model_dir(out)
    assert model.classes == ["class_0", "class_1", "class_2"]
    assert model.info["head"]["metrics"]["top1"] == pytest.approx(top1, abs=1e-4)
    head = model.load_head()
    assert head.out_features == 3 and head.in_features == model.embedding_dim


def test_resume_from_the_command_line(image_folder: Path, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "run")
    assert main(["pretrain", "--data", str(image_folder), "--epochs", "1", "--out", out, *TINY]) == 0
    assert main(["pretrain", "--resume", "--out", out, "--epochs", "2", "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "model.json").read_text())["training"]["steps"] == 6
    capsys.readouterr()
    assert main(["pretrain", "--resume", "--out", out, "--batch-size", "4"]) == 2
    assert "batch_size was 8" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "--data", "/no/such/folder"], "image folder /no/such/folder does not exist"),
    (["pretrain", "--backbone", "resnet_18"], "unknown backbone 'resnet_18' (did you mean"),
    (["eval", "knn", "--model", "/no/run", "--train", ".", "--test", "."], "model dir /no/run does not exist"),
    (["pretrain", "--method", "simclr3"], "method must be one of"),
    (["pretrain", "--image-size", "20000"], "image_size must be at most 1024 pixels"),
    (["pretrain", "--backbone-arg", "checkpoint_path=/etc/passwd"], "backbone argument checkpoint_path is not allowed"),
])
def test_bad_input_is_one_clear_line(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_quickstart_end_to_end(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "qs")
    argv = ["quickstart", "--out", out, "--backbone", "test_resnet", "--images", "64", "--epochs", "1",
            "--batch-size", "32", "--quiet"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "trained" in text and "random init" in text and f"Model dir: {Path(out).resolve()}" in text
    assert main(argv) == 0  # a second run re-evaluates the finished model
    assert "already trained" in capsys.readouterr().out


def test_killed_run_resumes_from_its_last_checkpoint(image_folder: Path, tmp_path: Path) -> None:
    """SIGKILL a real `sslforge pretrain` process mid-run; `--resume` finishes it with all steps done."""
    import signal
    import time

    out = tmp_path / "run"
    argv = [sys.executable, "-m", "pretrain.cli", "pretrain", "--data", str(image_folder), "--epochs", "8",
            "--out", str(out), "--checkpoint-every-steps", "1", *TINY]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # let it get a few steps further, probably into a checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.json").exists(), "the run finished before it could be killed"
    assert main(["pretrain", "--resume", "--out", str(out), "--quiet"]) == 0
    assert not list(out.glob(".*.tmp"))  # temp files of writes cut by the kill are cleared on resume
    model = load_model_dir(out)
    assert model.info["training"]["steps"] == 24
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, 25))


def test_pretrain_says_where_it_trains(image_folder: Path, tmp_path: Path, capsys) -> None:
    argv = [a for a in TINY if a != "--quiet"]
    assert main(["pretrain", "--data", str(image_folder), "--epochs", "1", "--out", str(tmp_path / "run"),
                 "--method-arg", "out_dim=16", *argv]) == 0
    printed = capsys.readouterr()
    assert "device: cpu, fp32" in printed.out + printed.err
