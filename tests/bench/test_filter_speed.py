"""bench/filter_speed.py at a small size: the masks it times match what a plain count says, and it writes its file."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_filter_speed_times_masks_that_match_the_plain_count(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("filter_speed", ROOT / "bench" / "filter_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--rows", "3000", "--repeat", "3", "--cold-repeat", "2", "--out", str(tmp_path / "f.json")])
    result = json.loads(out.read_text())
    by = {r["filter"]: r for r in result["rows"]}
    assert by["shard=0"]["matching"] == len([i for i in range(3000) if i % 20 == 0])
    assert by["path prefix"]["matching"] == len([i for i in range(3000) if i % 10 == 3])
    for r in by.values():
        assert r["cold_ms"] > 0 and r["warm_ms"] > 0 and r["after_add_ms"] > 0
    assert result["commit"] and result["load_average_after"]
