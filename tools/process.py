"""Start `bentoml serve` as a child process and wait until it answers: shared by the tests and bench/serve_load.py."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx


def start_bentoml(env: dict[str, str], port: int, cwd: Path, log: Path, *,
                  own_group: bool = False) -> subprocess.Popen:
    """`bentoml serve` from `cwd` (the project root: its bentofile.yaml), as a user runs it, on loopback; output
    to `log` (appended: a pipe nobody reads would fill up and stall the server). `own_group`: in a process group of
    its own, so that `os.killpg(proc.pid, SIGKILL)` stops the server and its workers at once, as a crash would."""
    with open(log, "a") as out:
        return subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=own_group)


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
