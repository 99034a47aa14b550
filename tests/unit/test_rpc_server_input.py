"""Bad input against a server over memory streams: every case ends at most the
connection that sent it, with a logged reason, and never runs an operation it
should not."""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from pyglfs.rpc import messages
from pyglfs.rpc.brickops import PROTOCOL_VERSION
from pyglfs.rpc.framing import FrameReader, encode_frame
from pyglfs.rpc.server import peer_name, serve_rpc_stream
from pyglfs.rpc.testing import TEST_AUTH, EchoService, open_memory_connection

HELLO = messages.hello(volume="vol0", client_id="raw", auth=TEST_AUTH)


class RawPeer:
    """A client that writes raw bytes to a server and reads its frames."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.reader = FrameReader(stream)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def frames(self) -> list[Any]:
        """Everything the server sends until it closes the connection."""
        out: list[Any] = []
        with trio.fail_after(10):
            while True:
                msgs = await self.reader.receive()
                if msgs is None:
                    return out
                out.extend(msgs)

    async def handshake(self) -> None:
        await self.send(encode_frame(HELLO))
        with trio.fail_after(10):
            msgs = await self.reader.receive()
        assert msgs and "welcome" in msgs[0], msgs


@asynccontextmanager
async def raw_peer(svc: EchoService, **server_kwargs: Any) -> AsyncIterator[RawPeer]:
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: serve_rpc_stream(svc, server, **server_kwargs))
        yield RawPeer(client)
        await client.aclose()


def _logged(caplog: pytest.LogCaptureFixture, level: int, text: str) -> bool:
    return any(r.levelno == level and text in r.getMessage() for r in caplog.records)


async def test_oversized_frame_closes_without_allocating(caplog: pytest.LogCaptureFixture) -> None:
    svc = EchoService(auth=TEST_AUTH)
    async with raw_peer(svc) as peer:
        await peer.handshake()
        tracemalloc.start()
        try:
            await peer.send(struct.pack(">I", 0xFFFFFFF0) + b"\x00" * 100)
            assert await peer.frames() == []
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 1024 * 1024, peak
    assert _logged(caplog, logging.ERROR, "maximum is")
    assert len(svc.disconnects) == 1 and svc.handled == []


async def test_frame_just_over_configured_max_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    svc = EchoService(auth=TEST_AUTH)
    async with raw_peer(svc, max_frame=1000) as peer:
        await peer.handshake()
        body = b"\x00" * 1001
        await peer.send(struct.pack(">I", len(body)) + body)
        assert await peer.frames() == []
    assert _logged(caplog, logging.ERROR, "1001 bytes announced")


async def test_frame_at_configured_max_is_accepted() -> None:
    svc = EchoService(auth=TEST_AUTH)
    async with raw_peer(svc, max_frame=1000) as peer:
        await peer.handshake()
        req = messages.request(1, "echo", {"d": b""})
        pad = 1000 - len(encode_frame(req)) + 4
        req["args"]["d"] = b"x" * (pad - 1)  # bin8 header grows by one byte
        frame = encode_frame(req)
        assert len(frame) - 4 == 1000
        await peer.send(frame)
        with trio.fail_after(5):
            msgs = await peer.reader.receive()
        assert msgs == [{"id": 1, "ok": req["args"]}]


async def test_oversized_hello_is_refused_early(caplog: pytest.LogCaptureFixture) -> None:
    svc = EchoService()
    async with raw_peer(svc) as peer:
        await peer.send(struct.pack(">I", 1024 * 1024))
        assert await peer.frames() == []
    assert _logged(caplog, logging.ERROR, "maximum is")


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x00\x00\x00\x03\xc1\xc1\xc1",
    b"\x00\x00\x00\x00",
    b"\x00\x00\x00\x02\x01\x02",
])
async def test_garbage_before_handshake_closes(garbage: bytes) -> None:
    svc = EchoService()
    async with raw_peer(svc) as peer:
        await peer.send(garbage + encode_frame(messages.request(1, "null", {})))
        frames = await peer.frames()
    assert all("refused" in f for f in frames), frames
    assert svc.handled == [] and svc.disconnects == []


@pytest.mark.parametrize("body", [
    b"\xc1",
    b"\x92\x01",
    b"\x81\x92\x01\x02\x03",
    b"\x01\x02",
])
async def test_undecodable_frame_after_handshake_closes(body: bytes) -> None:
    svc = EchoService(auth=TEST_AUTH)
    async with raw_peer(svc) as peer:
        await peer.handshake()
        await peer.send(struct.pack(">I", len(body)) + body)
        assert await peer.frames() == []
    assert len(svc.disconnects) == 1


@pytest.mark.parametrize("msg", [
    [1, "null", {}],
    {"id": "1", "op": "null", "args": {}},
    {"id": 1, "op": b"null", "args": {}},
    {"id": 1, "op": "null", "args": []},
    {"id": 1, "op": "null"},
    {"id": 1, "op": "null", "args": {}, "extra": 1},
    {"event": "x", "args": {}},
    42,
    None,
])
async def test_frame_that_is_not_a_request_closes(
    msg: Any, caplog: pytest.LogCaptureFixture
) -> None:
    svc = EchoService(auth=TEST_AUTH)
    async with raw_peer(svc) as peer:
        await peer.handshake()
        await peer.send(encode_frame(msg) + encode_frame(messages.request(2, "null", {})))
        assert await peer.frames() == []
    assert svc.handled == []
    assert _logged(caplog, logging.WARNING, "bad input")


async def test_truncated_frame_then_eof_is_handled(caplog: pytest.LogCaptureFixture) -> None:
    svc = EchoService(auth=TEST_AUTH)
    async with raw_peer(svc) as peer:
        await peer.handshake()
        frame = encode_frame(messages.request(1, "null", {}))
        await peer.send(frame[:-3])
        await peer.stream.send_eof()  # type: ignore[attr-defined]
        assert await peer.frames() == []
    assert svc.handled == [] and len(svc.disconnects) == 1
    assert _logged(caplog, logging.WARNING, "inside a frame")


async def test_wrong_version_is_refused_and_pipelined_request_never_runs() -> None:
    svc = EchoService()
    hello = messages.hello(volume="vol0", client_id="old", version=PROTOCOL_VERSION + 1)
    async with raw_peer(svc) as peer:
        await peer.send(encode_frame(hello) + encode_frame(messages.request(1, "null", {})))
        frames = await peer.frames()
    assert len(frames) == 1
    reason = frames[0]["refused"]
    assert f"version {PROTOCOL_VERSION + 1}" in reason and f"version {PROTOCOL_VERSION}" in reason
    assert svc.handled == [] and svc.disconnects == []


async def test_wrong_credentials_refused_over_raw_frames() -> None:
    svc = EchoService(auth=TEST_AUTH)
    hello = messages.hello(volume="vol0", client_id="x", auth={"username": "test"})
    async with raw_peer(svc) as peer:
        await peer.send(encode_frame(hello) + encode_frame(messages.request(1, "crash", {})))
        frames = await peer.frames()
    assert frames == [{"refused": "wrong credentials for volume 'vol0'"}]
    assert svc.handled == []


@pytest.mark.parametrize("hello", [
    {"hello": {"version": 1}},
    {"hello": {"version": "1", "role": "client", "volume": "v", "client_id": "c"}},
    {"hello": {"version": 1, "role": "king", "volume": "v", "client_id": "c", "auth": None}},
    {"hello": {"version": 1, "role": "client", "volume": "v", "client_id": "c", "auth": 5}},
    {"hello": {"version": 1, "role": "client", "volume": "v" * 5000, "client_id": "c"}},
    {"id": 1, "op": "null", "args": {}},
])
async def test_malformed_hello_is_refused_with_reason(hello: Any) -> None:
    svc = EchoService()
    async with raw_peer(svc) as peer:
        await peer.send(encode_frame(hello) + encode_frame(messages.request(1, "null", {})))
        frames = await peer.frames()
    assert len(frames) == 1 and frames[0]["refused"], frames
    assert svc.handled == []


async def test_silent_client_is_dropped_after_handshake_timeout(autojump_clock: Any) -> None:
    svc = EchoService()
    async with raw_peer(svc, handshake_timeout=3) as peer:
        start = trio.current_time()
        assert await peer.frames() == []
        assert trio.current_time() - start == pytest.approx(3, abs=0.01)


async def test_unpackable_result_becomes_eio() -> None:
    class SetService(EchoService):
        async def handle(self, op: str, args: dict[str, Any], conn: Any) -> Any:
            if op == "set":
                return {1, 2}
            return await super().handle(op, args, conn)

    for inline in (frozenset(), frozenset({"set"})):
        svc = SetService()
        svc.inline_ops = inline
        async with open_memory_connection(svc) as conn:
            with pytest.raises(OSError) as info:
                await conn.call("set", {})
            assert info.value.errno == errno.EIO
            assert await conn.call("null", {}) == {}


async def test_other_connections_keep_working_while_one_misbehaves() -> None:
    svc = EchoService(auth=TEST_AUTH)
    async with open_memory_connection(svc, auth=TEST_AUTH) as good:
        for bad in (b"\xff" * 64, struct.pack(">I", 5) + b"\xc1" * 5):
            async with raw_peer(svc) as peer:
                await peer.handshake()
                await peer.send(bad)
                assert await peer.frames() == []
            assert await good.call("echo", {"ok": True}) == {"ok": True}


async def test_in_flight_limit_applies_backpressure(autojump_clock: Any) -> None:
    svc = EchoService()
    async with open_memory_connection(svc, server_kwargs={"max_in_flight": 2}) as conn:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(conn.call, "sleep", {"t": 1, "n": i})
        assert trio.current_time() - start == pytest.approx(3, abs=0.01)


def test_peer_names_for_log_lines() -> None:
    class Stream:
        def __init__(self, sock: socket.socket) -> None:
            self.socket = sock

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_name(Stream(a)) == f"unix:pid={os.getpid()}"
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname()) as c:
        server_side, addr = listener.accept()
        with server_side:
            assert peer_name(Stream(server_side)) == f"127.0.0.1:{addr[1]}"
    assert peer_name(Stream(c)) == "Stream"  # closed: the stream's type
