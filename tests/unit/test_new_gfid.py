"""new_gfid: version-4 UUIDs whose two-byte prefix is shared by a run of creates."""

from __future__ import annotations

from pyglfs.client.fuse import inodes
from pyglfs.client.fuse.inodes import new_gfid


def test_runs_share_a_prefix_and_stay_unique_and_v4() -> None:
    inodes._gfid_left = 0  # start a fresh run
    gfids = [new_gfid() for _ in range(inodes._GFID_RUN * 4)]
    assert len(set(gfids)) == len(gfids)
    assert all(len(g) == 16 and g[6] >> 4 == 4 and g[8] >> 6 == 2 for g in gfids)
    runs = [gfids[i:i + inodes._GFID_RUN] for i in range(0, len(gfids), inodes._GFID_RUN)]
    assert all(len({g[:2] for g in run}) == 1 for run in runs)
    assert len({run[0][:2] for run in runs}) > 1  # the prefix is drawn again per run
    assert len({g[2:6] for g in runs[0]}) == inodes._GFID_RUN  # the rest stays random
