"""The docs pages of the speed benchmarks, generated from their committed JSON:

    python bench/speed_docs.py profile bench/results/profile/*.json > docs/benchmarks/profile.md
    python bench/speed_docs.py pair bench/results/speed/*.json > docs/benchmarks/speed-pair.md
    python bench/speed_docs.py pair --write bench/results/speed/*.json  # the page and README's speed line

`profile`: for each setting of bench/profile_step.py the share of the step spent in data (the wait on the
loader plus the copy to the device), forward, backward, optimizer and extras (the method's after-step work and
the collapse monitor), images/s, the fraction of the measured GEMM peak that forward and backward reach, the
loader's own work per batch, and peak RSS; the compile break-even rows where a file has them.
`pair`: from bench/speed_pair.py, sslforge over lightly (medians of the alternating runs) with peak RSS.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docblocks import splice  # noqa: E402

from pretrain.ground.atomic import write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAIR_PAGE, README = ROOT / "docs" / "benchmarks" / "speed-pair.md", ROOT / "README.md"

SHARES = {"data": ("data_wait", "to_device"), "forward": ("forward",), "backward": ("backward",),
          "optimizer": ("optimizer",), "extras": ("extras", "monitor")}


def shares(phases_ms: dict[str, float]) -> dict[str, float]:
    """Each part's share of the step (the phases of SHARES summed), in percent."""
    total = sum(phases_ms.values())
    return {part: 100 * sum(phases_ms[p] for p in keys) / total for part, keys in SHARES.items()}


def _source(result: dict, path: str) -> str:
    m = result["machine"]
    load = result["load_average_before"][0], result["load_average_after"][0]
    return (f"`{Path(path).name}`: commit {result['commit'][:12]}, {m['cpu']} ({m['cores']} cores)"
            f"{', ' + m['gpu'] if m.get('gpu') else ''}, torch {m['torch']}, load average {load[0]:g} before, "
            f"{load[1]:g} after")


def defaults_section() -> list[str]:
    """The speed defaults as pretrain/train/speed.py has them now (generated: the page cannot drift from the code)."""
    from pretrain.train import speed

    even = ", ".join(f"{d}: {n if n is not None else 'never'}" for d, n in speed.COMPILE_BREAK_EVEN_STEPS.items())
    batched = speed.BATCHED_VIEWS_MAX_WORKERS
    lines = ["## The speed defaults", "",
             "What `sslforge pretrain` (and `finetune`) does without flags, each switchable "
             "(pretrain/train/speed.py):", "",
             f"- **compile** (`--compile auto|true|false`, `--no-compile`): auto compiles the networks when the "
             f"planned optimizer steps reach the break-even ({even}), and when a CPU has a C++ compiler. Compiled "
             f"code is cached in `$SSLFORGE_CACHE/torchinductor` (or `$TORCHINDUCTOR_CACHE_DIR`) across runs. If "
             f"compiling fails, the run says so in one line and trains uncompiled. The run prints `compile: on/off "
             f"(why)`, and model.json's `training.compiled` records it.",
             "- **cores** (`--workers`, `--threads`): on a CPU the model step gets every core as intra-op threads "
             "and one loader worker per core (1 to 8) makes the views, as in every published CPU figure (a smaller "
             "share waits for the profile); on a GPU the workers take all cores but "
             "one (up to 8) and the training process the rest. Examples: "
             + "; ".join(f"{d} with {c} cores: workers {w}, threads {t}"
                         for d in ("cpu", "cuda") for c in (2, 16) for w, t in [speed.split_cores(c, d)]) + ".",
             f"- **loss reads** (`--sync-every N`): the loss and the collapse statistics are read back from the "
             f"device every {speed.GPU_SYNC_EVERY} steps on a GPU (one host sync for all of them), every step on a "
             f"CPU; metrics.csv still gets every step, and a NaN stops the run before any checkpoint.",
             "- **optimizer and EMA**: AdamW runs fused (one kernel for all parameters) on CPU and CUDA, SGD and LARS "
             "on foreach kernels; EMA targets (BYOL, MoCo, DINO) move by one in-place foreach lerp.",
             "- **channels-last** (`--channels-last/--no-channels-last`): on, as before.",
             "- **batched views in the process** (`--gpu-augment`, which also runs on a CPU): "
             + ("not a CPU default yet: the profile's `batched` rows (`--views loader batched`) decide it"
                if batched is None else f"the CPU default with at most {batched} loader workers") + ".",
             "- **memory**: the run ends with `trained N steps: X images/s, peak RSS Y MB`; model.json's `training` "
             "has `images_per_s`, `peak_rss_mb`, `workers`, `threads`.", ""]
    return lines


def profile_page(results: list[tuple[str, dict]]) -> str:
    lines = ["# Where a training step's time goes", "", *defaults_section(), "## Measuring", "",
             "```bash",
             "python bench/profile_step.py                       # CPU grid (32 settings), 1.5-2 hours on 2 cores",
             "python bench/profile_step.py --break-even --methods simclr byol --sizes 32 --stems small --threads 2",
             "python bench/profile_step.py --views loader batched --methods simclr --sizes 32 64 --threads 2",
             "python bench/profile_step.py --device cuda --lightly-pair      # GPU, under 5 minutes",
             "# break-even: ~15 minutes; loader against batched views: ~20 minutes",
             "python bench/speed_docs.py profile bench/results/profile/*.json > docs/benchmarks/profile.md",
             "```", "",
             "Generated by `python bench/speed_docs.py profile " + " ".join(p for p, _ in results) + "` from the",
             "results of `bench/profile_step.py` (the command of each file is in its `settings`). Shares are",
             "of the median step: data = the wait on the loader + the copy to the device (and the views, when",
             "made in the process), extras = the method's after-step work (EMA targets, queues, centres) + the",
             "collapse monitor. Peak = the fraction of this machine's GEMM peak (a 2048^3 matmul at the same",
             "thread count, in the step's precision) that forward and backward reach. The loader's work is per",
             "batch on one thread, as in a worker.", ""]
    if not results:
        lines += ["No profile from a quiet machine is committed yet: run the commands above.", ""]
    for path, result in results:
        lines += ["## " + ("Compile break-even" if result.get("kind") == "break-even" else
                           f"Step profile, {result['settings']['device']}"), "", _source(result, path), ""]
        if result.get("kind") == "break-even":
            lines += ["| method | px | stem | threads | eager step ms | compiled step ms | break-even steps "
                      "(cold cache) | (warm cache) |", "|---|---|---|---|---|---|---|---|"]
            for r in result["rows"]:
                s = r["setting"]
                lines.append(f"| {s['method']} | {s['size']} | {s['stem']} | {s['threads']} | "
                             f"{r['eager_step_ms']:.0f} | {r['warm_step_ms']:.0f} | "
                             f"{r['cold_break_even_steps'] if r['cold_break_even_steps'] is not None else 'never'} | "
                             f"{r['warm_break_even_steps'] if r['warm_break_even_steps'] is not None else 'never'} |")
            lines.append("")
            continue
        lines += ["| method | px | stem | threads | views | images/s | data | forward | backward | optimizer | "
                  "extras | fwd peak | bwd peak | decode / augment / collate ms | peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["rows"]:
            s, sh, w = r["setting"], shares(r["phases_ms"]), r["data_work_ms"]
            lines.append(f"| {s['method']} | {s['size']} | {s['stem']} | {s['threads']} | {s['views']} | "
                         f"{r['images_per_s']:.1f} | " + " | ".join(f"{sh[k]:.0f}%" for k in SHARES) + " | "
                         f"{100 * r['peak_fraction']['forward']:.0f}% | {100 * r['peak_fraction']['backward']:.0f}% | "
                         f"{w['decode']:.0f} / {w['augment']:.0f} / {w['collate']:.0f} | {r['peak_rss_mb']:.0f} |")
        if result.get("lightly"):
            lines += ["", "Against lightly 1.6.0's recipe on the same device (images/s):", "",
                      "| method | px | stem | sslforge | lightly | sslforge / lightly |", "|---|---|---|---|---|---|"]
            for theirs in result["lightly"]:
                s = theirs["setting"]
                ours = next(r for r in result["rows"] if all(r["setting"][k] == s[k] for k in
                                                             ("method", "size", "stem", "threads", "views")))
                lines.append(f"| {s['method']} | {s['size']} | {s['stem']} | {ours['images_per_s']:.1f} | "
                             f"{theirs['images_per_s']:.1f} | {ours['images_per_s'] / theirs['images_per_s']:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("s" if n != 1 else "")


def pair_page(results: list[tuple[str, dict]]) -> str:
    lines = ["# sslforge against lightly, step and whole process", "", "```bash",
             "python bench/speed_pair.py step                 # simclr, byol, vicreg x 2 stems, 3 runs each: ~1 hour",
             "python bench/speed_pair.py run --preset 1280    # ~8 minutes",
             "python bench/speed_pair.py run --preset budget  # 5,000 images x 2 epochs, ~1 hour",
             "python bench/speed_docs.py pair bench/results/speed/*.json > docs/benchmarks/speed-pair.md",
             "```", "",
             "Generated by `python bench/speed_docs.py pair " + " ".join(p for p, _ in results) + "` from the",
             "results of `bench/speed_pair.py`: medians of the alternating runs of each toolkit, on the same",
             "images, threads, workers and views (sslforge otherwise with its defaults: in `step` the planned",
             "run of 100 epochs is long enough that compile auto compiles, in the warm-up). RSS: the main process;",
             "the largest finished child process (a loader worker) in brackets.", ""]
    if not results:
        lines += ["No pair from a quiet machine is committed yet: run the commands above.", ""]
    for path, result in results:
        st = result["settings"]
        what = (f"steady images/s, {st['steps']} steps after {st['warmup']}" if result["mode"] == "step" else
                f"whole process, {st['images']:,} images x {_epochs(st['epochs'])}")
        cut = "" if result.get("complete", True) else " (cut short: the cells it finished)"
        lines += [f"## {what}{cut}", "", _source(result, path) + f"; {st['rounds']} runs each, "
                  f"{st['threads']} threads, {st['workers']} workers, batch {st['batch_size']}, "
                  f"{st['image_size']} px", "",
                  "| method | stem | sslforge images/s | lightly images/s | images/s ratio | sslforge s | lightly s | "
                  "time ratio (lightly / sslforge) | sslforge RSS MB | lightly RSS MB |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for c in result["cells"]:
            a, b = c["sslforge"], c["lightly"]
            lines.append(f"| {c['method']} | {c['stem']} | {a['images_per_s']:.1f} | {b['images_per_s']:.1f} | "
                         f"{a['images_per_s'] / b['images_per_s']:.2f}x | {a['process_s']:.1f} | "
                         f"{b['process_s']:.1f} | {b['process_s'] / a['process_s']:.2f}x | "
                         f"{a['peak_rss_mb']:.0f} ({a['worker_peak_rss_mb']:.0f}) | "
                         f"{b['peak_rss_mb']:.0f} ({b['worker_peak_rss_mb']:.0f}) |")
        lines.append("")
    return "\n".join(lines)


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.2f}x" if round(lo, 2) == round(hi, 2) else f"{lo:.2f}-{hi:.2f}x"


def pair_sentence(results: list[tuple[str, dict]]) -> str:
    """README's speed line: the newest finished `step` pair and each newest finished `run` preset, as ratios."""
    newest: dict[str, dict] = {}
    for _, r in sorted(results, key=lambda pr: pr[1].get("started", "")):
        if r.get("complete", True) and r.get("cells"):
            newest[r["mode"] + ("-" + r["settings"].get("preset", "") if r["mode"] == "run" else "")] = r
    parts = []
    if "step" in newest:
        r = newest["step"]
        ratios = [c["sslforge"]["images_per_s"] / c["lightly"]["images_per_s"] for c in r["cells"]]
        names = sorted({c["method"] for c in r["cells"]})
        parts.append(f"steady-state images/s {_span(ratios)} lightly 1.6.0's ({', '.join(names)}; "
                     f"{' and '.join(sorted({c['stem'] for c in r['cells']}))} stem)")
    for key, r in sorted(newest.items()):
        if key.startswith("run-"):
            st = r["settings"]
            ratios = [c["lightly"]["process_s"] / c["sslforge"]["process_s"] for c in r["cells"]]
            parts.append(f"a whole run of {st['images']:,} images x {_epochs(st['epochs'])} {_span(ratios)} as fast")
    if not parts:
        return ("Side by side with lightly 1.6.0 (`bench/speed_pair.py`): no pair from a quiet machine is committed "
                "yet ([docs/benchmarks/speed-pair.md](docs/benchmarks/speed-pair.md)).")
    r = newest.get("step") or next(iter(newest.values()))
    return (f"Side by side with lightly 1.6.0 on {r['machine'].get('cores', '?')} CPU cores, "
            f"{r['settings']['image_size']} px, batch {r['settings']['batch_size']} (`bench/speed_pair.py`): "
            + "; ".join(parts) + " ([docs/benchmarks/speed-pair.md](docs/benchmarks/speed-pair.md)).")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("page", choices=("profile", "pair"))
    p.add_argument("files", nargs="*", help="result JSON files")
    p.add_argument("--write", action="store_true",
                   help="pair: write docs/benchmarks/speed-pair.md and README.md's speed line instead of printing")
    args = p.parse_intermixed_args(argv)  # `pair --write FILES...` as the docstring writes it
    results = [(f, json.loads(Path(f).read_text())) for f in args.files]
    page = (profile_page if args.page == "profile" else pair_page)(results) + "\n"
    if args.write and args.page == "pair":
        write_text(PAIR_PAGE, page)
        splice(README, "speed-line", pair_sentence(results))
        print(f"written: {PAIR_PAGE}, {README}'s speed line")
    else:
        sys.stdout.write(page)


if __name__ == "__main__":
    main()
