"""The fine-tuning commands end to end: finetune, eval finetune (a second run only reports), eval head, eval
linear on a share of the labels, distillation from a fine-tuned teacher, and bad input as one line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from shared_helpers import make_tiny_config, write_image_folder

from pretrain.cli import main
from pretrain.ground.modeldir import load_model_dir
from pretrain.train.config import FinetuneConfig
from pretrain.train.options import DICT_OPTIONS
from pretrain.train.trainer import Trainer

QUICK = ["--epochs", "1", "--batch-size", "4", "--workers", "0", "--lr", "0.5", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(train, test, simclr2 model dir)."""
    root = tmp_path_factory.mktemp("finetune-cli")
    train, test = write_image_folder(root / "train", per_class=8), write_image_folder(root / "test", per_class=4,
                                                                                      seed=1)
    cfg = make_tiny_config(train, root / "ssl", method="simclr2", epochs=1, method_args={"out_dim": 16,
                                                                                         "hidden_dim": 24})
    return train, test, Trainer(cfg, progress=False).fit()


def test_finetune_help_lists_every_config_field() -> None:
    text = subprocess.run([sys.executable, "-m", "pretrain.cli", "finetune", "--help"], capture_output=True,
                          text=True, check=True).stdout
    for f in FinetuneConfig.fields():
        assert DICT_OPTIONS.get(f.name, "--" + f.name.replace("_", "-")) in text, f.name


def test_finetune_then_distill_from_it_then_score_the_student(runs, tmp_path: Path, capsys) -> None:
    train, test, ssl = runs
    out = tmp_path / "ft"
    assert main(["finetune", "--model", str(ssl), "--train", str(train), "--test", str(test), "--label-fraction",
                 "0.5", "--from-head-layer", "1", "--out", str(out), *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "fine-tuned (from head layer 1, 0.5 of the labels: 12 images, 1 epoch) on 12 test images: top-1" in printed
    assert load_model_dir(out).classes == ["class_0", "class_1", "class_2"]
    student = tmp_path / "student"
    assert main(["distill", "--teacher", str(out), "--data", str(train), "--backbone", "test_resnet", "--image-size",
                 "32", "--out", str(student), "--batch-size", "8", "--epochs", "1", "--workers", "0", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", "head", "--model", str(student), "--test", str(test), "--workers", "0", "--quiet"]) == 0
    assert "head (distill) of" in capsys.readouterr().out
    assert main(["eval", "head", "--model", str(ssl), "--test", str(test), "--quiet"]) == 2
    assert "has no linear-probe head" in capsys.readouterr().err
    assert main(["finetune", "--resume", "--out", str(out), "--epochs", "2", "--quiet"]) == 0  # extended
    assert load_model_dir(out).info["training"]["steps"] == 6


def test_eval_finetune_is_a_protocol_a_second_run_only_reports(runs, tmp_path: Path, capsys) -> None:
    train, test, ssl = runs
    argv = ["eval", "finetune", "--model", str(ssl), "--train", str(train), "--test", str(test),
            "--labels-per-class", "2", "--out", str(tmp_path / "eval"), *QUICK]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "2 labels per class: 6 images" in first
    stamp = (tmp_path / "eval" / "model.json").stat().st_mtime_ns
    assert main(argv) == 0
    assert capsys.readouterr().out == first and (tmp_path / "eval" / "model.json").stat().st_mtime_ns == stamp
    assert main([*argv[:-len(QUICK)], "--epochs", "1", "--batch-size", "4", "--workers", "0", "--lr", "0.1",
                 "--quiet"]) == 2
    assert "--resume: lr was 0.5" in capsys.readouterr().err
    assert main(["eval", "finetune", "--train", str(train), "--test", str(test), "--quiet"]) == 2
    assert "needs --model RUN_DIR and --test TEST_DIR" in capsys.readouterr().err


def test_frozen_evaluations_take_a_share_of_the_labels(runs, capsys) -> None:
    train, test, ssl = runs
    assert main(["eval", "linear", "--model", str(ssl), "--train", str(train), "--test", str(test),
                 "--label-fraction", "0.25", "--epochs", "3", "--workers", "0", "--quiet", "--no-save"]) == 0
    assert "6 labelled images) on 12 test images" in capsys.readouterr().out
    assert main(["eval", "knn", "--model", str(ssl), "--train", str(train), "--test", str(test),
                 "--labels-per-class", "1", "--k", "3", "--workers", "0", "--quiet"]) == 0
    assert "3 labelled images) on 12 test images" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["finetune", "--model", "nowhere", "--train", "x"], "model dir nowhere does not exist"),
    (["finetune", "--model", "m", "--backbone", "resnet50"], "backbone is the model dir's own"),
    (["finetune", "--label-fraction", "2"], "label_fraction must be in (0, 1]"),
    (["finetune", "--label-fraction", "0.1", "--labels-per-class", "3"], "not both"),
    (["finetune", "--from-head-layer", "1"], "from_head_layer needs --model"),
])
def test_bad_input_is_one_clear_line(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
