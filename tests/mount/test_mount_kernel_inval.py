"""The bricks' cache invalidations reach the kernel: with attribute and entry
timeouts of 30 s, a change made through one mount is seen through another in
seconds, because md-cache's event also drops the kernel's attributes and dentries."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from helpers.mounts import Volume, mounted_volume, wait_for
from test_mount_mdcache import _mode, with_md_cache

KERNEL_TIMEOUTS = "attribute-timeout=30,entry-timeout=30"
PROMPT = 4.0  # far below the kernel's 30 s


def _exists(p: Path) -> bool:
    return os.path.exists(p)


@pytest.mark.parametrize("volume", ["replica2"], indirect=True)
def test_changes_reach_the_other_mounts_kernel(volume: Volume) -> None:
    base = volume.volfile.parent
    vf = with_md_cache(volume, base / "mdcache-kinval.vol",
                       **{"cache-invalidation": "on", "md-cache-timeout": "600"})
    with mounted_volume(vf, base / "mnt-kinval-a", KERNEL_TIMEOUTS) as ma, \
            mounted_volume(vf, base / "mnt-kinval-b", KERNEL_TIMEOUTS) as mb:
        a, b = ma.mountpoint, mb.mountpoint
        d = f"kinval-{uuid.uuid4().hex[:8]}"
        os.mkdir(a / d)
        (a / d / "f").write_bytes(b"data")
        os.chmod(a / d / "f", 0o644)
        assert _mode(b / d / "f") == 0o644  # b's kernel holds the dentry and attributes
        os.chmod(a / d / "f", 0o600)
        assert wait_for(lambda: _mode(b / d / "f") == 0o600, PROMPT)
        os.rename(a / d / "f", a / d / "g")
        assert wait_for(lambda: not _exists(b / d / "f"), PROMPT)
        assert (b / d / "g").read_bytes() == b"data"
        os.unlink(a / d / "g")
        assert wait_for(lambda: not _exists(b / d / "g"), PROMPT)
        os.rmdir(a / d)
        assert wait_for(lambda: not _exists(b / d), PROMPT)
