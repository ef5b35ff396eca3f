"""Generated blocks in hand-written pages: spliced with the page's indentation, read back, and the blocks the
committed pages carry are exactly what their generators make from the committed result files."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import docblocks  # noqa: E402
import speed_docs  # noqa: E402
import start_from_report  # noqa: E402
import store_speed  # noqa: E402


def test_a_block_in_a_list_item_keeps_its_indentation(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("- **Speed**: measured:\n  <!-- generated:x -->\n  old\n  <!-- /generated:x -->\n- next\n")
    assert docblocks.block(page, "x") == "old"
    assert docblocks.splice(page, "x", "line one\nline two")
    assert page.read_text() == ("- **Speed**: measured:\n  <!-- generated:x -->\n  line one\n  line two\n"
                                "  <!-- /generated:x -->\n- next\n")
    assert docblocks.block(page, "x") == "line one\nline two"
    assert not docblocks.splice(page, "missing", "text") and docblocks.block(page, "missing") is None


def _results(folder: str) -> list[tuple[str, dict]]:
    return [(str(f.relative_to(ROOT)), json.loads(f.read_text())) for f in sorted((ROOT / folder).glob("*.json"))]


def test_the_committed_pages_quote_the_committed_results() -> None:
    """README's and docs/stores.md's figures cannot drift from bench/results: rerun the --report / --write command
    named in the failure after a new result lands."""
    runs = sorted((r for _, r in _results("bench/results/stores")), key=lambda r: (r["dim"], r["rows"]))
    tables, sentence = store_speed.summary(runs)
    assert docblocks.block(ROOT / "docs" / "stores.md", "stores-summary") == tables, \
        "run: python bench/store_speed.py --report"
    assert docblocks.block(ROOT / "README.md", "stores-line") == sentence, "run: python bench/store_speed.py --report"
    assert docblocks.block(ROOT / "README.md", "speed-line") == speed_docs.pair_sentence(
        _results("bench/results/speed")), "run: python bench/speed_docs.py pair --write bench/results/speed/*.json"


def test_the_start_from_tables_are_the_committed_results() -> None:
    """docs/pretrained.md's study tables are what bench/start_from_report.py makes of bench/results/start-from."""
    results = start_from_report.load()
    assert results["mae"], "the MAE study has committed results"
    for name, text in start_from_report.blocks(results).items():
        assert docblocks.block(ROOT / "docs" / "pretrained.md", name) == text, "run: python bench/start_from_report.py"


def test_a_study_table_quotes_each_file(tmp_path: Path) -> None:
    """Figures, gains and the split come from the file itself: a made-up result reads back as written."""
    run = {"steps": 300, "train_minutes": 9.84, "knn_top1": 0.3456, "linear_top1": 0.4567,
           "curve": [{"step": 100, "knn_top1": 0.3}], "model_dir": "runs/x"}
    (tmp_path / "m.json").write_text(json.dumps({
        "study": "mae", "command": "bench/start_from.py mae", "split": "validation: held out", "mae": run,
        "random_init": {"knn_top1": 0.3, "linear_top1": 0.4}, "knn_gain": 0.0456, "linear_gain": 0.0567}))
    text = start_from_report.blocks(start_from_report.load(tmp_path))["start-from-mae"]
    row = text.splitlines()[2]
    assert row == ("| `m.json` | validation (5,000) | 300 steps, 9.8 min | 0.346 (+0.046) | 0.300 | 0.457 (+0.057) | "
                   "0.400 | 0.300@100 |")
    assert "machine not recorded; `bench/start_from.py mae`" in text
