"""The SimCLRv2 table's label seeds: each seed's rows have their own names, and a cell is their mean and sample sd."""
from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("simclr2_table", ROOT / "bench" / "simclr2_table.py")
table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(table)

BASE = ["--train", "T", "--test", "V"]


def test_label_seeds_default_to_the_seed_and_the_next_two_and_must_include_it() -> None:
    assert table.parse_args(BASE).label_seeds == [0, 1, 2]
    assert table.parse_args([*BASE, "--seed", "3"]).label_seeds == [3, 4, 5]
    assert table.parse_args([*BASE, "--label-seeds", "0"]).label_seeds == [0]
    assert table.parse_args([*BASE, "--seed", "3", "--label-seeds", "3,4,5"]).label_seeds == [3, 4, 5]
    with pytest.raises(SystemExit):
        table.parse_args([*BASE, "--seed", "1", "--label-seeds", "2,3"])


def test_each_seed_has_its_own_run_and_result_and_the_base_seed_keeps_the_old_names(tmp_path) -> None:
    pipeline = table.Pipeline(table.parse_args([*BASE, "--out", str(tmp_path), "--label-seeds", "0,1,2"]))
    assert pipeline.folder("ft-head1", 0.1) == tmp_path / "ft-head1-0.1"  # the distilled rows' teacher
    assert pipeline.folder("ft-head1", 0.1, 2) == tmp_path / "ft-head1-0.1-seed2"
    assert pipeline.labels(0.01, 1)[-2:] == ["--seed", "1"]
    calls = []
    for s in (0, 1):
        pipeline.row("supervised", 0.01, lambda s=s: calls.append(s) or {"top1": 0.1 * s, "top5": 0.5}, s)
    again = pipeline.row("supervised", 0.01, lambda: calls.append("again") or {}, 1)
    assert calls == [0, 1] and again["top1"] == pytest.approx(0.1)  # read back, not re-run
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["supervised-0.01-seed1.json",
                                                                         "supervised-0.01.json"]


def test_a_cell_is_one_run_or_the_mean_and_sample_sd_of_the_seeds() -> None:
    assert table.cell([{"top1": 0.41234, "top5": 0.9}]) == "0.4123 / 0.9000"
    runs = [{"top1": x, "top5": y} for x, y in ((0.50, 0.90), (0.52, 0.92), (0.57, 0.94))]
    mean, sd = statistics.mean([0.50, 0.52, 0.57]), statistics.stdev([0.50, 0.52, 0.57])
    assert table.cell(runs) == f"{mean:.4f} +- {sd:.4f} / {0.92:.4f}"
