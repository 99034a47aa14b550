"""Shared fixtures for every test layer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.brickd import BrickdProcess, start_brickd


@pytest.fixture
def brickd_factory(tmp_path: Path) -> Iterator[Callable[..., BrickdProcess]]:
    """``start(**kwargs)`` starts a real pyglfs-brickd (see ``helpers.brickd.start_brickd``);
    every brick started is stopped by PID when the test ends."""
    started: list[BrickdProcess] = []

    def start(**kwargs: Any) -> BrickdProcess:
        b = start_brickd(tmp_path, **kwargs)
        started.append(b)
        return b

    try:
        yield start
    finally:
        for b in reversed(started):
            b.stop()
