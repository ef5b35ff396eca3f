"""Where the equal-time comparison keeps its results, and when one may be reused.

One JSON file per contender and seed, under bench/results/equal-time/METHOD/<minutes>min-b<batch>/: SLUG-sSEED.json
(bench/equal_time_knn.py writes them) and random-init-sSEED.json (the floor). Each records the cache key it was
made under: a hash of the code commit (the last commit that touched the training code, with a digest of any
uncommitted change to it), the contender's spec, its recipe resolved in full, the settings and the seed. A file
whose key differs from the key now is stale: its contender is rerun, never reused. bench/equal_time_report.py
turns the files into docs/benchmarks/equal-time.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "equal-time"
# what decides how a contender trains and is scored; docs and result files are left out, so committing results
# does not make them stale
CODE = ("pretrain", "bench/equal_time_knn.py", "bench/equal_time_clock.py", "bench/equal_time_results.py",
        "bench/lightly_recipes.py", "pyproject.toml", "constraints.txt")
UNKNOWN = "unknown"


def code_commit(repo: Path = REPO) -> str:
    """The last commit that changed the training code, plus `+dirty.DIGEST` when it has uncommitted changes;
    `unknown` outside a git checkout (a result made there is never reused)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout

    try:
        commit = git("log", "-1", "--format=%H", "--", *CODE).strip()
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", *CODE).strip()
        if dirty:
            commit += "+dirty." + hashlib.sha1(git("diff", "HEAD", "--", *CODE).encode()).hexdigest()[:12]
    except (OSError, subprocess.CalledProcessError):
        return UNKNOWN
    return commit or UNKNOWN


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def slug(spec: str) -> str:
    """The contender's file name: readable, short, and its own (a hash of the whole spec, as specs that differ
    only past the cut or in punctuation would otherwise share a file and overwrite each other's results)."""
    digest = hashlib.sha1(spec.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_.=-]+', '_', spec).strip('_')[:100]}-{digest}"


def group_dir(out: str | os.PathLike, method: str, minutes: float, batch: int) -> Path:
    return Path(out) / method / f"{minutes:g}min-b{batch}"


def result_path(group: Path, spec: str, seed: int) -> Path:
    return group / f"{slug(spec)}-s{seed}.json"


def floor_path(group: Path, seed: int) -> Path:
    return group / f"random-init-s{seed}.json"


def fresh(path: Path, key: str) -> dict | None:
    """The result at `path` if it was made under `key` (and a known commit); None when missing or stale."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("key") != key or data.get("commit", UNKNOWN) == UNKNOWN:
        return None
    return data


def write(path: Path, data: dict) -> None:
    """Write `data` as JSON atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def load_all(root: str | os.PathLike = RESULTS) -> list[dict]:
    """Every result file under `root` (contenders and floors), each with its `path`."""
    out = []
    for path in sorted(Path(root).rglob("*.json")):
        data = json.loads(path.read_text())
        data["path"] = str(path)
        out.append(data)
    return out
