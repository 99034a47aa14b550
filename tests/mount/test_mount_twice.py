"""A second mount on a pyglfs mount point is refused, as mount.glusterfs
refuses one ("already mounted"): stacked, it would hide the first mount from
everyone who opens paths under it, and ``umount`` would take the top one only."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers.mounts import is_mounted, mount_argv, mount_env, mounted_volume

HELPER = Path("/sbin/mount.fuse.pyglfs")


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=mount_env(),
                          stdin=subprocess.DEVNULL)


def _mounts_on(path: Path) -> int:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if line.split()[4] == target)


def _unmount_extra(path: Path) -> None:
    """Take off what a failing test stacked on ``path``, above the fixture's mount."""
    for _ in range(5):
        if _mounts_on(path) <= 1:
            return
        subprocess.run(["fusermount3", "-u", "-z", str(path)], timeout=10, check=False)


@pytest.mark.parametrize("how", ["pyglfs-mount", "mount-t"])
def test_a_second_mount_on_a_mount_point_is_refused(single_volume, tmp_path, how):
    if how == "mount-t" and not HELPER.exists():
        pytest.skip("/sbin/mount.fuse.pyglfs missing: run make install")
    with mounted_volume(single_volume.volfile, tmp_path / "mnt") as m:
        mnt = m.mountpoint
        (mnt / "kept").write_bytes(b"first")
        log = tmp_path / "second.log"
        argv = (mount_argv(single_volume.volfile, mnt, f"log-file={log}") if how == "pyglfs-mount"
                else ["mount", "-t", "fuse.pyglfs", "-o",
                      f"volfile={single_volume.volfile},log-file={log}", "none", str(mnt)])
        try:
            r = _run(argv)
            assert r.returncode != 0
            assert f"{mnt} is already a pyglfs mount" in r.stderr
            assert "Traceback" not in r.stderr
            assert _mounts_on(mnt) == 1
        finally:
            _unmount_extra(mnt)
        assert (mnt / "kept").read_bytes() == b"first"
    assert not is_mounted(mnt)
    # once unmounted, the point takes a mount again
    with mounted_volume(single_volume.volfile, mnt) as again:
        assert (again.mountpoint / "kept").read_bytes() == b"first"
