"""The brick protocol over a Unix stream for bricks on this host, against real
``pyglfs-brickd`` processes: a client moves its connection to the brick's Unix
socket after the TCP welcome offers it, keeps TCP when the brick or the volume
turns it off, when the socket cannot be reached and when a proxy stands between
the two; the Unix socket admits only holders of a live token and then judges
the hello as TCP does; a brick killed with -9 is noticed and its restart
brings the Unix path back."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import msgpack
import trio
from helpers.brickd import start_brickd
from helpers.replica import VOLUME, open_replica, wait_for
from helpers.tcpproxy import FreezableProxy

from pyglfs.brickd.unixserver import socket_name
from pyglfs.client.protocol import ProtocolClient
from pyglfs.rpc.brickops import ROOT_GFID
from pyglfs.rpc.connection import open_rpc_connection
from pyglfs.rpc.localrpc import dial, open_brick_connection


def g() -> bytes:
    return uuid.uuid4().bytes


def _frame(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


def _recv_frame(sock: socket.socket) -> object:
    """The next message, or None when the peer closed (or reset) the stream."""
    buf = b""
    while len(buf) < 4:
        try:
            got = sock.recv(4 - len(buf))
        except ConnectionResetError:
            return None
        if not got:
            return None
        buf += got
    n = int.from_bytes(buf, "big")
    body = b""
    while len(body) < n:
        got = sock.recv(n - len(body))
        assert got
        body += got
    return msgpack.unpackb(body, raw=False)


async def test_replicate_runs_over_the_unix_stream(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True) as env:
        rep = env.rep
        pcs = [env.brick_client(rep, i) for i in range(2)]
        assert all(pc.is_local_rpc for pc in pcs)
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0, os.O_RDWR)
        await rep.write(f, 0, b"x" * 70000)
        await rep.release(f)
        await rep.settle()
        for b in env.bricks:
            assert (b.root / "f").read_bytes() == b"x" * 70000
        # Events cross the Unix stream too: another client's change invalidates.
        other = await env.new_client()
        seen: list[tuple[str, dict[str, object]]] = []
        child = env.brick_client(rep, 0)
        orig = child.parent.on_event if child.parent is not None else None
        assert orig is not None

        def tap(c: object, name: str, args: dict[str, object]) -> None:
            seen.append((name, args))
            orig(c, name, args)

        child.parent.on_event = tap  # type: ignore[union-attr, method-assign]
        await other.setattr(f, mode=0o600)
        await wait_for(lambda: any(n == "cache-invalidation" for n, _ in seen), 10,
                       "an invalidation over the unix stream")


async def test_kill_9_is_noticed_and_the_restart_is_local_again(tmp_path: Path) -> None:
    async with open_replica(tmp_path, processes=True) as env:
        rep = env.rep
        pc = env.brick_client(rep, 1)
        assert pc.is_local_rpc
        f = g()
        await rep.create(ROOT_GFID, b"f", f, 0o644, 0, 0, os.O_RDWR)
        await env.bricks[1].kill()
        await wait_for(lambda: not pc.is_up, 10, "brick 1 down")
        await rep.write(f, 0, b"during")
        await env.bricks[1].start()
        pc.rpc.set_address(env.bricks[1].host, env.bricks[1].port)
        await wait_for(lambda: pc.is_up, 15, "brick 1 back")
        assert pc.is_local_rpc
        await rep.write(f, 0, b"after!")
        assert await rep.read(f, 0, 6) == b"after!"


async def test_no_local_rpc_brick_option_keeps_tcp(tmp_path: Path) -> None:
    b = start_brickd(tmp_path, volume=VOLUME, extra=["--no-local-rpc"])
    try:
        async with open_brick_connection(b.host, b.port, volume=VOLUME,
                                         client_id="t") as conn:
            assert not conn.peer.startswith("unix:")
            assert "local_rpc" not in conn.welcome
            assert await conn.call("null", {}) == {}
    finally:
        b.stop()


async def test_client_option_off_keeps_tcp(tmp_path: Path) -> None:
    b = start_brickd(tmp_path, volume=VOLUME)
    try:
        pc = ProtocolClient("c0", host=b.host, port=b.port, volume=VOLUME,
                            brick_path=str(b.brick), client_id="t", local_rpc=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(pc.serve)
            await wait_for(lambda: pc.is_up, 10, "up")
            assert not pc.is_local_rpc
            await pc.statfs()
            nursery.cancel_scope.cancel()
    finally:
        b.stop()


async def test_unreachable_socket_and_proxy_keep_tcp(tmp_path: Path) -> None:
    b = start_brickd(tmp_path, volume=VOLUME)
    try:
        # A proxy between the two: the brick sees the proxy's address, not ours.
        proxy = FreezableProxy("127.0.0.1", b.host, b.port)
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)
            async with open_brick_connection(proxy.host, proxy.port, volume=VOLUME,
                                             client_id="t") as conn:
                assert not conn.peer.startswith("unix:")
                assert await conn.call("null", {}) == {}
            nursery.cancel_scope.cancel()
        # An offer whose socket is not there (another host or netns): TCP stays.
        import pyglfs.rpc.localrpc as lr
        real = lr.dial

        async def elsewhere(offer: dict[str, object]) -> trio.SocketStream:
            return await real({**offer, "socket": f"pyglfs-test-none-{uuid.uuid4().hex}"})

        lr.dial = elsewhere  # type: ignore[assignment]
        try:
            async with open_brick_connection(b.host, b.port, volume=VOLUME,
                                             client_id="t") as conn:
                assert not conn.peer.startswith("unix:")
                assert await conn.call("null", {}) == {}
        finally:
            lr.dial = real
        async with open_brick_connection(b.host, b.port, volume=VOLUME,
                                         client_id="t") as conn:
            assert conn.peer.startswith("unix:")
            assert await conn.call("null", {}) == {}
    finally:
        b.stop()


async def test_unix_socket_wants_a_live_token_then_the_credentials(tmp_path: Path) -> None:
    auth = {"username": "u", "password": "secret"}
    b = start_brickd(tmp_path, volume=VOLUME, auth=auth)
    name = "\0" + socket_name("rpc", VOLUME, str(b.brick))
    hello = {"hello": {"version": 1, "role": "client", "volume": VOLUME,
                       "client_id": "x", "auth": auth}}
    try:
        # No token: closed without a word, nothing served.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(15)
            s.connect(name)
            s.sendall(b"\x00" * 16 + _frame(hello))
            assert _recv_frame(s) is None
        async with open_rpc_connection(b.host, b.port, volume=VOLUME, client_id="t",
                                       auth=auth) as tcp:
            offer = tcp.welcome["local_rpc"]
            assert offer["socket"] == name[1:]
            # A good token with wrong credentials: refused as over TCP.
            stream = await dial(offer)
            sock = stream.socket
            await trio.to_thread.run_sync(lambda: _refused_wrong_password(sock, hello))
            # The token was used up by that connection.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(15)
                s.connect(name)
                s.sendall(offer["token"] + _frame(hello))
                assert _recv_frame(s) is None
            await stream.aclose()
        assert b.alive()
        assert "without a valid token" in b.log_text()
        # Wrong credentials from the start never get an offer: TCP refuses.
    finally:
        b.stop()


def _refused_wrong_password(sock: trio.socket.SocketType, hello: dict[str, object]) -> None:
    raw = socket.socket(fileno=os.dup(sock.fileno()))
    try:
        raw.setblocking(True)
        raw.settimeout(15)
        bad = {"hello": {**hello["hello"], "auth": {"username": "u", "password": "no"}}}  # type: ignore[dict-item]
        raw.sendall(_frame(bad))
        reply = _recv_frame(raw)
        assert isinstance(reply, dict) and "authentication failed" in reply["refused"]
    finally:
        raw.close()
