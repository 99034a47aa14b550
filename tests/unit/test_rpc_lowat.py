"""Big frames over real loopback TCP with the receive low-water mark in play.

The reader raises SO_RCVLOWAT while the rest of a big frame is on its way; it
must drop it again afterwards, or a small frame that follows would never wake
it. A frame that trickles in, or a peer that goes away mid-frame, must still
be handled at once.
"""

from __future__ import annotations

import os
import socket
import struct

import msgpack
import pytest
import trio

from pyglfs.rpc.errors import ProtocolError
from pyglfs.rpc.framing import FrameReader, FrameWriter
from pyglfs.rpc.transport import SocketTransport


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return a, b


def _lowat(s: socket.socket) -> int:
    return s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)


async def test_big_then_small_frames_arrive_and_lowat_is_reset() -> None:
    a, b = _tcp_pair()
    tx, rx = SocketTransport(a), SocketTransport(b)
    try:
        writer, reader = FrameWriter(tx), FrameReader(rx)
        blobs = [os.urandom(n) for n in (3 * 1024 * 1024 + 7, 200 * 1024)]
        with trio.fail_after(10):
            for i, blob in enumerate(blobs):
                await writer.send({"id": i, "op": "write", "args": {"data": blob}})
                await writer.send({"id": 100 + i, "op": "null", "args": {}})
            got = []
            while len(got) < 4:
                msgs = await reader.receive()
                assert msgs is not None
                got += msgs
        assert [m["id"] for m in got] == [0, 100, 1, 101]
        assert [m["args"]["data"] for m in got[::2]] == blobs
        assert _lowat(b) == 1
    finally:
        tx.close()
        rx.close()


async def test_a_frame_that_trickles_in_is_received() -> None:
    a, b = _tcp_pair()
    rx = SocketTransport(b)
    try:
        blob = os.urandom(512 * 1024)
        body = msgpack.packb({"id": 1, "op": "write", "args": {"data": blob}})
        frame = struct.pack(">I", len(body)) + body
        reader = FrameReader(rx)
        step = 96 * 1024
        async with trio.open_nursery() as nursery:
            async def trickle() -> None:
                for pos in range(0, len(frame), step):
                    a.sendall(frame[pos:pos + step])
                    await trio.sleep(0.01)

            nursery.start_soon(trickle)
            with trio.fail_after(10):
                msgs = await reader.receive()
        assert msgs is not None and msgs[0]["args"]["data"] == blob
        assert _lowat(b) == 1
    finally:
        a.close()
        rx.close()


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_peer_gone_mid_frame_is_reported_at_once(how: str) -> None:
    a, b = _tcp_pair()
    rx = SocketTransport(b)
    try:
        reader = FrameReader(rx)
        a.sendall(struct.pack(">I", 4 * 1024 * 1024) + b"\xc6" + b"x" * 300_000)
        if how == "reset":
            a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                async def close_soon() -> None:
                    await trio.sleep(0.05)
                    a.close()

                nursery.start_soon(close_soon)
                with pytest.raises((ProtocolError, trio.BrokenResourceError)):
                    await reader.receive()
    finally:
        a.close()
        rx.close()
