"""The shared command-line options (pretrain/ground/cliargs.py): declared once, they parse and read the same in
every command of every stage that has them."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.ground import cliargs

ROOT = Path(__file__).resolve().parents[2]


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every (sub-)command of `sslforge`, the later stages' included, by its name ("eval knn", "index add", ...)."""
    from pretrain.cli import build_parser

    found = {}

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        found[name] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(sub, f"{name} {sub_name}".strip())

    walk(build_parser(), "")
    return found


def option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


def test_the_helpers_parse_and_show_their_defaults() -> None:
    p = argparse.ArgumentParser()
    cliargs.add_model(p, required=False)
    cliargs.add_device(p)
    cliargs.add_batch_size(p, default=64)
    cliargs.add_workers(p)
    cliargs.add_quiet(p)
    cliargs.add_knn_vote(p, short_k=True)
    args = p.parse_args([])
    assert vars(args) == {"model": None, "device": "auto", "batch_size": 64, "workers": None, "quiet": False,
                          "k": 200, "temperature": 0.1}
    args = p.parse_args(["--model", "runs/a", "--device", "cuda:1", "--batch-size", "8", "--workers", "0", "--quiet",
                         "-k", "5", "--temperature", "0.5"])
    assert (args.model, args.device, args.batch_size, args.workers, args.quiet, args.k, args.temperature) == \
        ("runs/a", "cuda:1", 8, 0, True, 5, 0.5)
    assert "(default: CPU cores, max 8)" in option(p, "--workers").help
    assert "(default: 64)" in option(p, "--batch-size").help
    assert option(p, "--model").metavar == "RUN_DIR"
    required = argparse.ArgumentParser()
    cliargs.add_model(required)  # required unless the command says otherwise
    with pytest.raises(SystemExit):
        required.parse_args([])


def test_an_option_reads_the_same_in_two_stages_commands() -> None:
    """`eval knn` (pretrain) and `embed` (export), `plot tsne` and `index add` (serve): the same flag, type, default
    wording and value parsed; only a command's own note or default differs."""
    cmds = commands()
    knn, embed, tsne, add = cmds["eval knn"], cmds["embed"], cmds["plot tsne"], cmds["index add"]
    assert option(knn, "--device").help == cliargs.DEVICE_HELP
    assert option(embed, "--device").help == cliargs.DEVICE_HELP + "; --backend torch only"
    assert option(add, "--device").help == option(embed, "--device").help == option(cmds["serve"], "--device").help
    assert option(knn, "--batch-size").help == option(embed, "--batch-size").help == "images per forward pass " \
        "(default: 256)"
    assert option(tsne, "--workers").help == option(knn, "--workers").help
    assert option(add, "--workers").help == option(embed, "--workers").help
    assert option(knn, "--quiet").help == option(embed, "--quiet").help == option(add, "--quiet").help
    argv = ["--device", "cuda:1", "--batch-size", "8", "--workers", "0", "--quiet"]
    for parser, rest in ((knn, ["--model", "m", "--train", "a", "--test", "b"]), (embed, ["--model", "m"]),
                         (tsne, ["--model", "m", "--data", "d"]), (add, ["--model", "m"])):
        args = parser.parse_args(argv + rest)
        assert (args.device, args.batch_size, args.workers, args.quiet, args.model) == ("cuda:1", 8, 0, True, "m")


def test_the_knn_vote_is_the_same_in_eval_knn_and_index_classify() -> None:
    cmds = commands()
    knn, classify = cmds["eval knn"], cmds["index classify"]
    for flag in ("--k", "--temperature"):
        assert option(knn, flag).help == option(classify, flag).help
        assert option(knn, flag).default == option(classify, flag).default
    assert option(classify, "-k").option_strings == ["-k", "--k"] and option(knn, "--k").option_strings == ["--k"]


def test_every_shared_flag_comes_from_the_helper() -> None:
    """Every --model is a RUN_DIR, every --quiet a switch, every torch --device reads DEVICE_HELP, the training
    commands' (a config field) too; retrieval's --device, which picks where Faiss runs, is another option and keeps
    its own choices."""
    for name, parser in commands().items():
        for action in parser._actions:
            if "--model" in action.option_strings and action.default is not argparse.SUPPRESS:
                assert action.metavar == "RUN_DIR", name  # (a training config's field is its own option)
            if "--quiet" in action.option_strings:
                assert isinstance(action, argparse._StoreTrueAction) and action.help.startswith("no progress"), name
            if "--device" in action.option_strings and action.choices is None:
                assert action.help.startswith(cliargs.DEVICE_HELP), name
            if "--device" in action.option_strings and action.choices is not None:
                assert tuple(action.choices) == ("auto", "cpu", "gpu"), name


def test_the_helper_imports_no_torch() -> None:
    """Retrieval's commands use it, and retrieval runs without torch."""
    code = "import sys, pretrain.ground.cliargs; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
