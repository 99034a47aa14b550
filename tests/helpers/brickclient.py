"""Drive a brick through the wire protocol, in-process or as a real process.

``brick.connect()`` yields a :class:`BrickClient` whose ``call(op, args)``
returns the reply's value or raises OSError with the errno that crossed the
wire; both kinds of brick are driven the same way.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing

from helpers.brickd import BrickdProcess
from pyglfs.rpc.connection import RpcConnection, connect_stream, open_rpc_connection
from pyglfs.rpc.server import serve_rpc_stream

VOLUME = "cvol"
AUTH = {"username": "contract", "password": "s3cret-pw"}
CALL_TIMEOUT = 30.0


class BrickClient:
    """One handshaken connection to the brick, with the events it received."""

    def __init__(self, conn: RpcConnection, events: list[tuple[str, dict[str, Any]]]) -> None:
        self.conn = conn
        self.events = events

    async def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        return await self.conn.call(op, {} if args is None else args, timeout=CALL_TIMEOUT)

    async def wait_event(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                for n, a in self.events:
                    if n == name:
                        return a
                await trio.sleep(0.005)

    async def aclose(self) -> None:
        """Drop the connection abruptly, as a crashed client would."""
        await self.conn.aclose()


class BrickUnderTest:
    kind: str
    root: Path

    def connect(self, *, volume: str = VOLUME, auth: dict[str, str] | None = AUTH,
                client_id: str | None = None) -> Any:
        raise NotImplementedError

    async def raw_stream(self) -> trio.abc.Stream:
        raise NotImplementedError


def _collector() -> tuple[list[tuple[str, dict[str, Any]]], Any]:
    events: list[tuple[str, dict[str, Any]]] = []
    return events, lambda name, args: events.append((name, args))


class MemoryBrick(BrickUnderTest):
    kind = "memory"

    def __init__(self, nursery: trio.Nursery, service: Any, root: Path) -> None:
        self.nursery = nursery
        self.service = service
        self.root = root

    def _server_side(self) -> trio.abc.Stream:
        client, server = trio.testing.memory_stream_pair()
        self.nursery.start_soon(serve_rpc_stream, self.service, server)
        return client

    @asynccontextmanager
    async def connect(self, *, volume: str = VOLUME, auth: dict[str, str] | None = AUTH,
                      client_id: str | None = None) -> AsyncIterator[BrickClient]:
        events, on_event = _collector()
        async with connect_stream(
            self._server_side(), volume=volume, client_id=client_id or uuid.uuid4().hex,
            auth=auth, on_event=on_event, call_timeout=CALL_TIMEOUT,
        ) as conn:
            yield BrickClient(conn, events)

    async def raw_stream(self) -> trio.abc.Stream:
        return self._server_side()


class ProcessBrick(BrickUnderTest):
    kind = "process"

    def __init__(self, proc: BrickdProcess) -> None:
        self.proc = proc
        self.root = proc.brick

    @asynccontextmanager
    async def connect(self, *, volume: str = VOLUME, auth: dict[str, str] | None = AUTH,
                      client_id: str | None = None) -> AsyncIterator[BrickClient]:
        events, on_event = _collector()
        async with open_rpc_connection(
            self.proc.host, self.proc.port, volume=volume,
            client_id=client_id or uuid.uuid4().hex, auth=auth, on_event=on_event,
            call_timeout=CALL_TIMEOUT,
        ) as conn:
            yield BrickClient(conn, events)

    async def raw_stream(self) -> trio.abc.Stream:
        return await trio.open_tcp_stream(self.proc.host, self.proc.port)
