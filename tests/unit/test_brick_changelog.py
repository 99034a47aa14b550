"""Changelog counters (xattrop) and the heal index."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyglfs.brickd import changelog
from pyglfs.brickd.changelog import HealIndex, apply_xattrop, is_pending, read_changelog

C0 = "trusted.afr.vol-client-0"
C1 = "trusted.afr.vol-client-1"
DIRTY = "trusted.afr.dirty"


def ctr(d: int, m: int = 0, e: int = 0) -> bytes:
    return struct.pack(">iii", d, m, e)


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    p = tmp_path / "f"
    p.write_bytes(b"")
    fd = os.open(p, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


def test_xattrop_adds_to_missing_and_existing_counters(fd: int) -> None:
    assert apply_xattrop(fd, {C1: ctr(1, 2, 3), DIRTY: ctr(1)}) == {C1: ctr(1, 2, 3),
                                                                      DIRTY: ctr(1)}
    assert apply_xattrop(fd, {C1: ctr(1, -2, 0), DIRTY: ctr(-1)}) == {C1: ctr(2, 0, 3),
                                                                       DIRTY: ctr(0)}
    assert os.getxattr(fd, C1) == ctr(2, 0, 3)
    assert os.getxattr(fd, DIRTY) == ctr(0)  # zeros are stored, not removed
    assert read_changelog(fd) == {C1: ctr(2, 0, 3), DIRTY: ctr(0)}
    assert apply_xattrop(fd, {}) == {}


def test_xattrop_counts_go_negative_and_refuse_int32_overflow(fd: int) -> None:
    assert apply_xattrop(fd, {C0: ctr(-5)}) == {C0: ctr(-5)}
    apply_xattrop(fd, {C1: ctr(2**31 - 1)})
    with pytest.raises(OSError) as ei:
        apply_xattrop(fd, {C0: ctr(1), C1: ctr(1)})
    assert ei.value.errno == errno.EINVAL
    assert read_changelog(fd) == {C0: ctr(-5), C1: ctr(2**31 - 1)}  # nothing written


@pytest.mark.parametrize(
    ("deltas", "code"),
    [
        ({"trusted.gfid": ctr(1)}, errno.EPERM),
        ({"user.x": ctr(1)}, errno.EPERM),
        ({"trusted.afr.": ctr(1)}, errno.EPERM),
        ({C0: b"\x00" * 11}, errno.EINVAL),
        ({C0: ctr(1), "trusted.pyglfs.volume-id": ctr(1)}, errno.EPERM),
    ],
)
def test_xattrop_refusals_change_nothing(fd: int, deltas: dict[str, bytes], code: int) -> None:
    with pytest.raises(OSError) as ei:
        apply_xattrop(fd, deltas)
    assert ei.value.errno == code
    assert read_changelog(fd) == {}


def test_a_corrupt_stored_value_is_einval(fd: int) -> None:
    os.setxattr(fd, C0, b"short")
    with pytest.raises(OSError) as ei:
        apply_xattrop(fd, {C0: ctr(1)})
    assert ei.value.errno == errno.EINVAL
    assert is_pending({C0: b"short"})


def test_is_pending() -> None:
    assert not is_pending({})
    assert not is_pending({C0: ctr(0), DIRTY: ctr(0), "user.x": b"1"})
    assert is_pending({C0: ctr(0), C1: ctr(0, 0, 1)})
    assert is_pending({DIRTY: ctr(-1)})


@pytest.fixture
def internal(tmp_path: Path) -> Iterator[int]:
    d = tmp_path / ".pyglfs"
    d.mkdir()
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield dfd
    finally:
        os.close(dfd)


def entries(tmp_path: Path) -> set[str]:
    return {p.name for p in (tmp_path / ".pyglfs/indices/xattrop").iterdir()
            if not p.name.startswith("base-")}


def gfid(i: int) -> bytes:
    return i.to_bytes(16, "big")


def test_note_indexes_and_unindexes_on_disk(tmp_path: Path, internal: int) -> None:
    idx = HealIndex(internal)
    g = os.urandom(16)
    idx.note(g, {C0: ctr(0), C1: ctr(1)})
    assert g in idx and entries(tmp_path) == {g.hex()}
    idx.note(g, {C0: ctr(0), C1: ctr(1)})
    idx.note(g, {DIRTY: ctr(0, 1)})
    assert len(idx) == 1
    base = [p for p in (tmp_path / ".pyglfs/indices/xattrop").iterdir()
            if p.name.startswith("base-")]
    assert len(base) == 1 and base[0].stat().st_nlink == 2  # entries are hard links
    idx.note(g, {C0: ctr(0), C1: ctr(0), DIRTY: ctr(0)})
    assert g not in idx and entries(tmp_path) == set()
    idx.discard(g)
    idx.close()


def test_index_survives_reopen_and_ignores_strays(tmp_path: Path, internal: int) -> None:
    idx = HealIndex(internal)
    gs = {os.urandom(16) for _ in range(5)}
    for g in gs:
        idx.add(g)
    idx.close()
    (tmp_path / ".pyglfs/indices/xattrop/not-a-gfid").write_bytes(b"")
    idx2 = HealIndex(internal)
    assert len(idx2) == 5
    got, _, eof = idx2.list(0, 100)
    assert set(got) == gs and eof
    idx2.close()


def test_list_pages_with_stable_cookies(internal: int) -> None:
    idx = HealIndex(internal)
    all_g = [gfid(i << 64) for i in range(1, 21)]
    for g in all_g:
        idx.add(g)
    seen: list[bytes] = []
    cookie, eof = 0, False
    for step in range(100):
        page, cookie, eof = idx.list(cookie, 3)
        assert len(page) <= 3
        seen += page
        if step == 1:
            idx.discard(all_g[0])  # already listed
            idx.discard(all_g[15])  # not yet listed: must not appear
            idx.add(gfid(1))  # sorts before the cookie: not listed in this pass
        if eof:
            break
    assert eof
    assert seen == [g for g in all_g if g != all_g[15]]
    idx.close()


def test_list_never_splits_a_run_sharing_the_cookie_prefix(internal: int) -> None:
    idx = HealIndex(internal)
    run = [gfid((7 << 64) | i) for i in range(5)]
    for g in [gfid(1 << 64), *run, gfid(9 << 64)]:
        idx.add(g)
    page, cookie, eof = idx.list(0, 2)
    assert page == [gfid(1 << 64), *run] and not eof
    page, cookie, eof = idx.list(cookie, 2)
    assert page == [gfid(9 << 64)] and eof
    assert idx.list(0, 0)[0] == [gfid(1 << 64)]
    with pytest.raises(OSError):
        idx.list(-1, 1)
    idx.close()


def test_add_survives_a_full_base_file(internal: int, monkeypatch: pytest.MonkeyPatch) -> None:
    idx = HealIndex(internal)
    idx.add(gfid(1))
    real_link = os.link
    calls = {"n": 0}

    def full_once(*a: object, **kw: object) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.EMLINK, "too many links")
        real_link(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(changelog.os, "link", full_once)
    idx.add(gfid(2))
    monkeypatch.undo()
    assert calls["n"] == 2 and gfid(2) in idx
    idx.close()
    idx2 = HealIndex(internal)
    assert idx2.list(0, 10) == ([gfid(1), gfid(2)], 0, True)
    idx2.close()


def test_membership_follows_adds_discards_and_reopen(internal: int) -> None:
    idx = HealIndex(internal)
    gs = [gfid(i) for i in range(1, 40)]
    for i, g in enumerate(gs):
        idx.add(g)
        if i % 3 == 0:
            idx.discard(g)
        idx.add(gs[0]) if i % 5 == 0 else idx.discard(gs[1])
    want = {g for i, g in enumerate(gs) if i % 3 != 0 and g != gs[1]} | {gs[0]}
    assert {g for g in gs if g in idx} == want
    assert set(idx.list(0, 1000)[0]) == want and len(idx) == len(want)
    idx.close()
    idx2 = HealIndex(internal)
    assert {g for g in gs if g in idx2} == want
    idx2.discard(gs[0])
    assert gs[0] not in idx2 and gs[0] not in idx2.list(0, 1000)[0]
    idx2.close()


def test_any_nonzero() -> None:
    assert not changelog.any_nonzero([])
    assert not changelog.any_nonzero([ctr(0), ctr(0, 0, 0)])
    assert changelog.any_nonzero([ctr(0), ctr(0, 0, -1)])
    assert changelog.any_nonzero([b"short"])


def test_xattrop_from_known_zeros_stores_the_delta(fd: int) -> None:
    known = {DIRTY: ctr(0)}
    assert apply_xattrop(fd, {DIRTY: ctr(1, 0, -2), C1: ctr(0, 3)}, known) == {
        DIRTY: ctr(1, 0, -2), C1: ctr(0, 3)}
    assert read_changelog(fd) == {DIRTY: ctr(1, 0, -2), C1: ctr(0, 3)}
    # From what the disk holds now (read back), and from a known non-zero value.
    assert apply_xattrop(fd, {DIRTY: ctr(-1, 0, 2)}) == {DIRTY: ctr(0)}
    assert apply_xattrop(fd, {C1: ctr(2**31 - 1)}, {C1: ctr(0, 3)}) == {C1: ctr(2**31 - 1, 3)}
    with pytest.raises(OSError) as ei:
        apply_xattrop(fd, {C1: ctr(1)}, {C1: ctr(2**31 - 1)})
    assert ei.value.errno == errno.EINVAL
    # A delta of the wrong size is refused even where nothing is stored yet.
    with pytest.raises(OSError) as ei:
        apply_xattrop(fd, {"trusted.afr.vol-client-7": b"\x00" * 13}, {})
    assert ei.value.errno == errno.EINVAL
    assert os.getxattr(fd, DIRTY) == ctr(0)


def test_index_lists_what_is_indexed_across_changes_between_listings(
        tmp_path: Path, internal: int) -> None:
    idx = HealIndex(internal)
    gs = [bytes([i]) * 16 for i in range(1, 60)]
    want: set[bytes] = set()
    for rnd in range(6):
        for i, g in enumerate(gs):
            step = (i * 7 + rnd * 3) % 5
            if step == 0:
                idx.add(g)
                want.add(g)
            elif step == 1:
                idx.discard(g)
                want.discard(g)
            elif step == 2:  # in and out again before the next listing
                idx.add(g)
                idx.discard(g)
                want.discard(g)
            elif step == 3:  # out and in again
                idx.discard(g)
                idx.add(g)
                want.add(g)
        assert len(idx) == len(want)
        listed: list[bytes] = []
        cookie, eof = 0, False
        for _ in range(100):
            page, cookie, eof = idx.list(cookie, 7)
            listed += page
            if eof:
                break
        assert listed == sorted(want)
        on_disk = {p.name for p in (tmp_path / ".pyglfs/indices/xattrop").iterdir()
                   if not p.name.startswith("base-")}
        assert on_disk == {g.hex() for g in want}
    idx.close()
