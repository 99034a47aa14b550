"""Bricks under test for the contract suite: one in-process, one real process."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.brickclient import AUTH, VOLUME, BrickClient, BrickUnderTest, MemoryBrick, ProcessBrick
from helpers.brickd import BrickdProcess, brickd_process

from pyglfs.brickd.auth import Credentials
from pyglfs.brickd.server import open_brick_service
from pyglfs.brickd.store import open_store


@pytest.fixture(scope="module")
def brickd_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrickdProcess]:
    """One real brickd per test module (tests work in their own directories)."""
    tmp = tmp_path_factory.mktemp("brickd")
    with brickd_process(tmp, volume=VOLUME, auth=AUTH) as proc:
        yield proc
        assert proc.alive(), "brickd died during the tests:\n" + proc.log_text()
        rc = proc.stop()
        log = proc.log_text()
        assert rc == 0, f"brickd exit status {rc}:\n{log}"
        assert "Traceback" not in log, log


@pytest.fixture(params=["memory", "process"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Any]:
    if request.param == "process":
        return "process", request.getfixturevalue("brickd_proc")
    root = tmp_path / "brick"
    root.mkdir()
    return "memory", root


@pytest.fixture
async def brick(backend: tuple[str, Any]) -> AsyncIterator[BrickUnderTest]:
    kind, thing = backend
    if kind == "process":
        yield ProcessBrick(thing)
        return
    store = open_store(thing, str(uuid.uuid4()))
    try:
        async with trio.open_nursery() as nursery:
            async with open_brick_service(
                store, VOLUME, credentials=Credentials(**AUTH), server_name="memory-brick",
            ) as service:
                yield MemoryBrick(nursery, service, thing)
            nursery.cancel_scope.cancel()
    finally:
        store.close()


@pytest.fixture
async def client(brick: BrickUnderTest) -> AsyncIterator[BrickClient]:
    async with brick.connect() as c:
        yield c
