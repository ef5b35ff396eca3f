"""Start `bentoml serve` as a child process, wait until it answers, crash it: shared by the tests and bench/."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx


def start_bentoml(env: dict[str, str], port: int, cwd: Path, log: Path) -> subprocess.Popen:
    """`bentoml serve` from `cwd` (the project root: its bentofile.yaml), as a user runs it, on loopback; output
    to `log` (appended: a pipe nobody reads would fill up and stall the server).

    Each server gets a BENTOML_HOME of its own (beside the log) unless `env` gives one: every `bentoml serve`
    empties $BENTOML_HOME/prometheus_multiproc_dir when it starts, which would wipe the /metrics of a server
    already running."""
    home = log.parent / f".bentoml-home-{port}"
    home.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        return subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=cwd, env={**os.environ, "BENTOML_HOME": str(home), **env}, stdout=out,
                                stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Poll /readyz until 200; fail with the end of the server's log if it exits first or never gets ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc): bentoml's workers run in sessions of their own, so a process group
    does not hold them."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def crash(proc: subprocess.Popen) -> None:
    """kill -9 a server and every process below it at once, as a power cut or the OOM killer would."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
