"""A brick's cache-invalidation event leaves before the reply to the change.

Two real TCP connections to one brick: a watcher (another mount) and a changer.
The moment the changer has its reply, the watcher's socket must already hold
the event; a watcher that stopped reading must not hold up the changer.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
import trio

from pyglfs.brickd.server import serve_brick
from pyglfs.brickd.store import BrickStore
from pyglfs.brickd.upcall import EVENT
from pyglfs.rpc import messages
from pyglfs.rpc.connection import RpcConnection, open_rpc_connection
from pyglfs.rpc.framing import FrameReader, FrameWriter, encode_frame
from pyglfs.rpc.server import ServerConnection
from pyglfs.rpc.transport import SocketTransport

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* xattrs need root")

HOST = "127.0.0.1"
VOLUME = "uvol"
ROOT = b"\x00" * 15 + b"\x01"


class Watcher:
    """Another client's connection, read without trio: ``arrived()`` is what
    its socket holds at this instant."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.sock = socket.socket(fileno=os.dup(stream.socket.fileno()))
        self.sock.setblocking(False)
        self.buf = b""

    def arrived(self) -> list[Any]:
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            if not data:
                break
            self.buf += data
        out = []
        while len(self.buf) >= 4:
            n = int.from_bytes(self.buf[:4], "big")
            if len(self.buf) < 4 + n:
                break
            out.append(msgpack.unpackb(self.buf[4:4 + n]))
            self.buf = self.buf[4 + n:]
        return out


async def _open_watcher(port: int) -> Watcher:
    stream = await trio.open_tcp_stream(HOST, port)
    await stream.send_all(encode_frame(messages.hello(volume=VOLUME, client_id="watcher")))
    # One request, so the brick counts it as a client that caches.
    await stream.send_all(encode_frame(messages.request(1, "null", {})))
    w = Watcher(stream)
    got: list[Any] = []
    with trio.fail_after(10):
        while len(got) < 2:
            await trio.sleep(0.001)
            got += w.arrived()
    assert "welcome" in got[0] and got[1] == {"id": 1, "ok": {}}
    return w


@asynccontextmanager
async def brick_pair(store: BrickStore) -> AsyncIterator[tuple[Watcher, RpcConnection]]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_brick, store, VOLUME, HOST, 0)
        w = await _open_watcher(port)
        try:
            async with open_rpc_connection(HOST, port, volume=VOLUME,
                                           client_id="changer") as changer:
                yield w, changer
        finally:
            w.sock.close()
            await w.stream.aclose()
            nursery.cancel_scope.cancel()


def _events(frames: list[Any]) -> list[dict[str, Any]]:
    return [f["args"] for f in frames if f.get("event") == EVENT]


async def test_event_is_in_the_other_clients_socket_before_the_reply(
        store: BrickStore) -> None:
    async with brick_pair(store) as (w, changer):
        d = uuid.uuid4().bytes
        await changer.call("mkdir", {"pgfid": ROOT, "name": b"d", "gfid": d, "mode": 0o755,
                                     "uid": 0, "gid": 0})
        [ev] = _events(w.arrived())
        assert ev["entries"] == [[ROOT, b"d"]]
        for i in range(40):
            name = b"f%d" % i
            g = uuid.uuid4().bytes
            await changer.call("mknod", {"pgfid": d, "name": name, "gfid": g,
                                         "mode": 0o100644, "rdev": 0, "uid": 0, "gid": 0})
            assert _events(w.arrived()) == [{"gfids": [d], "entries": [[d, name]]}], i
            await changer.call("setattr", {"gfid": g, "mode": 0o600})
            assert _events(w.arrived()) == [{"gfids": [g], "entries": []}], i
            await changer.call("unlink", {"pgfid": d, "name": name})
            assert _events(w.arrived()) == [{"gfids": [d], "entries": [[d, name]]}], i
        # reads change nothing and send nothing
        await changer.call("stat", {"gfid": d})
        assert w.arrived() == []


async def test_a_compound_sends_one_merged_event_before_its_reply(store: BrickStore) -> None:
    async with brick_pair(store) as (w, changer):
        gfids = [uuid.uuid4().bytes for _ in range(3)]
        for i, g in enumerate(gfids):
            await changer.call("mknod", {"pgfid": ROOT, "name": b"n%d" % i, "gfid": g,
                                         "mode": 0o100644, "rdev": 0, "uid": 0, "gid": 0})
        w.arrived()
        r = await changer.call("compound", {"ops": [
            ["setattr", {"gfid": g, "mode": 0o640}] for g in gfids]})
        assert len(r["results"]) == 3
        [ev] = _events(w.arrived())
        assert sorted(ev["gfids"]) == sorted(gfids) and ev["entries"] == []


class _NoService:
    def authenticate(self, hello: dict[str, Any]) -> None:
        pass

    async def handle(self, op: str, args: dict[str, Any], conn: ServerConnection) -> Any:
        return {}

    def disconnected(self, conn: ServerConnection) -> None:
        pass


def test_can_send_now_follows_the_peers_reading() -> None:
    a, b = socket.socketpair()
    try:
        transport = SocketTransport(a)
        conn = ServerConnection(
            _NoService(), FrameReader(transport), FrameWriter(transport),
            {"client_id": "x", "role": "client", "volume": VOLUME}, "peer", 16, sock=a)
        assert conn.can_send_now()
        chunk = b"x" * 65536
        for _ in range(10_000):
            try:
                a.send(chunk)
            except BlockingIOError:
                break
        assert not conn.can_send_now()
        b.setblocking(False)
        for _ in range(10_000):
            try:
                b.recv(1 << 20)
            except BlockingIOError:
                break
        assert conn.can_send_now()
        conn.closed = True
        assert not conn.can_send_now()
    finally:
        a.close()
        b.close()
