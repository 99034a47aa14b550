"""A TCP proxy in front of one brick that records the requests going through it,
so a mount test can tell which brick requests an operation cost."""

from __future__ import annotations

import struct
from collections import Counter
from typing import Any

import trio

from helpers.tcpproxy import FreezableProxy
from pyglfs.rpc.framing import decode_body


class _Tap:
    """A stream's receiving side that hands every chunk to ``seen`` as well."""

    def __init__(self, stream: trio.SocketStream, seen: Any) -> None:
        self.stream = stream
        self.seen = seen

    async def receive_some(self, max_bytes: int) -> bytes:
        data = await self.stream.receive_some(max_bytes)
        self.seen(data)
        return bytes(data)


class CountingProxy(FreezableProxy):
    """Forwards every connection to ``target``; ``ops`` counts the requests by op
    and ``requests`` keeps (op, args) of each, in order."""

    def __init__(self, host: str, target: tuple[str, int]) -> None:
        super().__init__(host, *target)
        self.ops: Counter[str] = Counter()
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._clients: dict[trio.SocketStream, bytearray] = {}

    async def _handle(self, client: trio.SocketStream) -> None:
        self._clients[client] = bytearray()
        try:
            await super()._handle(client)
        finally:
            del self._clients[client]

    async def _pump(self, src: Any, dst: trio.SocketStream, scope: trio.CancelScope) -> None:
        buf = self._clients.get(src)
        if buf is not None:
            src = _Tap(src, lambda data: self._record(buf, data))
        await super()._pump(src, dst, scope)

    def _record(self, buf: bytearray, data: bytes) -> None:
        """Take every whole frame (4-byte length, msgpack body) off ``buf``."""
        buf += data
        while len(buf) >= 4:
            (size,) = struct.unpack_from(">I", buf)
            if len(buf) < 4 + size:
                return
            msg = decode_body(bytes(buf[4:4 + size]))
            del buf[:4 + size]
            if isinstance(msg, dict) and isinstance(msg.get("op"), str):
                self.ops[msg["op"]] += 1
                args = msg.get("args")
                self.requests.append((msg["op"], args if isinstance(args, dict) else {}))
