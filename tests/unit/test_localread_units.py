"""Local reads without daemons: choose-local in read selection, the volume
options, the brick's read-only open of a gfid handle and the client's handling
of an offer it cannot use."""

from __future__ import annotations

import errno
import os
import resource
import socket
import struct
import uuid
from pathlib import Path

import pytest
import trio

from pyglfs.brickd.localfds import LocalFdServer, open_readonly
from pyglfs.brickd.names import handle_rel
from pyglfs.client.localfds import LocalReader
from pyglfs.client.replicate.changelog import DATA
from pyglfs.client.replicate.readsel import InodeInfo, InodeTable
from pyglfs.volfiles.generator import BrickSpec, VolumeSpec, client_graph
from pyglfs.volfiles.model import VolfileError
from pyglfs.volfiles.options import validate_option


def _info() -> InodeInfo:
    return InodeInfo([0, 0, 0], False)


def test_choose_local_prefers_the_local_good_brick() -> None:
    t = InodeTable(3)
    for _ in range(50):
        gfid = uuid.uuid4().bytes
        assert t.order(gfid, _info(), DATA, 0b111, local=lambda: 0b100)[0] == 2
    # A local brick that is not a good source is not chosen.
    bad = InodeInfo([0b100, 0, 0], True)
    assert t.order(uuid.uuid4().bytes, bad, DATA, 0b111, local=lambda: 0b100)[0] != 2


def test_choose_local_spreads_without_local_bricks_and_when_off() -> None:
    firsts = set()
    off = InodeTable(2, choose_local=False)
    for _ in range(64):
        gfid = uuid.uuid4().bytes
        firsts.add(InodeTable(2).order(gfid, _info(), DATA, 0b11, local=lambda: 0)[0])
        assert off.order(gfid, _info(), DATA, 0b11, local=lambda: 0b01) == \
            InodeTable(2).order(gfid, _info(), DATA, 0b11)
    assert firsts == {0, 1}


def test_read_subvolume_index_wins_over_choose_local() -> None:
    t = InodeTable(2, prefer=1)
    assert t.order(uuid.uuid4().bytes, _info(), DATA, 0b11, local=lambda: 0b01)[0] == 1


def test_volume_options() -> None:
    assert validate_option("cluster.choose-local", "no") == "off"
    assert validate_option("client.local-read", "1") == "on"
    for key in ("cluster.choose-local", "client.local-read"):
        with pytest.raises(VolfileError):
            validate_option(key, "sometimes")
    spec = VolumeSpec("v", str(uuid.uuid4()), 2,
                      [BrickSpec("127.0.0.2", 49750, "/b0"), BrickSpec("127.0.0.3", 49751, "/b1")],
                      options={"client.local-read": "off", "cluster.choose-local": "off"})
    g = client_graph(spec)
    assert g.get("v-client-0").opt("local-read") == "off"  # type: ignore[union-attr]
    assert g.get("v-replicate-0").opt("choose-local") == "off"  # type: ignore[union-attr]


def test_open_readonly_only_regular_files(tmp_path: Path) -> None:
    hdir = tmp_path / "handles"
    gf, gfifo, gdir = (uuid.uuid4().bytes for _ in range(3))
    for gfid in (gf, gfifo, gdir):
        (hdir / handle_rel(gfid).decode()).parent.mkdir(parents=True, exist_ok=True)
    (hdir / handle_rel(gf).decode()).write_bytes(b"hello")
    os.mkfifo(hdir / handle_rel(gfifo).decode())
    os.symlink("../../x/y", hdir / handle_rel(gdir).decode())
    hfd = os.open(hdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = open_readonly(hfd, gf)
        try:
            assert os.pread(fd, 5, 0) == b"hello"
            with pytest.raises(OSError) as ei:
                os.pwrite(fd, b"x", 0)
            assert ei.value.errno == errno.EBADF
        finally:
            os.close(fd)
        for gfid in (gfifo, gdir):
            with pytest.raises(OSError) as ei:
                open_readonly(hfd, gfid)
            assert ei.value.errno == errno.EINVAL
        with pytest.raises(OSError) as ei:
            open_readonly(hfd, uuid.uuid4().bytes)
        assert ei.value.errno == errno.ENOENT
    finally:
        os.close(hfd)


@pytest.mark.parametrize("offer", [
    None, "x", {}, {"socket": "pyglfs-no-such-socket-" + uuid.uuid4().hex, "token": b"t" * 16,
                    "uid": os.geteuid()},
    {"socket": "s", "token": b"short", "uid": 0}, {"socket": "s", "token": b"t" * 16, "uid": 12345},
])
async def test_unusable_offer_leaves_local_reads_off(offer: object) -> None:
    r = LocalReader("c0")
    assert r.connect(offer) is False
    assert not r.active
    r.opened(b"g" * 16)
    assert await r.read(b"g" * 16, 0, 10) is None


def test_fd_limit_follows_the_process_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (400, hard))
    try:
        assert LocalReader("c0").limit == 100
        assert LocalReader("c0", limit=50).limit == 50
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_reader_redials_a_channel_the_brick_closed(tmp_path: Path) -> None:
    hdir = tmp_path / "handles"
    gfid = uuid.uuid4().bytes
    f = hdir / handle_rel(gfid).decode()
    f.parent.mkdir(parents=True)
    f.write_bytes(b"hello")
    os.setxattr(f, "trusted.gfid", gfid)
    hfd = os.open(hdir, os.O_RDONLY | os.O_DIRECTORY)
    server = LocalFdServer(hfd, "v", str(tmp_path), idle_unauth=0.2,
                           name=f"pyglfs-test-{uuid.uuid4().hex}")
    try:
        async with trio.open_nursery() as nursery:
            assert await nursery.start(server.serve) is True
            r = LocalReader("c0")
            assert r.connect(server.offer("test"))
            with trio.fail_after(5):
                while not server._conns:
                    await trio.sleep(0.01)
                while server._conns:  # the brick drops a channel idle since connect
                    await trio.sleep(0.01)
            r.opened(gfid)
            assert await r.read(gfid, 0, 5) == b"hello"
            assert r.active and r.fetches == 1 and r.fallbacks == 0
            r.reset()
            nursery.cancel_scope.cancel()
    finally:
        os.close(hfd)


async def test_server_survives_accept_failures(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    hfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    server = LocalFdServer(hfd, "v", str(tmp_path), name=f"pyglfs-test-{uuid.uuid4().hex}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        async with trio.open_nursery() as nursery:
            assert await nursery.start(server.serve) is True
            # No fd left for the brick's accept: it must log and keep serving.
            # The limit is on fd numbers and a new fd takes the lowest free one
            # (earlier tests may have left holes below the highest open fd).
            lowest_free = os.dup(0)
            os.close(lowest_free)
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
            try:
                client.connect("\0" + server.name)
                with trio.fail_after(5):
                    while "accept failed" not in caplog.text:
                        await trio.sleep(0.01)
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            client.setblocking(False)
            token = server.offer("test")
            assert token is not None
            with trio.fail_after(5):
                await trio.lowlevel.wait_writable(client)
                client.send(token["token"] + uuid.uuid4().bytes)
                await trio.lowlevel.wait_readable(client)
            assert client.recv(16) == struct.pack("!i", errno.ENOENT)
            nursery.cancel_scope.cancel()
    finally:
        client.close()
        os.close(hfd)


async def test_a_sequential_local_reader_drops_the_brick_pages_behind_it(tmp_path: Path) -> None:
    """The data is in the FUSE page cache once read: the brick file's own copy is
    dropped 16 MiB behind a sequential reader, and kept for reads that jump."""
    from helpers.pagecache import resident_mib

    mib = 1 << 20
    seq, jumps = tmp_path / "seq", tmp_path / "jumps"
    for p in (seq, jumps):
        p.write_bytes(os.urandom(mib) * 48)
        with open(p, "rb") as f:
            os.fsync(f.fileno())  # dirty pages cannot be dropped
    r = LocalReader("t")
    fds = {b"s" * 16: os.open(seq, os.O_RDONLY), b"j" * 16: os.open(jumps, os.O_RDONLY)}
    try:
        for gfid, fd in fds.items():
            r.fds[gfid] = fd
            r.opens[gfid] = 1
        for k in range(48):
            assert await r.read(b"s" * 16, k * mib, mib) == os.pread(fds[b"s" * 16], mib, k * mib)
        for k in range(48):  # every read 9 MiB or more away from the last
            off = (k * 29 % 48) * mib
            assert len(await r.read(b"j" * 16, off, mib) or b"") == mib
        assert resident_mib(seq) <= 16 + 8 + 2
        assert resident_mib(jumps) >= 46
        assert r.fallbacks == 0 and r.reads == 96
    finally:
        r.drop_all()
    assert not r._behind
