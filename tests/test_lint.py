"""The code is lint-clean: ruff with the project's settings (pyproject.toml) finds nothing, so a long line, an
unused import or an unsorted import block fails the suite instead of piling up."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is part of the dev extra: pip install -c constraints.txt -e '.[dev]'"
    run = subprocess.run([ruff, "check", "--no-cache", "pretrain", "export", "retrieval", "serve", "tests", "bench",
                          "tools"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
