"""Fixtures for real FUSE mounts: bricks and a mount per volume kind (single
brick, replica 2) shared by the whole session, and a fresh pair of directories
(local and on the mount) per test.

Every test that mounts is marked ``mount`` and skipped cleanly without
/dev/fuse, root or fusermount3. A test fails if the mount logged an unexpected
exception while it ran.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.mounts import (
    Mount,
    Volume,
    fuse_skip_reason,
    mount_entry,
    mounted_volume,
    start_volume,
)

_skip = fuse_skip_reason()


# Every fixture that mounts or starts bricks depends on one of these.
_MOUNT_FIXTURES = {"volume", "single_volume"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here not in Path(str(item.fspath)).parents:
            continue
        if _MOUNT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.mount)
            if _skip:
                item.add_marker(pytest.mark.skip(reason=_skip))


@pytest.fixture(scope="session")
def single_volume(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Volume]:
    vol = start_volume(tmp_path_factory.mktemp("single"), "single")
    try:
        yield vol
    finally:
        vol.stop()


@pytest.fixture(scope="session", params=["single", "replica2"])
def volume(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Volume]:
    """Each volume kind in turn: the bridge over a protocol client, then over replicate."""
    vol = start_volume(tmp_path_factory.mktemp(request.param), request.param)
    try:
        yield vol
    finally:
        vol.stop()


@pytest.fixture(scope="session")
def volume_mount(volume: Volume) -> Iterator[Mount]:
    with mounted_volume(volume.volfile, volume.volfile.parent / "mnt") as m:
        yield m


@dataclass
class Pair:
    """A fresh directory on the local filesystem and one on the mount."""

    local: Path
    mount: Path
    mnt: Mount


@pytest.fixture
def pair(volume_mount: Mount, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Pair]:
    name = request.node.name.replace("/", "_")[:200]
    local = tmp_path / "local"
    remote = volume_mount.mountpoint / name
    for d in (local, remote):
        d.mkdir()
        os.chmod(d, 0o777)
    assert mount_entry(volume_mount.mountpoint)["fstype"] == "fuse.pyglfs"
    assert os.stat(remote).st_dev == os.stat(volume_mount.mountpoint).st_dev
    start = len(volume_mount.log_text())
    yield Pair(local, remote, volume_mount)
    tail = volume_mount.log_text()[start:]
    assert "Traceback" not in tail, f"the mount logged an unexpected exception:\n{tail[-6000:]}"
