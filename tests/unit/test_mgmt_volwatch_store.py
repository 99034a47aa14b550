"""The volume store reports client volfile changes (what mgmt/volwatch.py pushes)."""

from __future__ import annotations

from pathlib import Path

from test_mgmt_volstore import record

from pyglfs.mgmt.volstore import VolumeStore


def test_store_reports_only_real_client_volfile_changes(tmp_path: Path) -> None:
    store = VolumeStore(tmp_path)
    told: list[str] = []
    store.on_client_volfile = told.append
    rec = record("gv")
    store.save(rec)
    assert told == ["gv"]
    store.save(rec)  # the same volfile again
    rec.status = "Started"  # not in the client volfile
    store.save(rec)
    assert told == ["gv"]
    rec.bricks[1].port = 49777  # a brick moved
    store.save(rec)
    rec.options["network.ping-timeout"] = "5"
    store.save(rec)
    rec.options["diagnostics.brick-log-level"] = "DEBUG"  # a brick-side option
    store.save(rec)
    assert told == ["gv"] * 3
    store.delete("gv")
    assert told == ["gv"] * 4
