"""Fixtures of the retrieval tests."""
from __future__ import annotations

import pytest
from retrieval_helpers import clustered


@pytest.fixture
def collection():
    x, labels = clustered(3000)
    return x, [f"img/{i:05d}.jpg" for i in range(len(x))], [f"c{c}" for c in labels]
