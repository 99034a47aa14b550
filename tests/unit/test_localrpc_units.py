"""Local RPC pieces without processes: the volume option and its wiring, which
offers a client trusts, and the brick's Unix listener serving the real
protocol in-process (token required, single use, bounded connections)."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.replica import wait_for

from pyglfs.brickd.localrpc import LocalRpcServer
from pyglfs.brickd.server import open_brick_service
from pyglfs.brickd.store import open_store
from pyglfs.client.graph import build_graph
from pyglfs.rpc.connection import connect_stream
from pyglfs.rpc.errors import HandshakeRefused
from pyglfs.rpc.localrpc import address_text, dial, is_local, usable_offer
from pyglfs.rpc.server import serve_rpc
from pyglfs.volfiles.generator import BrickSpec, VolumeSpec, client_graph
from pyglfs.volfiles.model import VolfileError
from pyglfs.volfiles.options import validate_option

TOKEN = b"t" * 16


def offer(**kw: Any) -> dict[str, Any]:
    return {"local_rpc": {"socket": "s", "token": TOKEN, "uid": os.geteuid(),
                          "peer": "127.0.0.1:4000", **kw}}


def test_volume_option_reaches_the_protocol_client() -> None:
    assert validate_option("client.local-rpc", "0") == "off"
    with pytest.raises(VolfileError):
        validate_option("client.local-rpc", "maybe")
    bricks = [BrickSpec("127.0.0.2", 49750, "/b0"), BrickSpec("127.0.0.3", 49751, "/b1")]
    for value, want in (("off", False), ("on", True)):
        spec = VolumeSpec("v", str(uuid.uuid4()), 2, bricks,
                          options={"client.local-rpc": value})
        g = client_graph(spec)
        assert g.get("v-client-0").opt("local-rpc") == value  # type: ignore[union-attr]
        top = build_graph(g, client_id="c")
        pcs = []
        stack = [top]
        while stack:
            layer = stack.pop()
            stack.extend(layer.children)
            if type(layer).__name__ == "ProtocolClient":
                pcs.append(layer)
        assert len(pcs) == 2
        for pc in pcs:
            uses_unix = pc.rpc._opener.__name__ == "open_brick_connection"  # type: ignore[attr-defined]
            assert uses_unix is want


def test_offers_a_client_trusts() -> None:
    own = ("127.0.0.1", 4000)
    assert usable_offer(offer(), own) is not None
    assert usable_offer(offer(peer="::ffff:127.0.0.1:4000"), own) is not None
    assert address_text(("::ffff:127.0.0.1", 4000, 0, 0)) == "127.0.0.1:4000"
    # A proxy or NAT between: the brick saw another address.
    assert usable_offer(offer(peer="127.0.0.1:4001"), own) is None
    assert usable_offer(offer(peer="127.0.0.9:4000"), own) is None
    # A brick of another (non-root) uid.
    assert usable_offer(offer(uid=os.geteuid() + 12345), own) is None
    for bad in ({"token": b"short"}, {"token": "str"}, {"socket": 5}, {"uid": "0"},
                {"peer": None}):
        assert usable_offer(offer(**bad), own) is None
    assert usable_offer({}, own) is None
    assert usable_offer({"local_rpc": "x"}, own) is None
    assert not is_local(None)


async def test_listener_serves_the_protocol_to_token_holders(tmp_path: Path) -> None:
    store = open_store(str(tmp_path), str(uuid.uuid4()))
    local = LocalRpcServer("v", str(tmp_path), name=f"pyglfs-test-{uuid.uuid4().hex}",
                           handshake_timeout=2.0)
    try:
        async with trio.open_nursery() as nursery, \
                open_brick_service(store, "v") as service:
            front = local.front(service)
            assert await nursery.start(local.serve) is True
            port = await nursery.start(serve_rpc, front, "127.0.0.1", 0)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            own = stream.socket.getsockname()
            async with connect_stream(stream, volume="v", client_id="c") as tcp:
                o = usable_offer(tcp.welcome, own)
                assert o is not None and o["socket"] == local.name
                async with connect_stream(await dial(o), volume="v", client_id="c",
                                          peer="unix:@x") as conn:
                    assert (await conn.call("stat", {"gfid": b"\0" * 15 + b"\1"}))["iatt"]
                    assert local.served == 1 and local._conns == 1
                # Used once: the same token is refused (closed before a welcome).
                with pytest.raises(OSError):
                    async with connect_stream(await dial(o), volume="v", client_id="c",
                                              connect_timeout=2.0):
                        pass
            # A token dies with its TCP connection.
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with connect_stream(stream, volume="v", client_id="c") as tcp:
                token = tcp.welcome["local_rpc"]["token"]
                assert local.has_token(token)
            await wait_for(lambda: not local.has_token(token), 5, "the token revoked")
            # A hello for another volume is refused as over TCP.
            with pytest.raises(HandshakeRefused, match="volume 'w'"):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                own = stream.socket.getsockname()
                async with connect_stream(stream, volume="v", client_id="c") as tcp:
                    o = usable_offer(tcp.welcome, own)
                    assert o is not None
                    async with connect_stream(await dial(o), volume="w", client_id="c"):
                        pass
            nursery.cancel_scope.cancel()
    finally:
        store.close()


async def test_listener_bounds_connections(tmp_path: Path) -> None:
    local = LocalRpcServer("v", str(tmp_path), name=f"pyglfs-test-{uuid.uuid4().hex}",
                           max_conns=2, handshake_timeout=0.5)
    socks = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    try:
        async with trio.open_nursery() as nursery:
            assert await nursery.start(local.serve) is True
            for s in socks:
                s.connect("\0" + local.name)
            await wait_for(lambda: local._conns == 2, 5, "two connections")
            # Silent connections are dropped after the handshake timeout.
            await wait_for(lambda: local._conns == 0, 5, "the silent connections dropped")
            nursery.cancel_scope.cancel()
    finally:
        for s in socks:
            s.close()
