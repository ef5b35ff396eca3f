"""The tables of docs/pretrained.md's studies, generated from bench/start_from.py's committed JSON:

    python bench/start_from_report.py           # rewrite the generated blocks of docs/pretrained.md
    python bench/start_from_report.py --print   # print them instead

One block per study (`start-from-mae`, `start-from-continued`, `start-from-distill`), from every result file of
that study in bench/results/start-from/ (the `study` field says which): the kNN top-1 (and MAE's linear probe) of
each model beside its baseline, the steps and minutes it trained, and where each figure came from.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docblocks import splice  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS, PAGE = ROOT / "bench" / "results" / "start-from", ROOT / "docs" / "pretrained.md"
STUDIES = ("mae", "continued", "distill")


def load(folder: Path = RESULTS) -> dict[str, list[tuple[str, dict]]]:
    """Each study's result files, as (file name, result), in name order."""
    out: dict[str, list[tuple[str, dict]]] = {s: [] for s in STUDIES}
    for path in sorted(folder.glob("*.json")):
        result = json.loads(path.read_text())
        out.setdefault(result["study"], []).append((path.name, result))
    return out


def scored_on(result: dict) -> str:
    """Where the final scores were taken: the validation split when the file says so, else the test set."""
    return "validation (5,000)" if str(result.get("split", "")).startswith("validation") else "test (10,000)"


def source(name: str, result: dict) -> str:
    m = result.get("machine")
    where = m if isinstance(m, str) or m is None else f"{m['cpu']}, {m['cores']} cores"
    commit = f"commit {result['commit'][:12]}, " if result.get("commit") else ""
    load = result.get("load_average_before"), result.get("load_average_after")
    loads = f", load average {load[0][0]:g} before and {load[1][0]:g} after" if all(load) else ""
    note = f" ({result['note']})" if result.get("note") else ""
    return f"`{name}`: {commit}{where or 'machine not recorded'}{loads}; `{result['command']}`{note}"


def _run(r: dict) -> str:
    return f"{r['steps']} steps, {r['train_minutes']:.1f} min"


def _curve(r: dict) -> str:
    points = r.get("curve") or []
    return ", ".join(f"{p['knn_top1']:.3f}@{p['step']}" for p in points) or "none"


def table(header: list[str], rows: list[str], files: list[tuple[str, dict]]) -> str:
    """A markdown table of `rows` under `header`, then where each file's figures came from."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows, ""]
    return "\n".join(lines + [f"- {source(n, r)}" for n, r in files])


def mae_table(files: list[tuple[str, dict]]) -> str:
    rows = []
    for name, r in files:
        m, f = r["mae"], r["random_init"]
        rows.append(f"| `{name}` | {scored_on(r)} | {_run(m)} | {m['knn_top1']:.3f} ({r['knn_gain']:+.3f}) | "
                    f"{f['knn_top1']:.3f} | {m['linear_top1']:.3f} ({r['linear_gain']:+.3f}) | "
                    f"{f['linear_top1']:.3f} | {_curve(m)} |")
    return table(["result file", "scored on", "MAE run", "kNN top-1", "random init kNN", "linear probe",
                  "random init linear", "kNN curve (top-1@step)"], rows, files)


def continued_table(files: list[tuple[str, dict]]) -> str:
    rows = []
    for name, r in files:
        s, c, z = r["start"], r["continued"], r["from_random_init"]
        rows.append(f"| `{name}` | {scored_on(r)} | {s['knn_top1']:.3f} ({_run(s)}) | {c['knn_top1']:.3f} ({_run(c)}) "
                    f"| {z['knn_top1']:.3f} ({_run(z)}) | {r['continued_minus_start']:+.3f} "
                    f"| {r['continued_minus_scratch']:+.3f} |")
    return table(["result file", "scored on", "start model (part A)", "continued with --init (part B)",
                  "from random init (part B)", "continued - start", "continued - random init"], rows, files)


def distill_table(files: list[tuple[str, dict]]) -> str:
    """A row per teacher the file has (a study cut short may lack the ViT teacher's)."""
    rows = []
    for name, r in files:
        z = r["simclr_from_scratch"]
        for teacher, student, fraction in (("teacher", "distilled", "fraction_of_teacher"),
                                           ("vit_teacher", "distilled_from_vit", "fraction_of_vit_teacher")):
            if student not in r:
                continue
            t, d = r[teacher], r[student]
            backbone = t.get("settings", {}).get("backbone", t["model_dir"])
            rows.append(f"| `{name}` | {scored_on(r)} | {backbone} | {t['knn_top1']:.3f} | {d['knn_top1']:.3f} "
                        f"({_run(d)}) | {z['knn_top1']:.3f} ({_run(z)}) | {100 * r[fraction]:.1f}% |")
    return table(["result file", "scored on", "teacher", "its kNN top-1", "distilled student",
                  "student by simclr from scratch", "student / teacher"], rows, files)


TABLES = {"mae": mae_table, "continued": continued_table, "distill": distill_table}


def blocks(results: dict[str, list[tuple[str, dict]]]) -> dict[str, str]:
    """The text of each study's block: its table, or a line saying it has not been run."""
    return {f"start-from-{s}": TABLES[s](results[s]) if results.get(s) else
            f"No result yet: run `python bench/start_from.py {s} --cifar /tmp/cifar10`." for s in STUDIES}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--print", action="store_true", help="print the blocks instead of writing docs/pretrained.md")
    args = p.parse_args(argv)
    for name, text in blocks(load()).items():
        if args.print:
            print(f"<!-- {name} -->\n{text}\n")
        elif not splice(PAGE, name, text):
            print(f"error: {PAGE} has no block {name}: add <!-- generated:{name} --> and <!-- /generated:{name} -->",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
