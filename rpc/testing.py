"""Helpers for testing code that speaks the protocol, without sockets.

``open_memory_connection`` runs any Service over an in-memory stream pair and yields
a client connection to it: a brick or management service can be tested through the
real framing and dispatch, with trio's autojump clock if timeouts are involved.
``EchoService`` is a small service for the protocol's own tests and benchmarks.
"""

from __future__ import annotations

import errno
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from pyglfs.rpc.connection import RpcConnection, connect_stream
from pyglfs.rpc.errors import HandshakeRefused
from pyglfs.rpc.server import ServerConnection, Service, serve_rpc, serve_rpc_stream

TEST_AUTH = {"username": "test", "password": "secret"}


class EchoService:
    """Ops: ``null``, ``echo`` (returns args), ``sleep`` {t, n} -> n, ``fail`` {errno},
    ``crash`` (a bug: RuntimeError), ``event`` {name, args} (pushes it back),
    ``block`` (never returns), ``write`` {data} -> len(data); anything else ENOSYS.

    Records every op it handled in ``handled`` and every disconnect in
    ``disconnects``. ``auth`` is the only credential accepted (None: any).
    """

    inline_ops = frozenset({"null", "echo", "write"})

    def __init__(self, auth: dict[str, Any] | None = None, volume: str | None = None) -> None:
        self.auth = auth
        self.volume = volume
        self.handled: list[str] = []
        self.connections: list[ServerConnection] = []
        self.disconnects: list[ServerConnection] = []
        self.record = True

    def authenticate(self, hello: dict[str, Any]) -> None:
        if self.volume is not None and hello["volume"] != self.volume:
            raise HandshakeRefused(f"no volume {hello['volume']!r} here")
        if self.auth is not None and hello.get("auth") != self.auth:
            raise HandshakeRefused(f"wrong credentials for volume {hello['volume']!r}")

    async def handle(self, op: str, args: dict[str, Any], conn: ServerConnection) -> Any:
        if self.record:
            self.handled.append(op)
            if conn not in self.connections:
                self.connections.append(conn)
        if op == "null":
            return {}
        if op == "echo":
            return args
        if op == "write":
            return len(args["data"])
        if op == "sleep":
            await trio.sleep(args["t"])
            return args["n"]
        if op == "fail":
            raise OSError(getattr(errno, args["errno"]), "failed as asked")
        if op == "crash":
            raise RuntimeError("a bug in the handler")
        if op == "event":
            await conn.send_event(args["name"], args["args"])
            return {}
        if op == "block":
            await trio.sleep_forever()
        raise OSError(errno.ENOSYS, f"unknown op {op!r}")

    def disconnected(self, conn: ServerConnection) -> None:
        self.disconnects.append(conn)


@asynccontextmanager
async def open_memory_connection(
    service: Service,
    *,
    volume: str = "vol0",
    client_id: str = "test-client",
    auth: dict[str, Any] | None = None,
    server_kwargs: dict[str, Any] | None = None,
    **client_kwargs: Any,
) -> AsyncIterator[RpcConnection]:
    """A client connection to ``service`` served over a memory stream pair."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: serve_rpc_stream(service, server_stream, **(server_kwargs or {}))
            )
            async with connect_stream(
                client_stream, volume=volume, client_id=client_id, auth=auth, **client_kwargs
            ) as conn:
                yield conn
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def serve_echo(host: str = "127.0.0.1", port: int = 0, *, record: bool = False) -> None:
    """Serve an EchoService on host:port and print ``listening on PORT`` once ready;
    returns on SIGTERM or SIGINT."""
    svc = EchoService()
    svc.record = record
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(serve_rpc, svc, host, port)
            print(f"listening on {bound}", flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


def main() -> None:
    """``python -m pyglfs.rpc.testing [HOST [PORT]]``: an echo server for tests and
    benchmarks; runs until killed."""
    import logging
    import sys

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    trio.run(serve_echo, host, port)


if __name__ == "__main__":
    main()
