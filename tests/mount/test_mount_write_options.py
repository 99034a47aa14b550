"""A sequential writer through a replica-2 mount, with the bricks' write
options storage.drop-behind and storage.direct-writes on and off (set through
pyglfs-brickd's environment forms of --drop-behind and --direct-writes).

Whatever the options, both bricks and a read through the mount end up with
exactly what was written. What each option does to a brick's page cache, once
every block was fsynced (so its pages are clean when the brick looks back):
drop-behind leaves only the stream's last 16-24 MiB cached, direct writes leave
none of the aligned blocks, and with both off the whole file stays cached.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.mounts import Volume, fuse_skip_reason, mounted_volume, start_volume
from helpers.pagecache import resident_mib

_skip = fuse_skip_reason()
pytestmark = [pytest.mark.mount, pytest.mark.skipif(_skip is not None, reason=_skip or "")]

MIB = 1 << 20
BLOCKS = 32

SETTINGS = {
    "drop-behind": {"PYGLFS_BRICK_DROP_BEHIND": "1", "PYGLFS_BRICK_DIRECT_WRITES": "0"},
    "direct": {"PYGLFS_BRICK_DROP_BEHIND": "0", "PYGLFS_BRICK_DIRECT_WRITES": "1"},
    "buffered": {"PYGLFS_BRICK_DROP_BEHIND": "0", "PYGLFS_BRICK_DIRECT_WRITES": "0"},
}


@pytest.fixture(params=list(SETTINGS), scope="module")
def replica(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Volume]]:
    with pytest.MonkeyPatch.context() as mp:
        for k, v in SETTINGS[request.param].items():
            mp.setenv(k, v)
        vol = start_volume(tmp_path_factory.mktemp(request.param), "replica2")
    try:
        yield request.param, vol
    finally:
        vol.stop()


def test_a_stream_lands_whole_and_the_cache_follows_the_option(
        replica: tuple[str, Volume], tmp_path: Path) -> None:
    setting, vol = replica
    blocks = [os.urandom(MIB) for _ in range(4)]
    want = b"".join(blocks[i % 4] for i in range(BLOCKS)) + b"tail" * 1000
    with mounted_volume(vol.volfile, tmp_path / "mnt") as mnt:
        path = mnt.mountpoint / "stream"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for i in range(BLOCKS):
                assert os.write(fd, blocks[i % 4]) == MIB
                os.fsync(fd)
            os.write(fd, b"tail" * 1000)
            os.fsync(fd)
        finally:
            os.close(fd)
        cached = [resident_mib(b.brick / "stream") for b in vol.bricks]
        expect = hashlib.sha256(want).hexdigest()
        assert [hashlib.sha256((b.brick / "stream").read_bytes()).hexdigest()
                for b in vol.bricks] == [expect, expect]
        assert path.read_bytes() == want
    if setting == "drop-behind":
        assert all(c <= 25 for c in cached), cached
    elif setting == "direct":
        assert all(c <= 1 for c in cached), cached
    else:
        assert all(c >= BLOCKS - 1 for c in cached), cached
