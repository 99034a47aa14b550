"""A brick that goes away and comes back: the mount reports ENOTCONN meanwhile
(never hangs, never dies) and serves the same inodes again afterwards."""

from __future__ import annotations

import errno
import os

from helpers.brickd import start_brickd
from helpers.mounts import mounted_volume, start_volume, wait_for


def _errno_of(fn) -> int | None:
    try:
        fn()
    except OSError as e:
        return e.errno
    return None


def test_brick_restart_under_a_mount(tmp_path):
    vol = start_volume(tmp_path, "single")
    try:
        with mounted_volume(vol.volfile, tmp_path / "mnt",
                            "attribute-timeout=0,entry-timeout=0") as m:
            d = m.mountpoint / "d"
            os.mkdir(d)
            (d / "f").write_bytes(b"before")
            fd = os.open(d / "f", os.O_RDONLY)
            try:
                old = vol.bricks[0]
                old.stop()
                assert wait_for(lambda: _errno_of(lambda: os.stat(d / "f")) == errno.ENOTCONN,
                                15)
                assert _errno_of(lambda: os.pread(fd, 10, 0)) == errno.ENOTCONN
                vol.bricks[0] = start_brickd(tmp_path, brick=old.brick, volume=old.volume,
                                             volume_id=old.volume_id, host=old.host,
                                             port=old.port)
                assert wait_for(lambda: _errno_of(lambda: os.stat(d / "f")) is None, 15)
                assert os.pread(fd, 10, 0) == b"before"  # the open handle still works
                (d / "g").write_bytes(b"after")
                assert sorted(os.listdir(d)) == ["f", "g"]
            finally:
                os.close(fd)
    finally:
        vol.stop()
