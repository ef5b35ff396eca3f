"""The speed defaults (pretrain/train/speed.py): the compile decision and its fallback, the core split, the
batched-views decision, reading the loss every N steps; and their options in the config, YAML and CLI."""
import argparse
import csv
from pathlib import Path

import pytest
import torch
import yaml

from pretrain.ground.errors import ConfigError
from pretrain.ground.modeldir import load_model_dir
from pretrain.train import speed
from pretrain.train.config import PretrainConfig
from pretrain.train.options import add_pretrain_options, config_from_args
from pretrain.train.trainer import Trainer

CPU = torch.device("cpu")


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.read_text().splitlines()))


def test_compile_decision_at_the_break_even(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(speed.COMPILE_BREAK_EVEN_STEPS, "cpu", 100)
    monkeypatch.setattr(speed, "has_cpp_compiler", lambda: True)
    assert speed.compile_decision("auto", 99, CPU)[0] is False
    assert speed.compile_decision("auto", 100, CPU)[0] is True
    assert speed.compile_decision("false", 10**6, CPU) == (False, "off (--no-compile)")
    assert speed.compile_decision("true", 1, CPU)[0] is True
    assert speed.compile_decision("auto", 10**6, torch.device("mps"))[0] is False
    monkeypatch.setattr(speed, "has_cpp_compiler", lambda: False)
    compiled, why = speed.compile_decision("auto", 10**6, CPU)
    assert not compiled and "g++" in why  # auto goes on without it
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):  # an explicit --compile is an error
        speed.compile_decision("true", 10**6, CPU)


def _run(image_folder: Path, out: Path, tiny_config, **changes) -> Path:
    return Trainer(tiny_config(image_folder, out, **{"epochs": 1, **changes}), progress=False).fit()


def test_auto_compile_below_and_above_the_break_even(image_folder: Path, tmp_path: Path, tiny_config,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    graphs: list = []

    def traced_only(graph, example_inputs):  # the compiler's place, without its minutes of code generation
        graphs.append(graph)
        return graph.forward

    monkeypatch.setattr(speed, "inductor", traced_only)
    monkeypatch.setattr(speed, "has_cpp_compiler", lambda: True)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    steps = 3  # 24 images / batch 8, one epoch
    monkeypatch.setitem(speed.COMPILE_BREAK_EVEN_STEPS, "cpu", steps + 1)
    below = load_model_dir(_run(image_folder, tmp_path / "below", tiny_config)).info["training"]
    assert below["steps"] == steps and below["compiled"] is False and not graphs
    monkeypatch.setitem(speed.COMPILE_BREAK_EVEN_STEPS, "cpu", steps)
    above = load_model_dir(_run(image_folder, tmp_path / "above", tiny_config)).info["training"]
    assert above["compiled"] is True and graphs  # torch.compile traced the networks and called the compiler
    off = load_model_dir(_run(image_folder, tmp_path / "off", tiny_config, compile="false")).info["training"]
    assert off["compiled"] is False


def test_a_failing_compiler_is_one_line_and_the_run_equals_an_uncompiled_one(
        image_folder: Path, tmp_path: Path, tiny_config, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    calls: list = []

    def broken(graph, example_inputs):
        calls.append(graph)
        raise RuntimeError("code generation failed\nsecond line of the compiler's message")

    monkeypatch.setattr(speed, "inductor", broken)
    monkeypatch.setattr(speed, "has_cpp_compiler", lambda: True)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    plain = _run(image_folder, tmp_path / "plain", tiny_config, compile="false")
    capsys.readouterr()
    failed = _run(image_folder, tmp_path / "failed", tiny_config, compile="true")
    lines = [line for line in capsys.readouterr().out.splitlines() if "compile" in line]
    assert len(calls) == 1  # after the failure no network asks the compiler again
    assert lines == ["compile: torch.compile failed (RuntimeError: code generation failed); training without it"]
    a, b = read_csv(plain / "metrics.csv"), read_csv(failed / "metrics.csv")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert float(y["loss"]) == pytest.approx(float(x["loss"]), abs=1e-6)
    assert load_model_dir(failed).info["training"]["steps"] == 3


def test_a_backward_that_fails_to_compile_is_caught_like_a_forward(
        image_folder: Path, tmp_path: Path, tiny_config, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """torch compiles a backward lazily, at the first backward pass; the run asks for it with the forward, so its
    failure takes the same one-line fallback instead of stopping the run mid-step."""
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    def backward_fails(graph, example_inputs):
        raise RuntimeError("backward code generation failed")

    def forward_only(graph, example_inputs):  # AOTAutograd as inductor runs it, with a backward that cannot compile
        return aot_module_simplified(graph, example_inputs, fw_compiler=lambda g, _: make_boxed_func(g.forward),
                                     bw_compiler=backward_fails)

    monkeypatch.setattr(speed, "inductor", forward_only)
    monkeypatch.setattr(speed, "has_cpp_compiler", lambda: True)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    run = _run(image_folder, tmp_path / "run", tiny_config, compile="true")
    lines = [line for line in capsys.readouterr().out.splitlines() if "compile" in line]
    assert lines == ["compile: torch.compile failed (RuntimeError: backward code generation failed); "
                     "training without it"]
    assert load_model_dir(run).info["training"]["steps"] == 3


def test_reading_the_loss_every_n_steps_logs_the_same_rows(image_folder: Path, tmp_path: Path, tiny_config) -> None:
    every = read_csv(_run(image_folder, tmp_path / "every", tiny_config, epochs=2, sync_every=1) / "metrics.csv")
    batched = read_csv(_run(image_folder, tmp_path / "n", tiny_config, epochs=2, sync_every=4) / "metrics.csv")
    assert [r["step"] for r in batched] == [str(s) for s in range(1, 7)]
    for x, y in zip(every, batched):
        for key in ("loss", "lr", "epoch", "emb_std", "eff_rank"):
            assert x[key] == y[key], key  # read from the same tensors: the same digits


def test_split_cores_on_given_core_counts() -> None:
    assert speed.split_cores(1, "cpu") == (1, 1)
    assert speed.split_cores(2, "cpu") == (2, 2)
    assert speed.split_cores(16, "cpu") == (8, 16)
    assert speed.split_cores(64, "cpu") == (8, 64)
    assert speed.split_cores(2, "cuda") == (1, 1)
    assert speed.split_cores(16, "cuda") == (8, 8)
    assert speed.split_cores(16, "cuda", workers=2) == (2, 14)
    assert speed.split_cores(16, "cpu", workers=0, threads=3) == (0, 3)  # given values are kept


def test_available_cores_share_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speed.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert speed.available_cores() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert speed.available_cores() == 1


def test_batched_views_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    assert speed.batched_views_pay("cpu", 0, "simclr", False) is False  # not a default until measured
    monkeypatch.setattr(speed, "BATCHED_VIEWS_MAX_WORKERS", 1)
    assert speed.batched_views_pay("cpu", 1, "simclr", False) is True
    assert speed.batched_views_pay("cpu", 2, "simclr", False) is False
    assert speed.batched_views_pay("cpu", 0, "lorot", False) is False  # no batched pipeline of that name
    assert speed.batched_views_pay("cpu", 0, "simclr", True) is False  # per-image state
    assert speed.batched_views_pay("cuda", 0, "simclr", False) is False  # --gpu-augment is the user's choice


def test_sync_every_defaults() -> None:
    assert speed.sync_every(None, CPU) == 1
    assert speed.sync_every(None, torch.device("cuda")) == speed.GPU_SYNC_EVERY
    assert speed.sync_every(3, torch.device("cuda")) == 3


def _parse(argv: list[str]) -> PretrainConfig:
    parser = argparse.ArgumentParser()
    add_pretrain_options(parser)
    return config_from_args(parser.parse_args(argv))[0]


def test_compile_option_cli_yaml_and_old_saved_configs(tmp_path: Path) -> None:
    assert PretrainConfig().compile == "auto"
    assert _parse([]).compile == "auto"
    assert _parse(["--compile"]).compile == "true"
    assert _parse(["--no-compile"]).compile == "false"
    assert _parse(["--compile", "auto"]).compile == "auto"
    for written, read in ((False, "false"), (True, "true"), ("auto", "auto")):  # old configs held a bool
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"compile": written}))
        assert _parse(["--config", str(path)]).compile == read
        assert PretrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(PretrainConfig(compile=written).to_dict()))
                                        ).compile == read
    with pytest.raises(ConfigError, match="compile must be one of auto, true, false"):
        PretrainConfig(compile="sometimes")
    with pytest.raises(ConfigError, match="threads must be a positive integer"):
        PretrainConfig(threads=0)
    with pytest.raises(ConfigError, match="sync_every must be a positive integer"):
        PretrainConfig(sync_every=0)


def test_the_run_records_its_cores_and_restores_the_thread_count(image_folder: Path, tmp_path: Path,
                                                                 tiny_config) -> None:
    before = torch.get_num_threads()
    out = _run(image_folder, tmp_path / "run", tiny_config, threads=1, compile="false")
    assert torch.get_num_threads() == before
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["threads"] == 1 and saved["workers"] == 0
    training = load_model_dir(out).info["training"]
    assert training["threads"] == 1 and training["peak_rss_mb"] > 0 and training["images_per_s"] > 0
