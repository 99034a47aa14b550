"""Fixtures of the brick storage tests: a fresh brick directory and its store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyglfs.brickd.store import BrickStore

VOL = str(uuid.uuid4())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "brick"
    r.mkdir()
    return r


@pytest.fixture
def store(root: Path) -> Iterator[BrickStore]:
    s = BrickStore.open(root, VOL)
    try:
        yield s
    finally:
        s.close()
