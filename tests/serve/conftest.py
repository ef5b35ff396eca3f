"""One served model (model dir with a probe head + index of a tiny image folder) for the whole serve test session."""
from __future__ import annotations

from pathlib import Path

import pytest
from serve_helpers import make_served


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(model dir, index dir, image folder); read-only for tests."""
    return make_served(tmp_path_factory.mktemp("served"))
