"""One served model (a fine-tuned model dir, its head the classifier, + index of a tiny image folder) and two
`bentoml serve`s of it for the whole serve test session: read-only, and writable (with TOKEN, on a copy of the
index)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from serve_helpers import TOKEN, LiveServer, make_served, serve


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(model dir, index dir, image folder); read-only for tests."""
    return make_served(tmp_path_factory.mktemp("served"))


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
