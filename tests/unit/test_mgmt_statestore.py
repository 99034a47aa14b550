"""pyglfsd's state directory: identity kept, peers round-trip, corruption refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyglfs.mgmt import statestore
from pyglfs.mgmt.statestore import (
    PeerRecord,
    StateError,
    StateStore,
    read_listen_record,
    write_atomic,
)

U1 = "11111111-2222-3333-4444-555555555555"


def opened(path: Path, lock: bool = False) -> StateStore:
    s = StateStore(path)
    s.open(lock=lock)
    return s


def test_uuid_created_once_and_kept(tmp_path: Path) -> None:
    a = opened(tmp_path).load_or_create_uuid()
    b = opened(tmp_path).load_or_create_uuid()
    assert a == b
    assert (tmp_path / "pyglfsd.info").is_file()


def test_peers_round_trip_and_delete(tmp_path: Path) -> None:
    s = opened(tmp_path)
    s.load_or_create_uuid()
    rec = PeerRecord(U1, "127.0.0.3", 24750)
    s.save_peer(rec)
    assert opened(tmp_path).load_peers() == {U1: rec}
    s.delete_peer(U1)
    assert opened(tmp_path).load_peers() == {}


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1,2]", b'{"uuid": "zz"}',
                                     b"\xff\xfe"])
def test_corrupt_info_names_file_and_is_untouched(tmp_path: Path, content: bytes) -> None:
    info = tmp_path / "pyglfsd.info"
    info.write_bytes(content)
    with pytest.raises(StateError) as ei:
        opened(tmp_path).load_or_create_uuid()
    assert ei.value.path == str(info)
    assert str(info) in str(ei.value)
    assert info.read_bytes() == content


def test_corrupt_peer_file_names_it(tmp_path: Path) -> None:
    s = opened(tmp_path)
    s.load_or_create_uuid()
    bad = tmp_path / "peers" / U1
    bad.write_bytes(b'{"uuid": "%s", "hostname": 3}' % U1.encode())
    with pytest.raises(StateError) as ei:
        s.load_peers()
    assert ei.value.path == str(bad)
    assert bad.read_bytes().startswith(b'{"uuid"')


def test_peer_file_under_wrong_name_is_refused(tmp_path: Path) -> None:
    s = opened(tmp_path)
    s.save_peer(PeerRecord(U1, "h", 1))
    os.rename(tmp_path / "peers" / U1, tmp_path / "peers" / "aaaaaaaa-2222-3333-4444-555555555555")
    with pytest.raises(StateError):
        s.load_peers()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_unreadable_info_names_file(tmp_path: Path) -> None:
    opened(tmp_path).load_or_create_uuid()
    info = tmp_path / "pyglfsd.info"
    info.chmod(0)
    with pytest.raises(StateError) as ei:
        opened(tmp_path).load_or_create_uuid()
    assert ei.value.path == str(info)


def test_lost_identity_with_peers_is_not_recreated(tmp_path: Path) -> None:
    s = opened(tmp_path)
    s.load_or_create_uuid()
    s.save_peer(PeerRecord(U1, "127.0.0.3", 24750))
    (tmp_path / "pyglfsd.info").unlink()
    with pytest.raises(StateError) as ei:
        opened(tmp_path).load_or_create_uuid()
    assert "pyglfsd.info" in str(ei.value)
    assert not (tmp_path / "pyglfsd.info").exists()


def test_leftover_temporary_files_are_ignored(tmp_path: Path) -> None:
    s = opened(tmp_path)
    (tmp_path / "peers" / f".{U1}.tmp.123").write_bytes(b"torn")
    assert s.load_peers() == {}


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "f"
    write_atomic(p, b"one")
    write_atomic(p, b"two")
    assert p.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f"]


def test_second_daemon_lock_is_refused(tmp_path: Path) -> None:
    a = opened(tmp_path, lock=True)
    try:
        with pytest.raises(StateError) as ei:
            opened(tmp_path, lock=True)
        assert "another pyglfsd" in str(ei.value)
    finally:
        a.close()
    opened(tmp_path, lock=True).close()


def test_listen_record(tmp_path: Path) -> None:
    s = opened(tmp_path)
    assert read_listen_record(tmp_path) is None
    s.save_listen("127.0.0.2", 24750)
    assert read_listen_record(tmp_path) == ("127.0.0.2", 24750)
    (tmp_path / "listen").write_bytes(b"garbage")
    assert read_listen_record(tmp_path) is None
    s.clear_listen()
    assert read_listen_record(tmp_path) is None


def test_unreadable_peer_entry_names_it(tmp_path: Path) -> None:
    s = opened(tmp_path)
    s.load_or_create_uuid()
    odd = tmp_path / "peers" / U1
    odd.mkdir()
    with pytest.raises(StateError) as ei:
        s.load_peers()
    assert ei.value.path == str(odd) and "cannot read" in str(ei.value)
    assert odd.is_dir()


def test_unwritable_identity_is_a_state_error(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def full(path: Path, obj: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(statestore, "write_json", full)
    with pytest.raises(StateError) as ei:
        opened(tmp_path).load_or_create_uuid()
    assert ei.value.path == str(tmp_path / "pyglfsd.info")
    assert "No space left on device" in str(ei.value)


def test_state_dir_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "state"
    f.write_bytes(b"x")
    with pytest.raises(StateError) as ei:
        StateStore(f).open()
    assert str(f) in str(ei.value)


def test_newer_state_version_is_refused(tmp_path: Path) -> None:
    info = tmp_path / "pyglfsd.info"
    info.write_text(f'{{"uuid": "{U1}", "version": 99}}')
    with pytest.raises(StateError) as ei:
        opened(tmp_path).load_or_create_uuid()
    assert "newer" in str(ei.value) and ei.value.path == str(info)
