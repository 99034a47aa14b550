"""What every `pyglfs` command shares: options, the call to pyglfsd, error output.

A command calls ``run_op(ctx, prefix, op, args)``: one request to the daemon on a
fresh connection. A refusal from the daemon prints ``PREFIX: MESSAGE`` (gluster's
shape, e.g. ``peer probe: failed: ...``) and exits 1; a daemon that cannot be
reached prints the connection failure naming the address and exits 1. No
traceback reaches the user for either.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import click
import trio

from pyglfs.mgmt.cli.output import json_error, json_result
from pyglfs.mgmt.errors import MgmtError
from pyglfs.mgmt.peers import parse_hostport
from pyglfs.mgmt.statestore import DEFAULT_STATE_DIR, read_listen_record
from pyglfs.rpc.connection import open_rpc_connection
from pyglfs.rpc.errors import HandshakeRefused, errno_name

DEFAULT_MGMT = "127.0.0.1:24750"
CONNECT_TIMEOUT = 5.0

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class CliContext:
    """The group's options, as every command sees them."""

    mgmt: tuple[str, int] = ("127.0.0.1", 24750)
    json: bool = False
    script: bool = False
    timeout: float = 120.0

    def interactive(self) -> bool:
        return not self.script and sys.stdin.isatty()


def resolve_mgmt(mgmt: str | None, state_dir: str) -> tuple[str, int]:
    """--mgmt if given, else the local daemon's listen record, else 127.0.0.1:24750."""
    if mgmt:
        try:
            return parse_hostport(mgmt)
        except MgmtError as exc:
            raise click.BadParameter(exc.message, param_hint="--mgmt") from None
    return read_listen_record(state_dir) or parse_hostport(DEFAULT_MGMT)


def json_option(f: F) -> F:
    """--json on a command, equivalent to the group's --json."""
    def set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            ctx.ensure_object(CliContext).json = True

    return click.option("--json", "json_", is_flag=True, expose_value=False,
                        callback=set_json, help="Machine-readable output.")(f)


def fail(ctx: CliContext, message: str, code: int = errno.EIO) -> NoReturn:
    if ctx.json:
        click.echo(json_error(message, errno_name(code)))
    else:
        click.echo(message, err=True)
    sys.exit(1)


class _Unreachable(Exception):
    pass


async def _call(ctx: CliContext, op: str, args: dict[str, Any]) -> Any:
    host, port = ctx.mgmt
    connected = False
    try:
        async with open_rpc_connection(host, port, volume="", client_id=f"cli:{os.getpid()}",
                                       role="mgmt", connect_timeout=CONNECT_TIMEOUT,
                                       call_timeout=ctx.timeout,
                                       ping_timeout=ctx.timeout) as conn:
            connected = True
            return await conn.call(op, args, timeout=ctx.timeout)
    except HandshakeRefused:
        raise
    except OSError as exc:
        if not connected:
            raise _Unreachable(str(exc.strerror or exc)) from None
        raise


def run_op(ctx: CliContext, prefix: str, op: str, args: dict[str, Any]) -> Any:
    """Call ``op`` on the daemon and return its result, or print the error and exit 1."""
    host, port = ctx.mgmt
    try:
        return trio.run(_call, ctx, op, args)
    except HandshakeRefused as exc:
        fail(ctx, f"{host}:{port} refused the connection: {exc.reason}", errno.ECONNREFUSED)
    except _Unreachable:
        fail(ctx, "Connection failed. Please check if pyglfsd (the pyglfs management "
                  f"daemon) is operational on {host}:{port}.", errno.ENOTCONN)
    except OSError as exc:
        msg = str(exc.strerror or exc)
        fail(ctx, f"{prefix}: {msg}" if prefix else msg, exc.errno or errno.EIO)


def print_result(ctx: CliContext, result: Any, text: str | Callable[[Any], str]) -> None:
    """Print a success: JSON of ``result`` with --json, else ``text`` (or text(result))."""
    if ctx.json:
        click.echo(json_result(result))
    else:
        click.echo(text if isinstance(text, str) else text(result))


def default_state_dir() -> str:
    return os.environ.get("PYGLFS_STATE_DIR", DEFAULT_STATE_DIR)
