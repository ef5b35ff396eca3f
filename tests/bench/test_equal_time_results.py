"""Equal-time result files: one per contender and seed, written atomically, reused only under the same cache key
(commit, spec, resolved recipe, settings, seed); a stale one is rerun."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
_spec = importlib.util.spec_from_file_location("equal_time_knn", ROOT / "bench" / "equal_time_knn.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
store = bench.store


class FakeChild:
    """Stands in for a contender's process: prints the result a child would."""

    def __init__(self, spec: str, seed: int):
        self.returncode, self.spec, self.seed = 0, spec, seed

    def communicate(self):
        if self.spec == "random-init":
            out = {"final": {"val": {"top1": 0.3, "top5": 0.8}}, "curve_top1": 0.3}
        else:
            out = {"steps": 7, "train_s": 1.0, "images_per_s": 7.0, "curve": [], "scheduled_steps": 7,
                   "load_average": {"mean": 1.0, "max": 1.0, "samples": [1.0], "cpus": 2},
                   "final": {"val": {"top1": 0.4 + self.seed / 100, "top5": 0.9}}}
        return json.dumps(out) + "\n", ""


@pytest.fixture
def harness(monkeypatch, tmp_path):
    launched: list[tuple[str, int]] = []
    recipes = {"sslforge": {"lr": 0.002}, "lightly": {"lr": 0.06}}

    def launch(args, spec, seed, core):
        launched.append((spec, seed))
        return FakeChild(spec, seed)

    monkeypatch.setattr(bench, "_launch", launch)
    monkeypatch.setattr(bench, "recipe", lambda args, spec: dict(recipes[spec]))
    args = types.SimpleNamespace(method="simclr", data="d", val="v", test=None, eval="val", minutes=1.0,
                                 curve_every=0.5, curve_test=10, device="cpu", batch=16,
                                 contenders=["sslforge", "lightly"])
    group = store.group_dir(tmp_path, "simclr", 1.0, 16)
    return types.SimpleNamespace(launched=launched, recipes=recipes, args=args, group=group,
                                 run=lambda seed, commit: bench.run_seed(args, seed, group, commit, [0, 1]))


def test_a_result_is_reused_only_under_the_same_key(harness) -> None:
    rows = harness.run(0, "c1")
    assert sorted(harness.launched) == [("lightly", 0), ("random-init", 0), ("sslforge", 0)]
    files = sorted(p.name for p in harness.group.iterdir())
    assert files == sorted([store.result_path(harness.group, s, 0).name for s in ("sslforge", "lightly")]
                           + ["random-init-s0.json"])
    saved = json.loads(store.result_path(harness.group, "sslforge", 0).read_text())
    assert saved["commit"] == "c1" and saved["recipe"] == {"lr": 0.002} and saved["seed"] == 0
    assert saved["final"]["val"]["top1"] == 0.4 and {r["contender"] for r in rows} == {"sslforge", "lightly",
                                                                                        "random-init"}
    harness.launched.clear()
    harness.run(0, "c1")
    assert harness.launched == []  # same commit, recipe, settings, seed: reused
    harness.run(1, "c1")
    assert sorted(harness.launched) == [("lightly", 1), ("random-init", 1), ("sslforge", 1)]  # a new seed


def test_a_stale_result_is_rerun(harness) -> None:
    harness.run(0, "c1")
    harness.launched.clear()
    harness.run(0, "c2")  # the code changed: everything again
    assert sorted(harness.launched) == [("lightly", 0), ("random-init", 0), ("sslforge", 0)]
    assert json.loads(store.result_path(harness.group, "lightly", 0).read_text())["commit"] == "c2"
    harness.launched.clear()
    harness.recipes["lightly"] = {"lr": 0.03}  # lightly's recipe changed: that contender only
    harness.run(0, "c2")
    assert harness.launched == [("lightly", 0)]
    harness.launched.clear()
    harness.args.minutes = 2.0  # the settings changed (a new group folder for a new budget, too)
    harness.run(0, "c2")
    assert len(harness.launched) == 3
    harness.launched.clear()
    store.result_path(harness.group, "sslforge", 0).write_text("{truncated")  # an unreadable file
    harness.run(0, "c2")
    assert harness.launched == [("sslforge", 0)]
    harness.launched.clear()
    harness.run(0, store.UNKNOWN)
    harness.run(0, store.UNKNOWN)  # outside a git checkout nothing is ever reused
    assert len(harness.launched) == 6


def test_code_commit_follows_the_training_code_only(tmp_path) -> None:
    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    git("config", "user.email", "t@t")
    git("config", "user.name", "t")
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "a.py").write_text("x = 1\n")
    git("add", ".")
    git("commit", "-qm", "code")
    code = git("rev-parse", "HEAD")
    assert store.code_commit(tmp_path) == code
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("results\n")
    git("add", ".")
    git("commit", "-qm", "docs")
    assert store.code_commit(tmp_path) == code  # committing results or docs leaves results fresh
    (tmp_path / "pretrain" / "a.py").write_text("x = 2\n")
    dirty = store.code_commit(tmp_path)
    assert dirty.startswith(code + "+dirty.") and dirty != code
    (tmp_path / "pretrain" / "a.py").write_text("x = 3\n")
    assert store.code_commit(tmp_path) not in (dirty, code)  # each uncommitted change its own
    assert store.code_commit(tmp_path / "pretrain" / "missing") == store.UNKNOWN


def test_writes_are_atomic(tmp_path) -> None:
    path = tmp_path / "g" / "x.json"
    store.write(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1} and [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_the_recipes_in_the_key_are_resolved_in_full(tmp_path) -> None:
    pytest.importorskip("lightly")
    from shared_helpers import write_image_folder

    data = write_image_folder(tmp_path / "images")
    args = types.SimpleNamespace(method="simclr", data=str(data), batch=16, device="cpu")
    ours = bench.recipe(args, "sslforge;lr=0.01")
    assert ours["lr"] == 0.01 and ours["optimizer"] and ours["transform"] and "out" not in ours and "data" not in ours
    assert bench.recipe(args, "sslforge")["lr"] != 0.01  # the default recipe's own lr
    theirs = bench.recipe(args, "lightly")
    assert theirs["views"] == ("SimCLRTransform", {"input_size": 32, "cj_strength": 0.5, "gaussian_blur": 0.0})
    assert theirs["optimizer"]["peak_lr"] == pytest.approx(0.06 * 16 / 128)
