"""One served model (a fine-tuned model dir, its head the classifier, + index of a tiny image folder) and one
`bentoml serve` of it for the whole serve test session."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from serve_helpers import SERVER_ENV, LiveServer, free_port, make_served

from tools.process import start_bentoml, wait_ready

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(model dir, index dir, image folder); read-only for tests."""
    return make_served(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="session")
def live_server(served, tmp_path_factory) -> LiveServer:
    """`bentoml serve` from the project root (this checkout's code) on a free loopback port, with SERVER_ENV."""
    model, index, _ = served
    port, log = free_port(), tmp_path_factory.mktemp("server") / "bentoml.log"
    proc = start_bentoml({"SSLFORGE_MODEL": str(model), "SSLFORGE_INDEX": str(index), **SERVER_ENV}, port, ROOT, log)
    server = LiveServer(f"http://127.0.0.1:{port}", port, proc, log)
    try:
        wait_ready(server.url, proc, log)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
