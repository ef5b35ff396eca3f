"""The faster-start search: valid candidates, one lever each, run on validation only, and its table."""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fast = _load("fast_start")
knn = _load("equal_time_knn")


@pytest.mark.parametrize("method", sorted(fast.CANDIDATES))
def test_every_candidate_is_a_valid_recipe_that_moves_one_lever(method, tmp_path) -> None:
    from shared_helpers import write_image_folder

    args = types.SimpleNamespace(method=method, data=str(write_image_folder(tmp_path / "d")), batch=64, device="cpu")
    default = knn.recipe(args, "sslforge")
    specs = [s for s in fast.CANDIDATES[method] if s.startswith("sslforge;")]
    assert "sslforge" in fast.CANDIDATES[method] and "lightly" in fast.CANDIDATES[method]
    for spec in specs:
        r = knn.recipe(args, spec)
        moved = {k for k in r if r[k] != default.get(k)} | {f"method_args.{k}" for k in r["method_args"]
                                                           if r["method_args"][k] != default["method_args"].get(k)}
        moved.discard("method_args")
        assert len(moved) == 1, (spec, moved)  # warmup_epochs, batch_size or one method argument
    flat = [s for pair in fast.pairs(method) for s in pair]
    assert set(flat) == set(fast.CANDIDATES[method]) and all(a != b for a, b in fast.pairs(method))


def test_the_search_never_reads_the_test_set(capsys) -> None:
    fast.main(["--method", "byol", "--data", "D", "--val", "V", "--seeds", "0,1", "--dry-run"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(fast.pairs("byol")) == 5
    for line in lines:
        assert "--eval val" in line and "--val V" in line and "--test" not in line and "--seeds 0,1" in line
    assert "'sslforge;method_args={predictor_lr: 20.0}'" in "".join(lines)


def test_the_table_from_result_files(tmp_path) -> None:
    group = tmp_path / "swav" / "10min-b64"
    group.mkdir(parents=True)

    def put(spec, seed, curve, val, steps=300):
        data = {"contender": spec, "seed": seed, "steps": steps, "final": {"val": {"top1": val}},
                "curve": [{"steps": s, "top1": t} for s, t in curve]}
        (group / f"{abs(hash(spec))}-s{seed}.json").write_text(json.dumps(data))

    for seed in (0, 1):
        (group / f"random-init-s{seed}.json").write_text(json.dumps({"contender": "random-init", "seed": seed,
                                                                      "curve_top1": 0.30}))
    put("sslforge", 0, [(100, 0.33), (200, 0.36)], 0.40)
    put("sslforge", 1, [(100, 0.36), (200, 0.40)], 0.42)
    put("lightly", 0, [(100, 0.31), (200, 0.32)], 0.33, steps=250)
    put("lightly", 1, [(100, 0.30), (200, 0.36)], 0.35, steps=250)
    lines = fast.table("swav", group).splitlines()
    assert "| sslforge | 0,1 | 150 | 0.4100 +- 0.0141 | 300 |" in lines  # 200 and 100 steps to 0.35
    assert "| lightly | 0,1 | 200 (1 of 2) | 0.3400 +- 0.0141 | 250 |" in lines
    assert "| sslforge;warmup_epochs=0.5 | - | not run | | |" in lines
