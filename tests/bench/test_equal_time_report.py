"""The equal-time page is generated from result files: means, sample standard deviations, the random-init row,
steps to random init + 0.05 and the target, checked against values worked out by hand."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
_spec = importlib.util.spec_from_file_location("equal_time_report", ROOT / "bench" / "equal_time_report.py")
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def _result(root: Path, method: str, contender: str, seed: int, test: float, val: float, curve: list[tuple],
            minutes: float = 10, batch: int = 128, steps: int = 600) -> None:
    folder = root / method / f"{minutes:g}min-b{batch}"
    folder.mkdir(parents=True, exist_ok=True)
    data = {"contender": contender, "method": method, "seed": seed, "key": "k", "commit": "c",
            "settings": {"method": method, "minutes": minutes, "batch": batch, "eval": "val"},
            "final": {"test": {"top1": test, "top5": 0.9}, "val": {"top1": val, "top5": 0.9}}}
    if contender == "random-init":
        data["curve_top1"] = curve[0][1]
    else:
        data.update(steps=steps, images_per_s=100.0 + seed, load_average={"mean": 1.0, "max": 2.0 + seed},
                    curve=[{"minutes": 2.0 * (i + 1), "steps": s, "top1": t} for i, (s, t) in enumerate(curve)])
    name = "random-init" if contender == "random-init" else contender.replace(";", "_")
    (folder / f"{name}-s{seed}.json").write_text(json.dumps(data))


@pytest.fixture
def results(tmp_path) -> Path:
    root = tmp_path / "equal-time"
    for seed, (ours, theirs, floor) in enumerate([(0.40, 0.30, 0.29), (0.42, 0.33, 0.30), (0.44, 0.36, 0.31)]):
        _result(root, "simclr", "random-init", seed, floor, 0.28, [(0, 0.25)])  # curve floor 0.25: threshold 0.30
        _result(root, "simclr", "sslforge", seed, ours, ours - 0.01,
                [[(100, 0.28), (200, 0.31)], [(100, 0.30), (200, 0.35)], [(100, 0.2), (300, 0.4)]][seed])
        _result(root, "simclr", "lightly", seed, theirs, theirs, [(100, 0.26), (200, 0.29)], steps=550)
    _result(root, "byol", "random-init", 0, 0.30, 0.29, [(0, 0.30)], minutes=30, batch=64)
    _result(root, "byol", "sslforge", 0, 0.36, 0.35, [(50, 0.36)], minutes=30, batch=64)
    _result(root, "byol", "lightly", 0, 0.34, 0.33, [(50, 0.31)], minutes=30, batch=64)
    return root


def test_mean_and_sample_sd_by_hand() -> None:
    assert report.mean_sd([0.40, 0.42, 0.44]) == pytest.approx((0.42, 0.02))  # sqrt((0.02^2 * 2) / 2)
    # mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9, over n - 1 = 2: 7/3
    assert report.mean_sd([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, (7 / 3) ** 0.5))
    assert report.mean_sd([0.5]) == (0.5, None)
    assert report.steps_to([{"steps": 10, "top1": 0.1}, {"steps": 20, "top1": 0.3}], 0.3) == 20
    assert report.steps_to([{"steps": 10, "top1": 0.1}], 0.3) is None


def test_the_page_from_result_files(results, tmp_path) -> None:
    page = tmp_path / "docs" / "equal-time.md"
    report.main(["--results", str(results), "--out", str(page)])
    lines = page.read_text().splitlines()
    assert "## 10 minutes each, batch 128" in lines and "## 30 minutes each, batch 64" in lines
    assert lines.index("## 10 minutes each, batch 128") < lines.index("## 30 minutes each, batch 64")
    # sslforge: test 0.42 +- 0.02, val 0.41 +- 0.02; curve reaches 0.30 at steps 200, 100, 300 -> mean 200;
    # lead 0.42 - 0.33 = 0.09 > the larger sd 0.03 and 0.42 >= floor 0.30 + 0.05: met
    assert "| simclr | sslforge | 0,1,2 | 0.4200 +- 0.0200 | 0.4100 +- 0.0200 | 200 (val) | 600 | 101.0 | 4.0 | met |" \
        in lines
    # lightly: 0.33 +- 0.03; its curve tops out at 0.29 < 0.30
    assert "| simclr | lightly | 0,1,2 | 0.3300 +- 0.0300 | 0.3300 +- 0.0300 | not reached (550 steps) (val) | 550 | " \
           "101.0 | 4.0 |  |" in lines
    assert "| simclr | random init | 0,1,2 | 0.3000 +- 0.0100 | 0.2800 +- 0.0000 | | | | | |" in lines
    # one seed: no sd, so the lead 0.36 - 0.34 only has to be positive, and 0.36 >= 0.30 + 0.05: met
    assert "| byol | sslforge | 0 | 0.3600 (1 seed) | 0.3500 (1 seed) | 50 (val) | 600 | 100.0 | 2.0 | met |" in lines


def test_the_target_says_why_it_is_not_met() -> None:
    assert report.target({"sslforge": {"test": [0.40, 0.42, 0.44]}, "lightly": {"test": [0.39, 0.41, 0.43]}},
                         [0.30]) == "not met: lead +0.0100 not above sd 0.0200"
    assert report.target({"sslforge": {"test": [0.33]}, "lightly": {"test": [0.20]}}, [0.30]) == \
        "not met: < random + 0.05"
    assert report.target({"sslforge": {"test": [0.5]}}, [0.3]) == "-"
    assert report.target({"sslforge;batch_size=64": {"test": [0.5]}, "lightly": {"test": [0.4]}}, [0.3]) == "met"
    assert report.target({"sslforge;lr=1": {"test": [0.5]}, "sslforge;lr=2": {"test": [0.5]},
                          "lightly": {"test": [0.4]}}, [0.3]) == "-"  # which variant is ours: not said


def test_no_results_yet_says_so(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    page = tmp_path / "page.md"
    report.main(["--results", str(tmp_path / "empty"), "--out", str(page)])
    assert "No result files yet" in page.read_text()
    with pytest.raises(SystemExit):
        report.main(["--results", str(tmp_path / "missing"), "--out", str(page)])
