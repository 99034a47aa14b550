"""The brick API, end to end through the wire protocol.

Every test runs twice: against a brick served in-process over trio memory
streams, and against a real ``pyglfs-brickd`` on 127.0.0.1 (shared by the
module, so each test works in a directory of its own).
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio
import xxhash
from helpers.brickclient import AUTH, VOLUME, BrickClient, BrickUnderTest

from pyglfs.rpc.brickops import IATT_FIELDS, ROOT_GFID, Iatt, afr_xattr
from pyglfs.rpc.errors import HandshakeRefused
from pyglfs.rpc.framing import FrameReader, encode_frame

ROOT = ROOT_GFID
GFID_AT = IATT_FIELDS.index("gfid")


def new_gfid() -> bytes:
    return uuid.uuid4().bytes


def ctr(data: int, meta: int = 0, entry: int = 0) -> bytes:
    return struct.pack(">iii", data, meta, entry)


async def expect_errno(code: int | set[int], coro: Any) -> OSError:
    codes = {code} if isinstance(code, int) else code
    with pytest.raises(OSError) as ei:
        await coro
    assert ei.value.errno in codes, (
        f"expected {[errno.errorcode[c] for c in codes]}, got {ei.value!r}")
    return ei.value


async def fresh_dir(c: BrickClient) -> tuple[bytes, bytes]:
    """A new directory in the brick root for one test: (gfid, name)."""
    g = new_gfid()
    name = f"t-{uuid.uuid4().hex[:12]}".encode()
    await c.call("mkdir", {"pgfid": ROOT, "name": name, "gfid": g, "mode": 0o755,
                           "uid": 0, "gid": 0})
    return g, name


async def new_file(c: BrickClient, parent: bytes, name: bytes, mode: int = 0o644) -> Iatt:
    g = new_gfid()
    r = await c.call("create", {"pgfid": parent, "name": name, "gfid": g, "mode": mode,
                                "uid": 0, "gid": 0})
    iatt = Iatt.from_wire(r["iatt"])
    assert iatt.gfid == g
    await c.call("release", {"gfid": g})  # create counts as an open
    return iatt


# ---- entries ---------------------------------------------------------------------------


async def test_null_and_statfs(client: BrickClient) -> None:
    assert await client.call("null") == {}
    st = await client.call("statfs")
    for key in ("bsize", "frsize", "blocks", "bfree", "bavail", "files", "ffree", "namemax"):
        assert type(st[key]) is int, key
    assert st["namemax"] >= 255


async def test_entry_ops_end_to_end(brick: BrickUnderTest, client: BrickClient) -> None:
    d, dname = await fresh_dir(client)
    sub = new_gfid()
    r = await client.call("mkdir", {"pgfid": d, "name": b"sub", "gfid": sub, "mode": 0o750,
                                    "uid": 1000, "gid": 1000})
    it = Iatt.from_wire(r["iatt"])
    assert it.gfid == sub and stat.S_ISDIR(it.mode) and stat.S_IMODE(it.mode) == 0o750
    assert (it.uid, it.gid) == (1000, 1000)
    f = await new_file(client, d, b"file")
    assert stat.S_ISREG(f.mode) and f.size == 0

    found = await client.call("lookup", {"pgfid": d, "name": b"file"})
    assert Iatt.from_wire(found["iatt"]).gfid == f.gfid
    assert isinstance(found["xattrs"], dict)
    by_gfid = await client.call("lookup_gfid", {"gfid": sub})
    assert Iatt.from_wire(by_gfid["iatt"]).gfid == sub
    assert Iatt.from_wire((await client.call("stat", {"gfid": f.gfid}))["iatt"]).gfid == f.gfid

    # the brick tree stays readable with plain tools
    assert (brick.root / dname.decode() / "file").is_file()
    assert (brick.root / dname.decode() / "sub").is_dir()

    r = await client.call("link", {"gfid": f.gfid, "pgfid": sub, "name": b"hard"})
    assert Iatt.from_wire(r["iatt"]).nlink == 2
    r = await client.call("rename", {"old_pgfid": d, "old_name": b"file", "new_pgfid": sub,
                                     "new_name": b"moved"})
    assert Iatt.from_wire(r["iatt"]).gfid == f.gfid
    await expect_errno(errno.ENOENT, client.call("lookup", {"pgfid": d, "name": b"file"}))

    lnk = new_gfid()
    r = await client.call("symlink", {"pgfid": d, "name": b"ln", "gfid": lnk,
                                      "target": b"sub/moved", "uid": 0, "gid": 0})
    assert stat.S_ISLNK(Iatt.from_wire(r["iatt"]).mode)
    assert (await client.call("readlink", {"gfid": lnk}))["target"] == b"sub/moved"

    fifo = new_gfid()
    r = await client.call("mknod", {"pgfid": d, "name": b"fifo", "gfid": fifo,
                                    "mode": stat.S_IFIFO | 0o600, "rdev": 0, "uid": 0, "gid": 0})
    assert stat.S_ISFIFO(Iatt.from_wire(r["iatt"]).mode)

    names = await readdir_names(client, d)
    assert {b"sub", b"ln", b"fifo"} <= names and b"file" not in names
    assert b".pyglfs" not in await readdir_names(client, ROOT)

    await client.call("unlink", {"pgfid": sub, "name": b"hard"})
    await client.call("unlink", {"pgfid": sub, "name": b"moved"})
    await expect_errno(errno.ESTALE, client.call("stat", {"gfid": f.gfid}))
    await client.call("rmdir", {"pgfid": d, "name": b"sub"})
    await expect_errno(errno.ENOENT, client.call("lookup", {"pgfid": d, "name": b"sub"}))


async def readdir_names(c: BrickClient, gfid: bytes, count: int = 2) -> set[bytes]:
    """All names of a directory, paging with small counts to exercise cookies."""
    names: list[bytes] = []
    cookie = 0
    for _ in range(1000):
        r = await c.call("readdir", {"gfid": gfid, "cookie": cookie, "count": count,
                                     "plus": True})
        for name, ck, _dtype, iatt in r["entries"]:
            names.append(name)
            cookie = ck
            if name not in (b".", b".."):
                assert iatt is not None and len(iatt) == len(IATT_FIELDS)
        if r["eof"]:
            break
    else:
        pytest.fail("readdir never reached eof")
    assert len(names) == len(set(names)), f"readdir repeated entries: {names}"
    return set(names) - {b".", b".."}


async def test_readdir_pages_every_entry_once(client: BrickClient) -> None:
    d, _ = await fresh_dir(client)
    want = {f"n{i:03d}".encode() for i in range(37)}
    for name in sorted(want):
        await new_file(client, d, name)
    assert await readdir_names(client, d, count=5) == want


async def test_errno_names_cross_the_wire(client: BrickClient) -> None:
    d, _ = await fresh_dir(client)
    await expect_errno(errno.ENOENT, client.call("lookup", {"pgfid": d, "name": b"nope"}))
    await new_file(client, d, b"x")
    await expect_errno(errno.EEXIST, client.call(
        "mkdir", {"pgfid": d, "name": b"x", "gfid": new_gfid(), "mode": 0o755, "uid": 0,
                  "gid": 0}))
    await expect_errno(errno.EEXIST, client.call(
        "create", {"pgfid": d, "name": b"x", "gfid": new_gfid(), "mode": 0o644, "uid": 0,
                   "gid": 0, "flags": os.O_EXCL}))
    await expect_errno(errno.ENOTEMPTY, client.call("rmdir", {"pgfid": ROOT,
                                                              "name": await name_of(client, d)}))
    await expect_errno(errno.ESTALE, client.call("stat", {"gfid": new_gfid()}))
    await expect_errno(errno.ESTALE, client.call("lookup", {"pgfid": new_gfid(), "name": b"a"}))


async def name_of(c: BrickClient, d: bytes) -> bytes:
    for _ in range(1):
        r = await c.call("readdir", {"gfid": ROOT, "cookie": 0, "count": 100000})
        for name, _ck, _t, _i in r["entries"]:
            if name in (b".", b".."):
                continue
            try:
                found = await c.call("lookup", {"pgfid": ROOT, "name": name})
            except OSError:
                continue
            if Iatt.from_wire(found["iatt"]).gfid == d:
                return bytes(name)
    raise AssertionError("directory not found in root")


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("stat", {}),  # missing argument
        ("stat", {"gfid": b"short"}),  # gfid not 16 bytes
        ("stat", {"gfid": "0" * 16}),  # str, not bytes
        ("stat", {"gfid": ROOT, "extra": 1}),  # unknown argument
        ("read", {"gfid": ROOT, "offset": -1, "size": 1}),
        ("inodelk", {"gfid": ROOT, "domain": "d", "type": "maybe", "start": 0, "len": 0,
                     "owner": b"o"}),
    ],
)
async def test_bad_arguments_are_einval(client: BrickClient, op: str, args: dict[str, Any]) -> None:
    err = await expect_errno(errno.EINVAL, client.call(op, args))
    assert err.strerror


async def test_unknown_op_is_enosys(client: BrickClient) -> None:
    await expect_errno(errno.ENOSYS, client.call("format_disk", {}))
    assert await client.call("null") == {}  # the connection survives


async def test_hostile_names_are_refused(client: BrickClient) -> None:
    d, _ = await fresh_dir(client)
    bad = {b"..": {errno.EINVAL, errno.EPERM}, b".": {errno.EINVAL, errno.EPERM},
           b"a/b": {errno.EINVAL, errno.EPERM}, b"a\0b": {errno.EINVAL, errno.EPERM},
           b"x" * 256: {errno.ENAMETOOLONG}}
    for name, codes in bad.items():
        await expect_errno(codes, client.call(
            "mkdir", {"pgfid": d, "name": name, "gfid": new_gfid(), "mode": 0o755, "uid": 0,
                      "gid": 0}))
    await expect_errno({errno.EPERM, errno.EINVAL, errno.EACCES}, client.call(
        "mkdir", {"pgfid": ROOT, "name": b".pyglfs", "gfid": new_gfid(), "mode": 0o755,
                  "uid": 0, "gid": 0}))
    await expect_errno(errno.ENOENT, client.call("lookup", {"pgfid": ROOT, "name": b".pyglfs"}))


# ---- data --------------------------------------------------------------------------------


async def test_data_ops_and_checksums(brick: BrickUnderTest, client: BrickClient) -> None:
    d, dname = await fresh_dir(client)
    f = await new_file(client, d, b"data")
    await client.call("open", {"gfid": f.gfid, "flags": os.O_RDWR})
    payload = os.urandom(300_000)
    r = await client.call("write", {"gfid": f.gfid, "offset": 0, "data": payload})
    assert Iatt.from_wire(r["iatt"]).size == len(payload)
    await client.call("write", {"gfid": f.gfid, "offset": 1_000_000, "data": b"tail"})
    assert (await client.call("read", {"gfid": f.gfid, "offset": 299_990, "size": 20}))[
        "data"] == payload[-10:] + b"\0" * 10
    end = await client.call("read", {"gfid": f.gfid, "offset": 1_000_002, "size": 100})
    assert end["data"] == b"il"  # short at end of file
    await client.call("flush", {"gfid": f.gfid})
    await client.call("fsync", {"gfid": f.gfid, "datasync": True})

    block = 64 * 1024
    sums = (await client.call("checksum", {"gfid": f.gfid, "offset": 0, "size": 4 * block,
                                           "block": block}))["sums"]
    expect = [xxhash.xxh3_64_intdigest(payload[i:i + block]) for i in range(0, 4 * block, block)]
    assert sums == expect

    r = await client.call("setattr", {"gfid": f.gfid, "size": 1000, "mode": 0o600})
    it = Iatt.from_wire(r["iatt"])
    assert it.size == 1000 and stat.S_IMODE(it.mode) == 0o600
    r = await client.call("fallocate", {"gfid": f.gfid, "mode": 0, "offset": 0,
                                        "length": 8192})
    assert Iatt.from_wire(r["iatt"]).size == 8192
    await client.call("setattr", {"gfid": f.gfid, "mtime_ns": 1_000_000_000_123,
                                  "atime_ns": 2_000_000_000_000})
    it = Iatt.from_wire((await client.call("stat", {"gfid": f.gfid}))["iatt"])
    assert it.mtime_ns == 1_000_000_000_123 and it.atime_ns == 2_000_000_000_000
    await client.call("release", {"gfid": f.gfid})
    disk = (brick.root / dname.decode() / "data").read_bytes()
    assert disk[:1000] == payload[:1000] and disk[1000:] == b"\0" * 7192


# ---- xattrs and the changelog ------------------------------------------------------------


async def test_user_xattrs_and_internal_ones_protected(client: BrickClient) -> None:
    d, _ = await fresh_dir(client)
    f = await new_file(client, d, b"x")
    await client.call("setxattr", {"gfid": f.gfid, "name": "user.color", "value": b"blue"})
    assert (await client.call("getxattr", {"gfid": f.gfid, "name": "user.color"}))[
        "value"] == b"blue"
    names = (await client.call("listxattr", {"gfid": f.gfid}))["names"]
    assert "user.color" in names
    assert not any(n.startswith(("trusted.gfid", "trusted.afr.", "trusted.pyglfs.")) for n in names)
    await client.call("removexattr", {"gfid": f.gfid, "name": "user.color"})
    await expect_errno(errno.ENODATA, client.call("getxattr", {"gfid": f.gfid,
                                                               "name": "user.color"}))
    for name in ("trusted.gfid", afr_xattr(VOLUME, 0), "trusted.pyglfs.volume-id"):
        await expect_errno(errno.EPERM, client.call(
            "setxattr", {"gfid": f.gfid, "name": name, "value": b"\0" * 16}))
        await expect_errno(errno.EPERM, client.call("removexattr", {"gfid": f.gfid,
                                                                    "name": name}))


async def index_gfids(c: BrickClient) -> set[bytes]:
    out: set[bytes] = set()
    cookie = 0
    for _ in range(10000):
        r = await c.call("index_list", {"cookie": cookie, "count": 2})
        out.update(r["gfids"])
        cookie = r["cookie"]
        if r["eof"]:
            return out
    raise AssertionError("index_list never reached eof")


async def test_xattrop_and_heal_index(client: BrickClient) -> None:
    d, _ = await fresh_dir(client)
    f = await new_file(client, d, b"x")
    blame = afr_xattr(VOLUME, 1)
    r = await client.call("xattrop", {"gfid": f.gfid, "xattrop": {blame: ctr(2, 1)}})
    assert r["xattrs"] == {blame: ctr(2, 1)}
    assert f.gfid in await index_gfids(client)
    found = await client.call("lookup", {"pgfid": d, "name": b"x"})
    assert found["xattrs"].get(blame) == ctr(2, 1)
    await expect_errno(errno.EPERM, client.call("xattrop", {"gfid": f.gfid,
                                                            "xattrop": {"user.x": ctr(1)}}))

    # a modifying op carries its dirty mark in the same request
    await client.call("open", {"gfid": f.gfid, "flags": os.O_RDWR})
    await client.call("write", {"gfid": f.gfid, "offset": 0, "data": b"abc",
                                "xattrop": {"trusted.afr.dirty": ctr(1)}})
    r = await client.call("xattrop", {"gfid": f.gfid, "xattrop": {blame: ctr(-2, -1),
                                                                  "trusted.afr.dirty": ctr(0)}})
    assert r["xattrs"][blame] == ctr(0)
    assert f.gfid in await index_gfids(client)  # still dirty
    await client.call("xattrop", {"gfid": f.gfid, "xattrop": {"trusted.afr.dirty": ctr(-1)}})
    assert f.gfid not in await index_gfids(client)
    await client.call("release", {"gfid": f.gfid})

    # entry ops mark the parent
    await client.call("mkdir", {"pgfid": d, "name": b"e", "gfid": new_gfid(), "mode": 0o755,
                                "uid": 0, "gid": 0, "xattrop": {blame: ctr(0, 0, 1)}})
    assert d in await index_gfids(client)
    parent = await client.call("lookup_gfid", {"gfid": d})
    assert parent["xattrs"].get(blame) == ctr(0, 0, 1)


# ---- locks -------------------------------------------------------------------------------


def ilk(gfid: bytes, kind: str, owner: bytes, block: bool = False) -> dict[str, Any]:
    return {"gfid": gfid, "domain": "cvol-replicate-0", "type": kind, "start": 0, "len": 0,
            "owner": owner, "block": block}


async def test_inodelk_contention_event_reaches_the_holder(
    brick: BrickUnderTest, client: BrickClient,
) -> None:
    d, _ = await fresh_dir(client)
    f = await new_file(client, d, b"locked")
    await client.call("inodelk", ilk(f.gfid, "wr", b"holder"))
    async with brick.connect() as other:
        await expect_errno(errno.EAGAIN, other.call("inodelk", ilk(f.gfid, "wr", b"other")))
        got = trio.Event()

        async def blocked() -> None:
            await other.call("inodelk", ilk(f.gfid, "wr", b"other", block=True))
            got.set()

        async with trio.open_nursery() as n:
            n.start_soon(blocked)
            ev = await client.wait_event("lock-contention")
            assert ev == {"gfid": f.gfid, "domain": "cvol-replicate-0", "owner": b"holder"}
            assert not got.is_set()
            await client.call("inodelk", ilk(f.gfid, "un", b"holder"))
            with trio.fail_after(10):
                await got.wait()
        await expect_errno(errno.EAGAIN, client.call("inodelk", ilk(f.gfid, "rd", b"holder")))
        assert [e for e in other.events if e[0] == "lock-contention"] == []


async def test_create_can_take_the_new_files_inode_lock(
    brick: BrickUnderTest, client: BrickClient,
) -> None:
    d, _ = await fresh_dir(client)
    g = new_gfid()
    lock = {"domain": "cvol-replicate-0", "owner": b"creator"}
    r = await client.call("create", {"pgfid": d, "name": b"c", "gfid": g, "mode": 0o644,
                                     "uid": 0, "gid": 0, "lock": lock})
    assert r["locked"] is True and Iatt.from_wire(r["iatt"]).gfid == g
    async with brick.connect() as other:
        await expect_errno(errno.EAGAIN, other.call("inodelk", ilk(g, "wr", b"other")))
        await client.call("inodelk", ilk(g, "un", b"creator"))
        await other.call("inodelk", ilk(g, "wr", b"other"))
        # A failed create takes no lock; a malformed lock argument is refused.
        await expect_errno(errno.EEXIST, client.call("create", {
            "pgfid": d, "name": b"c", "gfid": new_gfid(), "mode": 0o644, "uid": 0, "gid": 0,
            "lock": lock}))
        await expect_errno(errno.EINVAL, client.call("create", {
            "pgfid": d, "name": b"c2", "gfid": new_gfid(), "mode": 0o644, "uid": 0, "gid": 0,
            "lock": {"domain": "x"}}))
        # A lock already held elsewhere is not granted, and the file is made anyway.
        g2 = new_gfid()
        await other.call("inodelk", ilk(g2, "wr", b"other"))
        r = await client.call("create", {"pgfid": d, "name": b"c3", "gfid": g2, "mode": 0o644,
                                         "uid": 0, "gid": 0, "lock": lock})
        assert r["locked"] is False and Iatt.from_wire(r["iatt"]).gfid == g2
    await client.call("release", {"gfid": g})
    await client.call("release", {"gfid": g2})


async def test_killed_connection_releases_its_locks(brick: BrickUnderTest,
                                                    client: BrickClient) -> None:
    d, _ = await fresh_dir(client)
    f = await new_file(client, d, b"locked")
    async with brick.connect() as doomed:
        await doomed.call("inodelk", ilk(f.gfid, "wr", b"doomed"))
        await doomed.call("entrylk", {"pgfid": d, "name": b"n", "domain": "dom", "type": "wr",
                                      "owner": b"doomed"})
        await doomed.call("lk", {"gfid": f.gfid, "cmd": "setlk", "type": "wr", "start": 0,
                                 "len": 0, "pid": 42, "owner": b"doomed"})
        await expect_errno(errno.EAGAIN, client.call("inodelk", ilk(f.gfid, "wr", b"me")))
        got = trio.Event()

        async def waiter() -> None:
            await client.call("inodelk", ilk(f.gfid, "wr", b"me", block=True))
            got.set()

        async with trio.open_nursery() as n:
            n.start_soon(waiter)
            await doomed.wait_event("lock-contention")
            await doomed.aclose()
            with trio.fail_after(10):
                await got.wait()
    await client.call("entrylk", {"pgfid": d, "name": b"n", "domain": "dom", "type": "wr",
                                  "owner": b"me"})
    assert await client.call("lk", {"gfid": f.gfid, "cmd": "getlk", "type": "wr", "start": 0,
                                    "len": 0, "pid": 1, "owner": b"me"}) == {"type": "un"}


async def test_entrylk_and_posix_locks_across_connections(brick: BrickUnderTest,
                                                          client: BrickClient) -> None:
    d, _ = await fresh_dir(client)
    f = await new_file(client, d, b"p")
    async with brick.connect() as other:
        await client.call("entrylk", {"pgfid": d, "name": b"a", "domain": "dom", "type": "wr",
                                      "owner": b"o1"})
        await other.call("entrylk", {"pgfid": d, "name": b"b", "domain": "dom", "type": "wr",
                                     "owner": b"o2"})
        await expect_errno(errno.EAGAIN, other.call(
            "entrylk", {"pgfid": d, "domain": "dom", "type": "rd", "owner": b"o2"}))
        await client.call("lk", {"gfid": f.gfid, "cmd": "setlk", "type": "rd", "start": 10,
                                 "len": 10, "pid": 7, "owner": b"o1"})
        assert await other.call("lk", {"gfid": f.gfid, "cmd": "getlk", "type": "wr",
                                       "start": 0, "len": 0, "pid": 8, "owner": b"o2"}) == {
            "type": "rd", "start": 10, "len": 10, "pid": 7, "owner": b"o1"}
        await expect_errno(errno.EAGAIN, other.call(
            "lk", {"gfid": f.gfid, "cmd": "setlk", "type": "wr", "start": 15, "len": 1,
                   "pid": 8, "owner": b"o2"}))
        await other.call("lk", {"gfid": f.gfid, "cmd": "setlk", "type": "rd", "start": 15,
                                "len": 1, "pid": 8, "owner": b"o2"})


# ---- handshake ---------------------------------------------------------------------------


async def test_wrong_credentials_and_volume_are_refused(brick: BrickUnderTest) -> None:
    with pytest.raises(HandshakeRefused) as ei:
        async with brick.connect(auth={"username": AUTH["username"], "password": "wrong"}):
            pytest.fail("connected with a wrong password")
    assert "authentication failed" in ei.value.reason
    with pytest.raises(HandshakeRefused):
        async with brick.connect(auth=None):
            pytest.fail("connected without credentials")
    with pytest.raises(HandshakeRefused) as ei:
        async with brick.connect(volume="othervol"):
            pytest.fail("connected to the wrong volume")
    assert "othervol" in ei.value.reason and VOLUME in ei.value.reason


async def test_refused_client_runs_no_op(brick: BrickUnderTest, client: BrickClient) -> None:
    name = f"never-{uuid.uuid4().hex}".encode()
    stream = await brick.raw_stream()
    try:
        hello = {"hello": {"version": 1, "role": "client", "volume": VOLUME, "client_id": "evil",
                           "auth": {"username": AUTH["username"], "password": "guess"}}}
        mkdir = {"id": 1, "op": "mkdir", "args": {"pgfid": ROOT, "name": name,
                                                  "gfid": new_gfid(), "mode": 0o755, "uid": 0,
                                                  "gid": 0}}
        await stream.send_all(encode_frame(hello) + encode_frame(mkdir))
        reader = FrameReader(stream)
        got: list[Any] = []
        with trio.fail_after(10):
            while True:
                msgs = await reader.receive()
                if msgs is None:
                    break
                got += msgs
        assert len(got) == 1 and "refused" in got[0], got
    finally:
        await trio.aclose_forcefully(stream)
    await expect_errno(errno.ENOENT, client.call("lookup", {"pgfid": ROOT, "name": name}))
    assert not (brick.root / name.decode()).exists()


# ---- confinement -------------------------------------------------------------------------


async def test_symlink_to_outside_is_never_followed(brick: BrickUnderTest, client: BrickClient,
                                                    tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    outside.chmod(0o755)
    etc_before = os.stat("/etc")
    out_before = os.stat(outside)
    probe = f"pyglfs-probe-{uuid.uuid4().hex[:8]}"
    d, _ = await fresh_dir(client)
    links = {}
    for lname, target in ((b"evil", b"/etc"), (b"evil2", os.fsencode(outside))):
        g = new_gfid()
        await client.call("symlink", {"pgfid": d, "name": lname, "gfid": g, "target": target,
                                      "uid": 0, "gid": 0})
        looked = await client.call("lookup", {"pgfid": d, "name": lname})
        assert Iatt.from_wire(looked["iatt"]).gfid == g
        links[lname] = g
    not_dir = {errno.ENOTDIR, errno.ELOOP, errno.EINVAL, errno.EPERM, errno.EACCES,
               errno.ESTALE, errno.ENOENT}
    try:
        for g in links.values():
            await expect_errno(not_dir | {errno.EOPNOTSUPP}, client.call(
                "open", {"gfid": g, "flags": os.O_RDWR}))
            await expect_errno(not_dir, client.call(
                "create", {"pgfid": g, "name": probe.encode(), "gfid": new_gfid(),
                           "mode": 0o644, "uid": 0, "gid": 0}))
            await expect_errno(not_dir, client.call(
                "mkdir", {"pgfid": g, "name": probe.encode(), "gfid": new_gfid(),
                          "mode": 0o755, "uid": 0, "gid": 0}))
            await expect_errno(not_dir, client.call("lookup", {"pgfid": g, "name": b"secret"}))
            await expect_errno(not_dir, client.call(
                "readdir", {"gfid": g, "cookie": 0, "count": 10}))
            await expect_errno(not_dir, client.call(
                "rename", {"old_pgfid": g, "old_name": b"secret", "new_pgfid": d,
                           "new_name": b"stolen"}))
            await new_file(client, d, b"mine-" + probe.encode())
            await expect_errno(not_dir, client.call(
                "rename", {"old_pgfid": d, "old_name": b"mine-" + probe.encode(),
                           "new_pgfid": g, "new_name": probe.encode()}))
            await client.call("unlink", {"pgfid": d, "name": b"mine-" + probe.encode()})
            # setattr acts on the link itself or fails; never on its target
            for attrs in ({"mode": 0o777}, {"mtime_ns": 123_000_000_000}, {"size": 0},
                          {"uid": 4242, "gid": 4242}):
                try:
                    await client.call("setattr", {"gfid": g, **attrs})
                except OSError as e:
                    assert e.errno in not_dir | {errno.EOPNOTSUPP}, e
        assert not os.path.lexists(f"/etc/{probe}")
        assert not os.path.lexists(outside / probe)
        assert (outside / "secret").read_bytes() == b"secret"
        etc_after = os.stat("/etc")
        out_after = os.stat(outside)
        for attr in ("st_mode", "st_uid", "st_gid", "st_mtime_ns", "st_nlink"):
            assert getattr(etc_after, attr) == getattr(etc_before, attr), attr
            assert getattr(out_after, attr) == getattr(out_before, attr), attr
    finally:
        leaked = f"/etc/{probe}"
        if os.path.isdir(leaked) and not os.path.islink(leaked):
            os.rmdir(leaked)
        elif os.path.lexists(leaked):
            os.remove(leaked)
        etc_now = os.stat("/etc")
        if etc_now.st_mtime_ns != etc_before.st_mtime_ns or etc_now.st_mode != etc_before.st_mode:
            os.chmod("/etc", stat.S_IMODE(etc_before.st_mode))
            os.chown("/etc", etc_before.st_uid, etc_before.st_gid)
            os.utime("/etc", ns=(etc_before.st_atime_ns, etc_before.st_mtime_ns))
