"""bench/store_speed.py at a tiny size, on the session's PostgreSQL server and on a local one it starts itself:
every store and setting gets a row with a recall and a rate, and the report is generated from the result files."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import store_speed  # noqa: E402


def test_store_speed_tiny(pg_url, tmp_path):
    out = tmp_path / "results" / "rows3000-dim16.json"
    store_speed.main(["--rows", "3000", "--dim", "16", "--queries", "40", "--filter-queries", "20", "--clients", "1",
                      "2", "--ef-search", "64", "--hnsw-m", "8", "--ef-construction", "32", "--url", pg_url(),
                      "--out", str(out)])
    r = json.loads(out.read_text())
    assert [b["store"] for b in r["build"]] == ["faiss flat", "faiss hnsw", "pgvector hnsw"]
    rows = {(s["store"], s["filter"], s["clients"]): s for s in r["search"]}
    assert len(rows) == 3 * 2 * 2 and all(s["qps"] > 0 for s in rows.values())
    assert rows[("faiss flat", "none", 1)]["recall@10"] == 1.0
    assert rows[("faiss flat", "1 in 20", 2)]["recall@10"] == 1.0
    assert rows[("pgvector hnsw", "none", 2)]["recall@10"] >= 0.9
    assert rows[("pgvector hnsw", "1 in 20", 1)]["recall@10"] >= 0.9  # the filter still returns k good rows
    md = tmp_path / "stores.md"
    store_speed.main(["--report", "--results", str(out.parent), "--report-out", str(md)])
    text = md.read_text()
    assert "## 3,000 vectors, dimension 16" in text and "| pgvector hnsw | 64 | 1 in 20 |" in text
    # the summaries hand-written pages quote are spliced in from the same files, and only between their markers
    page, readme = tmp_path / "page.md", tmp_path / "README.md"
    page.write_text("intro\n<!-- generated:stores-summary -->\nold\n<!-- /generated:stores-summary -->\nend\n")
    readme.write_text("no block here\n")
    store_speed.report(out.parent, md, (page, readme))
    spliced = page.read_text()
    assert spliced.startswith("intro\n") and spliced.endswith("end\n") and "old" not in spliced
    pg1 = rows[("pgvector hnsw", "none", 1)]
    assert f"| 3,000 x 16 | {pg1['recall@10']:.3f} / " in spliced
    assert readme.read_text() == "no block here\n"


def test_store_speed_starts_its_own_server(tmp_path):
    out = tmp_path / "r.json"
    store_speed.main(["--rows", "500", "--dim", "8", "--queries", "10", "--filter-queries", "5", "--clients", "1",
                      "--ef-search", "40", "--hnsw-m", "8", "--ef-construction", "32", "--shared-buffers", "32MB",
                      "--maintenance-mem", "64MB", "--build-workers", "1", "--out", str(out)])
    assert {b["store"] for b in json.loads(out.read_text())["build"]} == {"faiss flat", "faiss hnsw", "pgvector hnsw"}
