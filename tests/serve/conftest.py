"""One served model (a fine-tuned model dir, its head the classifier, + index of a tiny image folder) and two
`bentoml serve`s of it for the whole serve test session: read-only, and writable (with TOKEN, on a copy of the
index)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from serve_helpers import SERVER_ENV, TOKEN, LiveServer, free_port, make_served

from tools.process import start_bentoml, wait_ready

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(model dir, index dir, image folder); read-only for tests."""
    return make_served(tmp_path_factory.mktemp("served"))


def serve(tmp_path_factory, env: dict[str, str]):
    """`bentoml serve` from the project root (this checkout's code) on a free loopback port, with SERVER_ENV."""
    port, log = free_port(), tmp_path_factory.mktemp("server") / "bentoml.log"
    proc = start_bentoml({**SERVER_ENV, **env}, port, ROOT, log)
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


@pytest.fixture(scope="session")
def live_server(served, tmp_path_factory) -> LiveServer:
    """A read-only server of the served model and index."""
    model, index, _ = served
    yield from serve(tmp_path_factory, {"SSLFORGE_MODEL": str(model), "SSLFORGE_INDEX": str(index)})


@pytest.fixture(scope="session")
def writable_server(served, tmp_path_factory) -> tuple[LiveServer, Path]:
    """(server, its index dir): /add and /remove allowed with TOKEN, on a copy of the served index."""
    model, index, _ = served
    copy = tmp_path_factory.mktemp("writable") / "index"
    shutil.copytree(index, copy)
    for server in serve(tmp_path_factory, {"SSLFORGE_MODEL": str(model), "SSLFORGE_INDEX": str(copy),
                                           "SSLFORGE_WRITE_TOKEN": TOKEN}):
        yield server, copy
