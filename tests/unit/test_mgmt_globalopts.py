"""Cluster-wide options: validation, the options file, what a joiner accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyglfs.mgmt.errors import MgmtError
from pyglfs.mgmt.globalopts import GlobalOptions, normalize
from pyglfs.mgmt.statestore import StateError
from pyglfs.mgmt.transaction import TxnError


@pytest.mark.parametrize("key,value,want", [
    ("cluster.brick-multiplex", "enable", "on"), ("cluster.brick-multiplex", "OFF", "off"),
    ("cluster.max-bricks-per-process", "007", "7"),
    ("cluster.server-quorum-ratio", "60", "60%"), ("cluster.server-quorum-ratio", "75%", "75%"),
    ("cluster.daemon-log-level", "debug", "DEBUG"),
])
def test_normalize(key: str, value: str, want: str) -> None:
    assert normalize(key, value) == want


@pytest.mark.parametrize("key,value", [
    ("cluster.nope", "1"), ("cluster.brick-multiplex", "maybe"),
    ("cluster.max-bricks-per-process", "-1"), ("cluster.server-quorum-ratio", "101"),
    ("cluster.server-quorum-ratio", "x%"), ("cluster.daemon-log-level", "loud"),
])
def test_normalize_refuses(key: str, value: str) -> None:
    with pytest.raises(TxnError):
        normalize(key, value)


async def test_file_round_trip_and_defaults(tmp_path: Path) -> None:
    opts = GlobalOptions(tmp_path)
    opts.load()
    assert opts.effective()["cluster.max-bricks-per-process"] == "250"
    await opts.replace({"cluster.max-bricks-per-process": "10"})
    again = GlobalOptions(tmp_path)
    again.load()
    assert again.effective()["cluster.max-bricks-per-process"] == "10"


@pytest.mark.parametrize("content", [b"[]", b"{bad", b'{"k": 1}'])
def test_corrupt_options_file_names_it(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "options").write_bytes(content)
    with pytest.raises(StateError) as ei:
        GlobalOptions(tmp_path).load()
    assert ei.value.path == str(tmp_path / "options")
    assert (tmp_path / "options").read_bytes() == content


def test_joiner_checks_what_it_is_sent() -> None:
    assert GlobalOptions.check(None) == {}
    assert GlobalOptions.check({"cluster.brick-multiplex": "yes"}) == {
        "cluster.brick-multiplex": "on"}
    for bad in ([1], {"cluster.brick-multiplex": 1}, {"cluster.nope": "1"}):
        with pytest.raises(MgmtError):
            GlobalOptions.check(bad)
