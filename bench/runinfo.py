"""What a benchmark's JSON records about where and when it ran, shared by bench/profile_step.py and
bench/speed_pair.py: the commit, the machine, the load average before and after, library versions; and
the atomic write of the result file, and the peak RSS of this process."""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """The commit of the working tree, `+dirty` when it has uncommitted changes to tracked files."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import torch

    info = {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import lightly

        info["lightly"] = lightly.__version__
    except ImportError:
        info["lightly"] = None
    return info


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def header(settings: dict) -> dict:
    """The start of a result file; `finish` adds the load average at the end."""
    return {"commit": commit(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(), "settings": settings, "load_average_before": load_average()}


def write_result(result: dict, path: str | os.PathLike) -> Path:
    """Add the closing load average and write `result` as JSON atomically."""
    result["load_average_after"] = load_average()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def run_child(script: str, payload: dict, timeout: float | None = None, env: dict | None = None) -> dict:
    """Run `python SCRIPT --child JSON` in a fresh process and return the JSON of its last stdout line."""
    import sys

    done = subprocess.run([sys.executable, script, "--child", json.dumps(payload)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"{Path(script).name} {payload} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def sample_train() -> str:
    """The bundled CIFAR-10 sample's training folder: the default images of the speed benchmarks."""
    from pretrain.data.images import sample_dir

    return str(sample_dir() / "train")


def answer_child(args, child) -> bool:
    """In a `--child JSON` process: print the JSON of child(payload) (run_child reads it) and return True."""
    if not args.child:
        return False
    print(json.dumps(child(json.loads(args.child))))
    return True
