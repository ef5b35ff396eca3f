"""bench/profile_step.py and bench/speed_pair.py at tiny settings write valid result files, and bench/speed_docs.py
turns fixture results into the docs tables with hand-computed values."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = ["--batch-size", "4", "--workers", "0", "--steps", "1", "--warmup", "1"]


def test_profile_step_writes_a_profile_of_each_setting(image_folder: Path, tmp_path: Path) -> None:
    profile_step = load("profile_step")
    out = profile_step.main(["--data", str(image_folder), "--methods", "simclr", "--sizes", "32", "--stems", "small",
                             "--threads", "1", *TINY, "--out", str(tmp_path / "p.json")])
    result = json.loads(out.read_text())
    assert result["kind"] == "profile" and len(result["commit"]) >= 7 and len(result["load_average_after"]) == 3
    (row,) = result["rows"]
    assert row["setting"]["method"] == "simclr" and row["setting"]["threads"] == 1
    assert set(row["phases_ms"]) == set(profile_step.PHASES) and all(v >= 0 for v in row["phases_ms"].values())
    assert row["step_ms"] == pytest.approx(sum(row["phases_ms"].values()), rel=0.5)
    assert row["flops"]["backward"] > row["flops"]["forward"] > 0  # backward: about twice the forward
    assert 0 < row["peak_fraction"]["forward"] < 5 and row["gemm_peak_gflops"]["fp32"] > 0
    assert set(row["data_work_ms"]) == set(profile_step.DATA_WORK) and row["top_ops"]
    assert row["peak_rss_mb"] > 0
    page = load("speed_docs").profile_page([(str(out), result)])
    assert "| simclr | 32 | small | 1 | loader |" in page


def test_speed_pair_writes_both_toolkits_runs(image_folder: Path, tmp_path: Path) -> None:
    pytest.importorskip("lightly")
    speed_pair = load("speed_pair")
    out = speed_pair.main(["run", "--data", str(image_folder), "--images", "8", "--epochs", "1", "--rounds", "1",
                           "--threads", "1", *TINY, "--out", str(tmp_path / "s.json")])
    result = json.loads(out.read_text())
    assert result["mode"] == "run" and result["settings"]["images"] == 8 and result["complete"] is True
    (cell,) = result["cells"]
    for toolkit in ("sslforge", "lightly"):
        assert len(cell["runs"][toolkit]) == 1
        assert cell[toolkit]["images_per_s"] > 0 and cell[toolkit]["process_s"] > 0
        assert cell[toolkit]["peak_rss_mb"] > 0
    assert cell["runs"]["sslforge"][0]["compiled"] is False  # 2 steps: far below the break-even


def test_linked_subset_gives_both_toolkits_the_same_images(image_folder: Path, tmp_path: Path) -> None:
    speed_pair = load("speed_pair")
    folder = speed_pair.linked_subset(str(image_folder), 10, tmp_path / "subset")
    links = sorted(folder.rglob("*.*"))
    assert len(links) == 10 and all(p.is_symlink() and p.resolve().is_relative_to(image_folder.resolve())
                                    for p in links)
    assert {p.parent.name for p in links} <= {p.name for p in image_folder.iterdir()}  # class folders kept


MACHINE = {"cpu": "Test CPU", "cores": 2, "torch": "2.x", "python": "3.11"}


def test_profile_page_shares_and_peak_fractions_by_hand() -> None:
    row = {"setting": {"method": "byol", "size": 64, "stem": "standard", "threads": 2, "views": "loader"},
           "images_per_s": 51.2, "phases_ms": {"data_wait": 10, "to_device": 10, "forward": 30, "backward": 40,
                                               "optimizer": 5, "extras": 3, "monitor": 2},
           "peak_fraction": {"forward": 0.5, "backward": 0.25}, "data_work_ms": {"decode": 7, "augment": 21,
                                                                                "collate": 2}, "peak_rss_mb": 812.4}
    result = {"commit": "abcdef1234567890", "machine": MACHINE, "load_average_before": [0.1, 0, 0],
              "load_average_after": [0.3, 0, 0], "settings": {"device": "cpu"}, "kind": "profile", "rows": [row],
              "lightly": [{"setting": row["setting"], "images_per_s": 25.6}]}
    speed_docs = load("speed_docs")
    # (10 + 10) / 100 data, 30 forward, 40 backward, 5 optimizer, (3 + 2) extras
    assert speed_docs.shares(row["phases_ms"]) == {"data": 20, "forward": 30, "backward": 40, "optimizer": 5,
                                                   "extras": 5}
    page = speed_docs.profile_page([("p.json", result)])
    assert ("| byol | 64 | standard | 2 | loader | 51.2 | 20% | 30% | 40% | 5% | 5% | 50% | 25% | 7 / 21 / 2 | 812 |"
            in page)
    assert "| byol | 64 | standard | 51.2 | 25.6 | 2.00x |" in page
    assert "commit abcdef123456" in page and "load average 0.1 before, 0.3 after" in page
    breakeven = {**result, "kind": "break-even", "rows": [
        {"setting": row["setting"], "eager_step_ms": 1000, "warm_step_ms": 800, "cold_break_even_steps": 250,
         "warm_break_even_steps": None}]}
    assert "| byol | 64 | standard | 2 | 1000 | 800 | 250 | never |" in speed_docs.profile_page([("b.json", breakeven)])


def test_pair_page_ratios_by_hand() -> None:
    cell = {"method": "vicreg", "stem": "small",
            "sslforge": {"images_per_s": 150.0, "process_s": 40.0, "peak_rss_mb": 1100, "worker_peak_rss_mb": 300},
            "lightly": {"images_per_s": 100.0, "process_s": 60.0, "peak_rss_mb": 1000, "worker_peak_rss_mb": 280}}
    result = {"commit": "0123456789abcdef", "machine": MACHINE, "load_average_before": [0.2, 0, 0],
              "load_average_after": [0.2, 0, 0], "mode": "step", "cells": [cell],
              "settings": {"steps": 10, "warmup": 3, "rounds": 3, "threads": 2, "workers": 2, "batch_size": 128,
                           "image_size": 32}}
    page = load("speed_docs").pair_page([("s.json", result)])
    assert "| vicreg | small | 150.0 | 100.0 | 1.50x | 40.0 | 60.0 | 1.50x | 1100 (300) | 1000 (280) |" in page
    assert "steady images/s, 10 steps after 3" in page


def _pair(mode: str, started: str, cells: list[tuple[str, str, float, float]], complete: bool = True, **st) -> dict:
    """A speed_pair result: cells of (method, stem, sslforge value, lightly value) as images/s (step) or s (run)."""
    key = "images_per_s" if mode == "step" else "process_s"
    return {"mode": mode, "started": started, "complete": complete, "machine": MACHINE,
            "settings": {"batch_size": 128, "image_size": 32, **st},
            "cells": [{"method": m, "stem": stem, "sslforge": {key: a}, "lightly": {key: b}}
                      for m, stem, a, b in cells]}


def test_readme_speed_line_quotes_the_newest_finished_pairs() -> None:
    speed_docs = load("speed_docs")
    old = _pair("step", "2026-01-01", [("simclr", "small", 10, 10)])
    step = _pair("step", "2026-02-01", [("simclr", "small", 30, 20), ("byol", "standard", 12, 10)])
    cut = _pair("step", "2026-03-01", [("simclr", "small", 99, 1)], complete=False)
    run = _pair("run", "2026-02-02", [("simclr", "small", 50, 65)], images=1280, epochs=1, preset="1280")
    line = speed_docs.pair_sentence([("a", old), ("b", step), ("c", cut), ("d", run)])
    # 30 / 20 = 1.50, 12 / 10 = 1.20; the run: lightly 65 s / sslforge 50 s = 1.30
    assert "steady-state images/s 1.20-1.50x lightly 1.6.0's (byol, simclr; small and standard stem)" in line
    assert "a whole run of 1,280 images x 1 epoch 1.30x as fast" in line and "2 CPU cores, 32 px, batch 128" in line
    assert "no pair from a quiet machine" in speed_docs.pair_sentence([("c", cut)])

