"""Fixtures of the brick storage tests: a fresh brick directory and its store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.brickstore import VOL

from pyglfs.brickd.store import BrickStore


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
