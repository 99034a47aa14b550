"""The mount(8) helper: ``mount -t fuse.pyglfs``, fstab lines, ``umount``.

Needs ``make install`` (which puts /sbin/mount.fuse.pyglfs and pyglfs-mount
in place); skipped when the helper is not installed.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from helpers.mounts import Mount, is_mounted, mount_entry, mount_env, pid_alive, wait_for

HELPER = Path("/sbin/mount.fuse.pyglfs")

pytestmark = pytest.mark.skipif(not HELPER.exists(),
                                reason="/sbin/mount.fuse.pyglfs missing: run make install")


def _mounted_pid(log: Path) -> int:
    m = re.search(r"mounted volume \S+ on .* pid (\d+)\)", log.read_text())
    assert m, log.read_text()
    return int(m.group(1))


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=mount_env(),
                          stdin=subprocess.DEVNULL)


def _cleanup(mnt: Path, log: Path) -> None:
    """Unmount and stop the mount process by its PID, whatever the test got to."""
    if log.exists() and "mounted volume" in log.read_text():
        Mount(mnt, _mounted_pid(log), log).unmount()
    if is_mounted(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], timeout=10)


def test_mount_t_and_umount(single_volume, tmp_path):
    mnt, log = tmp_path / "mnt", tmp_path / "helper.log"
    mnt.mkdir()
    try:
        r = _run(["mount", "-t", "fuse.pyglfs", "-o",
                  f"volfile={single_volume.volfile},log-file={log}", "none", str(mnt)])
        assert r.returncode == 0, r.stderr
        entry = mount_entry(mnt)
        assert entry is not None and entry["fstype"] == "fuse.pyglfs"
        assert entry["source"] == "none"
        (mnt / "via-helper").write_bytes(b"ok")
        assert (mnt / "via-helper").read_bytes() == b"ok"
        pid = _mounted_pid(log)
        r = _run(["umount", str(mnt)])
        assert r.returncode == 0, r.stderr
        assert not is_mounted(mnt)
        assert wait_for(lambda: not pid_alive(pid), 10)
    finally:
        _cleanup(mnt, log)


def test_fstab_line_with_netdev(single_volume, tmp_path):
    mnt, log = tmp_path / "mnt", tmp_path / "fstab.log"
    mnt.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# test fstab\nnone {mnt} fuse.pyglfs "
                     f"volfile={single_volume.volfile},log-file={log},_netdev,ro 0 0\n")
    try:
        r = _run(["mount", "-a", "-T", str(fstab)])
        assert r.returncode == 0, r.stderr
        entry = mount_entry(mnt)
        assert entry is not None and entry["fstype"] == "fuse.pyglfs"
        assert entry["options"].split(",")[0] == "ro"
        os.listdir(mnt)
        r = _run(["mount", "-a", "-T", str(fstab)])  # already mounted: nothing to do
        assert r.returncode == 0, r.stderr
        r = _run(["umount", str(mnt)])
        assert r.returncode == 0, r.stderr
        assert not is_mounted(mnt)
    finally:
        _cleanup(mnt, log)


@pytest.mark.parametrize("source", ["server1:/gvol0", "127.0.0.1:/vol"])
def test_source_and_volfile_together_refused(single_volume, tmp_path, source):
    # Mounting by name itself: tests/integration/test_mount_by_name.py.
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = _run(["mount", "-t", "fuse.pyglfs", "-o", f"volfile={single_volume.volfile}",
              source, str(mnt)])
    assert r.returncode != 0
    assert f"give either the source {source} or a volfile" in r.stderr
    assert not is_mounted(mnt)


def test_helper_bad_option(single_volume, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = _run(["mount", "-t", "fuse.pyglfs", "-o",
              f"volfile={single_volume.volfile},colour=blue", "none", str(mnt)])
    assert r.returncode != 0 and "colour" in r.stderr
    assert not is_mounted(mnt)
