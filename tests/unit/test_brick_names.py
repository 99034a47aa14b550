"""Name checks and handle encoding of the brick (pure functions, no disk)."""

from __future__ import annotations

import errno
import os
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyglfs.brickd.names import (
    check_gfid,
    check_name,
    check_xattr_name,
    dir_handle_target,
    gfid_str,
    handle_rel,
    is_internal_xattr,
    parse_dir_handle,
)
from pyglfs.rpc.brickops import ROOT_GFID


@pytest.mark.parametrize("name, code", [
    (b".", errno.EINVAL),
    (b"..", errno.EINVAL),
    (b"a/b", errno.EINVAL),
    (b"/", errno.EINVAL),
    (b"a\0b", errno.EINVAL),
    (b"", errno.EINVAL),
    (b"x" * 256, errno.ENAMETOOLONG),
])
def test_bad_names_refused(name: bytes, code: int) -> None:
    for at_root in (False, True):
        with pytest.raises(OSError) as e:
            check_name(name, at_root=at_root)
        assert e.value.errno == code


def test_internal_dir_reserved_only_at_root() -> None:
    with pytest.raises(OSError) as e:
        check_name(b".pyglfs", at_root=True)
    assert e.value.errno == errno.EPERM
    with pytest.raises(OSError) as e:
        check_name(b".pyglfs", at_root=True, hidden_errno=errno.ENOENT)
    assert e.value.errno == errno.ENOENT
    check_name(b".pyglfs", at_root=False)
    check_name(b".pyglfsx", at_root=True)


def test_ordinary_names_pass() -> None:
    for name in (b"a", b"...", b".hidden", b"x" * 255, "é".encode(), b"\xff\xfe", b" "):
        check_name(name, at_root=True)


def test_gfid_for_new_inode() -> None:
    check_gfid(os.urandom(16))
    for bad in (ROOT_GFID, b"\0" * 16, b"short"):
        with pytest.raises(OSError) as e:
            check_gfid(bad)
        assert e.value.errno == errno.EINVAL


def test_handle_paths_match_uuid_text() -> None:
    g = uuid.uuid4()
    assert gfid_str(g.bytes) == str(g)
    h = g.hex
    assert handle_rel(g.bytes) == f"{h[:2]}/{h[2:4]}/{g}".encode()
    assert dir_handle_target(ROOT_GFID, b"top") == (
        b"../../00/00/00000000-0000-0000-0000-000000000001/top")


@given(st.binary(min_size=16, max_size=16),
       st.binary(min_size=1, max_size=255).filter(
           lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")))
def test_dir_handle_round_trip(pgfid: bytes, name: bytes) -> None:
    assert parse_dir_handle(dir_handle_target(pgfid, name)) == (pgfid, name)


@pytest.mark.parametrize("target", [
    b"/etc", b"../../00/00/x/name", b"", b"../../00/00/00000000-0000-0000-0000-000000000001/",
    b"../../00/00/00000000-0000-0000-0000-000000000001/a/b",
    b"../../11/00/00000000-0000-0000-0000-000000000001/a",
    b"../../00/00/00000000-0000-0000-0000-000000000001/..",
    b"../../zz/zz/zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz/a",
])
def test_malformed_dir_handles_rejected(target: bytes) -> None:
    assert parse_dir_handle(target) is None


def test_xattr_names() -> None:
    for name in ("trusted.gfid", "trusted.afr.v-client-0", "trusted.afr.dirty",
                 "trusted.pyglfs.volume-id"):
        assert is_internal_xattr(name)
    for name in ("user.x", "trusted.other", "security.selinux", "trusted.af"):
        assert not is_internal_xattr(name)
    check_xattr_name("user.x")
    for bad, code in (("", errno.EINVAL), ("user.\0", errno.EINVAL),
                      ("user." + "x" * 300, errno.ERANGE)):
        with pytest.raises(OSError) as e:
            check_xattr_name(bad)
        assert e.value.errno == code
