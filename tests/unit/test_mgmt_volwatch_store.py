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


def test_store_reports_a_volume_starting_and_stopping(tmp_path: Path) -> None:
    """Mounts are served the volfile only while the volume is started: start and
    stop change what their getspec gets, though not the volfile's text."""
    store = VolumeStore(tmp_path)
    told: list[str] = []
    rec = record("gv")
    store.save(rec)
    store.on_client_volfile = told.append
    for status, heard in (("Started", 1), ("Started", 1), ("Stopped", 2), ("Stopped", 2),
                          ("Started", 3), ("Created", 4)):
        rec.status = status
        store.save(rec)
        assert told == ["gv"] * heard, status
    # A daemon restarted on a started volume writes it again: nothing changed.
    rec.status = "Started"
    store.save(rec)
    again = VolumeStore(tmp_path)
    again.on_client_volfile = told.append
    again.save(again.load()["gv"])
    assert told == ["gv"] * 5
