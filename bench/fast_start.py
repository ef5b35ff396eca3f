"""The slow starters' start: how many steps each candidate recipe takes to reach random init + 0.05 on the
validation split, beside lightly's recipe for the same method. For byol, simsiam, dino and swav.

    python bench/fast_start.py --method byol --data $(sslforge sample)/train --val /tmp/cifar/val \
        --minutes 10 --batch 64 --seeds 0,1,2            # then OUT/METHOD/<minutes>min-b<batch>/fast-start.md
    python bench/fast_start.py --method byol ... --dry-run   # the equal-time commands it would run

The candidates are today's default and one lever moved at a time: the warm-up length, the predictor's learning
rate (byol, simsiam), the target network's momentum schedule (its start on the cosine to 1: byol, dino), the
batch, and for swav how long the prototypes stay frozen. They train in pairs, side by side, through
bench/equal_time_knn.py with `--eval val` and no test images, so the search never sees the test set; every
pair's result files are reused on a rerun under the same cache key. The table's steps come from the curves:
pick `--curve-every` small enough to resolve the start (the default, 1 minute, is every ~100-200 steps here).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import equal_time_report as report  # noqa: E402
import equal_time_results as store  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "equal_time_knn.py"
DEFAULT_OUT = store.REPO / "bench" / "results" / "fast-start"
WARMUP = ["sslforge;warmup_epochs=0.5", "sslforge;warmup_epochs=3"]
BATCH = ["sslforge;batch_size=32"]
CANDIDATES = {
    "byol": ["sslforge", "lightly", *WARMUP, "sslforge;method_args={predictor_lr: 1.0}",
             "sslforge;method_args={predictor_lr: 20.0}", "sslforge;method_args={momentum_base: 0.96}",
             "sslforge;method_args={momentum_base: 0.996}", *BATCH],
    "simsiam": ["sslforge", "lightly", *WARMUP, "sslforge;method_args={predictor_lr: 1.0}",
                "sslforge;method_args={predictor_lr: 20.0}", *BATCH],
    "dino": ["sslforge", "lightly", *WARMUP, "sslforge;method_args={momentum_base: 0.96}",
             "sslforge;method_args={momentum_base: 0.996}", "sslforge;method_args={warmup_teacher_temp_epochs: 0.0}",
             *BATCH],
    "swav": ["sslforge", "lightly", *WARMUP, "sslforge;method_args={freeze_prototypes_epochs: 0.0}",
             "sslforge;method_args={freeze_prototypes_epochs: 3.0}", *BATCH],
}


def pairs(method: str) -> list[tuple[str, str]]:
    """The candidates two by two (default and lightly first); an odd one out pairs with the default again, whose
    result is then reused, so that pair trains one contender."""
    c = CANDIDATES[method]
    out = [(c[i], c[i + 1]) for i in range(0, len(c) - 1, 2)]
    return out + [(c[-1], c[0])] if len(c) % 2 else out


def command(args, pair: tuple[str, str]) -> list[str]:
    return [sys.executable, str(SCRIPT), "--method", args.method, "--data", args.data, "--val", args.val,
            "--eval", "val", "--minutes", str(args.minutes), "--batch", str(args.batch), "--seeds", args.seeds,
            "--curve-every", str(args.curve_every), "--curve-test", str(args.curve_test), "--out", args.out,
            "--contenders", *pair]


def table(method: str, group: Path) -> str:
    """The candidates' steps to random init + 0.05 on the validation curve, and their final validation top-1."""
    results = [json.loads(p.read_text()) for p in sorted(group.glob("*.json"))]
    floors = {r["seed"]: r for r in results if r["contender"] == "random-init"}
    lines = [f"{method}, {group.name}: steps to (random init + {report.MARGIN}) on the validation curve (mean over "
             "the seeds that got there), kNN top-1 on all validation images", "",
             "| contender | seeds | steps to random + 0.05 | kNN top-1 val | steps |", "|---|---|---|---|---|"]
    for spec in CANDIDATES[method]:
        runs = sorted((r for r in results if r["contender"] == spec), key=lambda r: r["seed"])
        if not runs:
            lines.append(f"| {spec} | - | not run | | |")
            continue
        reach = [report.steps_to(r["curve"], floors[r["seed"]]["curve_top1"] + report.MARGIN)
                 for r in runs if r["seed"] in floors]
        got = [s for s in reach if s is not None]
        to = (f"{report.mean_sd(got)[0]:.0f}" + ("" if len(got) == len(runs) else f" ({len(got)} of {len(runs)})")
              if got else f"not reached ({max(r['steps'] for r in runs)} steps)")
        lines.append(f"| {spec} | {','.join(str(r['seed']) for r in runs)} | {to} | "
                     f"{report.fmt([r['final']['val']['top1'] for r in runs])} | "
                     f"{report.mean_sd([r['steps'] for r in runs])[0]:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=sorted(CANDIDATES), help="the slow starter to search")
    p.add_argument("--data", required=True, help="labelled training images (the kNN bank too)")
    p.add_argument("--val", required=True, help="labelled validation images (bench/cifar_val.py)")
    p.add_argument("--minutes", type=float, default=10.0, help="budget of each candidate (default: 10)")
    p.add_argument("--batch", type=int, default=64, help="batch of both contenders of a pair (default: 64)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    p.add_argument("--curve-every", type=float, default=1.0, help="minutes between curve points (default: 1)")
    p.add_argument("--curve-test", type=int, default=2000, help="validation images per curve point (default: 2000)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="root of the result files (default: "
                                                            "bench/results/fast-start)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    for pair in pairs(args.method):
        cmd = command(args, pair)
        if args.dry_run:
            print(" ".join(f"'{c}'" if any(ch in c for ch in " ;{}") else c for c in cmd))
            continue
        proc = subprocess.run(cmd)
        if proc.returncode:
            sys.exit(f"the pair {pair} failed (exit {proc.returncode}); its output is above")
    if args.dry_run:
        return
    group = store.group_dir(args.out, args.method, args.minutes, args.batch)
    text = table(args.method, group)
    print(text)
    tmp = group / ".fast-start.md.tmp"
    tmp.write_text(text)
    tmp.replace(group / "fast-start.md")


if __name__ == "__main__":
    main()
