"""Short-circuit local reads against real pyglfs-brickd processes: reads of a
brick on this host come from a file descriptor the brick handed over (no
``read`` request reaches the brick), see other clients' writes at once, fall
back to the brick when the fd channel refuses, fail with ENOTCONN while the
brick is down, leak no fds, and the brick survives hostile channel input."""

from __future__ import annotations

import errno
import os
import socket
import struct
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.replica import ReplicaEnv, open_replica, wait_for

from pyglfs.client.protocol import ProtocolClient
from pyglfs.client.replicate import Replicate
from pyglfs.rpc.brickops import ROOT_GFID


def g() -> bytes:
    return uuid.uuid4().bytes


def count_calls(pc: ProtocolClient) -> Counter[str]:
    """Count the requests ``pc`` sends to its brick, by op."""
    seen: Counter[str] = Counter()
    call = pc.rpc.call

    def counted(op: str, args: dict[str, Any], **kw: Any) -> Coroutine[Any, Any, Any]:
        seen[op] += 1
        return call(op, args, **kw)

    pc.rpc.call = counted  # type: ignore[method-assign]
    return seen


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def make_file(rep: Replicate, name: bytes, data: bytes) -> bytes:
    f = g()
    await rep.create(ROOT_GFID, name, f, 0o644, 0, 0, os.O_RDWR)
    await rep.write(f, 0, data)
    return f


def clients(env: ReplicaEnv, rep: Replicate) -> list[ProtocolClient]:
    return [env.brick_client(rep, i) for i in range(len(rep.children))]


async def test_reads_come_from_the_local_fd(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True) as env:
        rep = env.rep
        pcs = clients(env, rep)
        assert all(pc.is_local for pc in pcs)
        data = os.urandom(300 * 1024)
        f = await make_file(rep, b"f", data)
        counts = [count_calls(pc) for pc in pcs]
        assert await rep.read(f, 0, 4096) == data[:4096]
        assert await rep.read(f, 5000, 100) == data[5000:5100]
        assert await rep.read(f, 0, 256 * 1024) == data[:256 * 1024]
        assert await rep.read(f, 290 * 1024, 128 * 1024) == data[290 * 1024:]
        assert sum(c["read"] for c in counts) == 0
        assert sum(pc.local.reads for pc in pcs if pc.local) == 4
        assert sum(pc.local.fetches for pc in pcs if pc.local) == 1
        # The last release closes the fd.
        await rep.release(f)
        await rep.settle()
        assert all(not pc.local.fds for pc in pcs if pc.local)


async def test_other_clients_writes_are_seen_at_once(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True) as env:
        rep = env.rep
        other = await env.new_client()
        f = await make_file(rep, b"f", b"a" * 8192)
        assert await rep.read(f, 0, 8192) == b"a" * 8192
        await other.open(f, os.O_RDWR)
        for i in range(5):
            chunk = bytes([65 + i]) * 4096
            await other.write(f, 4096, chunk)
            assert await rep.read(f, 0, 8192) == b"a" * 4096 + chunk
        await other.setattr(f, size=100)
        assert await rep.read(f, 0, 8192) == b"a" * 100
        await other.release(f)
        assert sum(pc.local.reads for pc in clients(env, rep) if pc.local) == 7


async def test_refused_channel_falls_back_to_the_brick(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True) as env:
        rep = env.rep
        pcs = clients(env, rep)
        data = os.urandom(10000)
        f = await make_file(rep, b"f", data)
        for pc in pcs:
            assert pc.local is not None
            pc.local._token = b"\x00" * 16  # not a token the brick gave out
        counts = [count_calls(pc) for pc in pcs]
        assert await rep.read(f, 0, 10000) == data
        assert await rep.read(f, 100, 10) == data[100:110]
        assert sum(c["read"] for c in counts) == 2
        reader = next(pc for pc, c in zip(pcs, counts, strict=True) if c["read"])
        assert reader.local is not None and not reader.local.active
        assert reader.local.fallbacks == 1 and reader.local.reads == 0


async def test_read_while_brick_down_is_enotconn(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True, n=1) as env:
        rep = env.rep
        pc = env.brick_client(rep, 0)
        f = await make_file(rep, b"f", b"x" * 5000)
        assert await pc.read(f, 0, 10) == b"x" * 10
        assert pc.local is not None and pc.local.reads == 1
        await env.bricks[0].kill()
        await wait_for(lambda: not pc.is_up, 10, "brick down")
        assert not pc.is_local
        await wait_for(lambda: pc.local is not None and not pc.local.fds, 10, "fds closed")
        with pytest.raises(OSError) as ei:
            await pc.read(f, 0, 10)
        assert ei.value.errno == errno.ENOTCONN
        with pytest.raises(OSError) as ei:
            await rep.read(f, 0, 10)
        assert ei.value.errno == errno.ENOTCONN


async def test_no_fd_leak_over_many_cycles(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True) as env:
        rep = env.rep
        files = [await make_file(rep, f"f{i}".encode(), bytes([i]) * 3000) for i in range(20)]
        for f in files:
            await rep.release(f)
        await rep.settle()
        before = fd_count()
        for _round in range(5):
            for i, f in enumerate(files):
                await rep.open(f, os.O_RDONLY)
                assert await rep.read(f, 0, 3000) == bytes([i]) * 3000
                await rep.release(f)
        await rep.settle()
        assert fd_count() == before
        assert sum(pc.local.fetches for pc in clients(env, rep) if pc.local) == 100


async def test_fd_limit_evicts_least_recent(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True, n=1) as env:
        pc = env.brick_client(env.rep, 0)
        assert pc.local is not None
        pc.local.limit = 3
        files = [await make_file(env.rep, f"f{i}".encode(), bytes([i]) * 10) for i in range(6)]
        for i, f in enumerate(files):
            assert await env.rep.read(f, 0, 10) == bytes([i]) * 10
        assert list(pc.local.fds) == files[3:]


def _channel(pc: ProtocolClient) -> tuple[str, bytes]:
    conn = pc.rpc.connection
    assert conn is not None
    offer = conn.welcome["local_read"]
    return offer["socket"], offer["token"]


def _ask(name: str, payload: bytes) -> tuple[bytes, list[int]]:
    """One request on a fresh connection: the reply and any fds that came."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(5)
        s.connect("\0" + name)
        s.send(payload)
        msg, fds, _flags, _ = socket.recv_fds(s, 16, 4)
        return msg, fds


async def test_hostile_channel_input(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True, n=1) as env:
        rep = env.rep
        pc = env.brick_client(rep, 0)
        f = await make_file(rep, b"f", b"data")
        d = g()
        await rep.mkdir(ROOT_GFID, b"d", d, 0o755, 0, 0)
        name, token = _channel(pc)

        def code(payload: bytes) -> int:
            msg, fds = _ask(name, payload)
            for fd in fds:
                os.close(fd)
            assert not fds
            return int(struct.unpack("!i", msg)[0]) if msg else -1

        ask: Callable[[bytes], int] = code
        for bad in (b"", b"x", b"\xff" * 31, b"\xff" * 33, b"\x00" * 4096, token + f + b"!"):
            got = await trio.to_thread.run_sync(ask, bad)
            assert got in (errno.EINVAL, -1), bad[:8]
        assert await trio.to_thread.run_sync(ask, b"\x01" * 16 + f) == errno.EACCES
        for gfid in (g(), b"../../../etc/pa", b"/etc/passwd\0\0\0\0\0"[:16]):
            gfid = gfid.ljust(16, b"\0")
            assert await trio.to_thread.run_sync(ask, token + gfid) == errno.ENOENT
        for gfid in (ROOT_GFID, d):
            assert await trio.to_thread.run_sync(ask, token + gfid) in (
                errno.EINVAL, errno.ENOENT)
        # A huge message: the brick reads a bounded amount and closes.
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.connect("\0" + name)
            with pytest.raises(OSError):
                s.send(b"\0" * (16 * 1024 * 1024))
        # Connections that say nothing do not pile up without bound, and the
        # brick still serves a good request afterwards.
        idle = []
        try:
            for _ in range(200):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                idle.append(s)
                s.connect("\0" + name)
        finally:
            for s in idle:
                s.close()

        def good() -> bytes | None:
            try:
                msg, fds = _ask(name, token + f)
            except OSError:
                return None  # its backlog is still full of the idle ones
            try:
                if msg != struct.pack("!i", 0) or len(fds) != 1:
                    return None  # the brick has not yet seen every idle one go
                return os.pread(fds[0], 10, 0)
            finally:
                for fd in fds:
                    os.close(fd)

        got = None
        with trio.move_on_after(10):
            while got is None:
                got = await trio.to_thread.run_sync(good)
                if got is None:
                    await trio.sleep(0.05)
        assert got == b"data"
        assert env.bricks[0].running
        assert await rep.read(f, 0, 4) == b"data"


async def test_unlinked_open_file_still_reads(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True) as env:
        rep = env.rep
        f = await make_file(rep, b"f", b"kept" * 1000)
        assert await rep.read(f, 0, 4) == b"kept"
        other = g()
        await rep.create(ROOT_GFID, b"late", other, 0o644, 0, 0, os.O_RDWR)
        await rep.write(other, 0, b"late")
        await rep.unlink(ROOT_GFID, b"f")
        await rep.unlink(ROOT_GFID, b"late")
        # Fetched before the unlink, and fetched only after it: both still read.
        assert await rep.read(f, 3996, 4) == b"kept"
        assert await rep.read(other, 0, 4) == b"late"
        assert sum(pc.local.fetches for pc in clients(env, rep) if pc.local) == 2


async def test_choose_local_reads_from_the_local_brick(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True, client=False) as env:
        rep = await env.new_client()
        pcs = clients(env, rep)
        assert pcs[1].local is not None
        pcs[1].local.reset()  # brick 1 now counts as another host's
        counts = count_calls(pcs[1])
        files = [await make_file(rep, f"f{i}".encode(), bytes([i]) * 100) for i in range(16)]
        for i, f in enumerate(files):
            assert await rep.read(f, 0, 100) == bytes([i]) * 100
        assert counts["read"] == 0
        assert pcs[0].local is not None and pcs[0].local.reads == 16


_OTHER_UID_CLIENT = """
import socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.settimeout(5)
s.connect("\\0" + sys.argv[1])
try:
    s.send(bytes.fromhex(sys.argv[2]))
except BrokenPipeError:
    pass  # refused before the request: the answer is already queued
msg, fds, _f, _a = socket.recv_fds(s, 16, 4)
print(struct.unpack("!i", msg)[0] if msg else -1, len(fds))
"""


# The system's Python: the test venv may sit where another uid cannot read.
_SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(os.geteuid() != 0 or not os.access(_SYSTEM_PYTHON, os.X_OK),
                    reason="needs root and /usr/bin/python3 to run a client as another uid")
async def test_peer_of_another_uid_is_refused(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True, n=1) as env:
        pc = env.brick_client(env.rep, 0)
        f = await make_file(env.rep, b"f", b"secret")
        name, token = _channel(pc)
        r = await trio.run_process(
            [_SYSTEM_PYTHON, "-c", _OTHER_UID_CLIENT, name, (token + f).hex()],
            capture_stdout=True, user=65534, group=65534, extra_groups=[], cwd="/")
        assert r.stdout.decode().split() == [str(errno.EACCES), "0"]
