"""The inode table follows what the kernel holds: lookups add, forgets remove.

The mount's SIGUSR1 state dump reports the table's size; the kernel is made to
forget inodes by unlinking them and by dropping its dentry and inode caches.
"""

from __future__ import annotations

import os
import re
import signal
import stat

import pytest
from helpers.mounts import Mount, mounted_volume, wait_for

N = 500


def _statedump(m: Mount) -> dict[str, int]:
    before = m.log_text().count("statedump:")
    os.kill(m.pid, signal.SIGUSR1)
    assert wait_for(lambda: m.log_text().count("statedump:") > before, 10)
    line = m.log_text().split("statedump:")[-1].splitlines()[0]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def _drop_caches() -> bool:
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
    except OSError:
        return False
    return True


@pytest.fixture
def own_mount(single_volume, tmp_path):
    with mounted_volume(single_volume.volfile, tmp_path / "mnt") as m:
        yield m


def test_forget_empties_the_table(own_mount):
    m = own_mount
    d = m.mountpoint / "many"
    os.mkdir(d)
    for i in range(N):
        os.mknod(d / f"f{i:04d}", stat.S_IFREG | 0o644)
    for i in range(N):
        os.stat(d / f"f{i:04d}")
    held = _statedump(m)
    assert held["inodes"] >= N
    assert held["open_files"] == 0 and held["open_dirs"] == 0
    if _drop_caches():
        assert wait_for(lambda: _statedump(m)["inodes"] < N // 4, 10)
        for i in range(N):  # a second pass looks them up again
            os.stat(d / f"f{i:04d}")
        assert _statedump(m)["inodes"] >= N
    for i in range(N):
        os.unlink(d / f"f{i:04d}")
    # unlinked inodes are forgotten by the kernel as soon as they are evicted
    assert wait_for(lambda: _statedump(m)["inodes"] < N // 4, 10)


def test_open_handles_are_released(own_mount):
    m = own_mount
    fds = [os.open(m.mountpoint / f"h{i}", os.O_RDWR | os.O_CREAT, 0o644) for i in range(20)]
    dfd = os.open(m.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with os.scandir(m.mountpoint) as it:
            list(it)
            dump = _statedump(m)
        assert dump["open_files"] == 20 and dump["open_dirs"] >= 1
    finally:
        for fd in fds:
            os.close(fd)
        os.close(dfd)
    assert wait_for(lambda: _statedump(m)["open_files"] == 0, 10)
    assert _statedump(m)["open_dirs"] == 0
