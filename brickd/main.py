"""``pyglfs-brickd``: serve one brick directory over RPC.

Start-up proves the brick before serving: the directory must exist and carry
this volume's id (a fresh, empty brick is claimed for it), and the auth file
must be usable. Any refusal is one line on stderr and exit status 1. Once the
listener is bound, one line ``listening on HOST:PORT`` goes to stdout, so a
supervisor started with port 0 learns the port and knows the brick is ready.
SIGTERM and SIGINT end the brick cleanly with status 0.

The process first re-executes itself (same PID) with glibc's malloc told to keep
big buffers (``pyglfs.rpc.tuning``): every write brings a fresh 1 MiB payload, and
with the defaults each one is mapped, faulted in page by page and returned to the
kernel again, which cost more CPU than the write into the page cache itself.
"""

from __future__ import annotations

import logging
import signal
import sys
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import click
import trio

from pyglfs.brickd.auth import AuthFileError, Credentials, load_credentials
from pyglfs.brickd.layout import BrickRefused
from pyglfs.brickd.localfds import LocalFdServer
from pyglfs.brickd.localrpc import LocalRpcServer
from pyglfs.brickd.server import BrickService, open_brick_service
from pyglfs.brickd.store import open_store
from pyglfs.rpc.server import serve_rpc
from pyglfs.rpc.tuning import reexec_with_tuned_malloc

log = logging.getLogger(__name__)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6ADDR]:PORT`` -> (host, port); ValueError with the reason."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"port {port_s!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return host, port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen_option(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, int]:
    try:
        return parse_listen(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _uuid_option(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a UUID") from None


def setup_logging(level: str, log_file: str | None) -> None:
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


async def run_brick(
    brick: Path, volume: str, volume_id: str, host: str, port: int,
    credentials: Credentials | None, local_reads: bool = True, local_rpc: bool = True,
    direct_writes: bool = False, drop_behind: bool = True,
) -> None:
    """Serve until SIGTERM/SIGINT. Store refusals propagate to the caller.

    ``direct_writes`` and ``drop_behind`` are the storage.direct-writes and
    storage.drop-behind volume options (brickd/fileio.py); ``local_rpc``
    also serves clients on this host over a Unix stream (brickd/localrpc.py).
    """
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        store = open_store(brick, volume_id)
        store.direct_writes = direct_writes
        store.drop_behind = drop_behind
        try:
            async with trio.open_nursery() as nursery:
                localfds = None
                if local_reads:
                    localfds = LocalFdServer(store.handles_fd, volume, str(brick))
                    await nursery.start(localfds.serve)
                service = await nursery.start(partial(
                    _serve_service, store, volume, credentials, localfds))
                front: Any = service
                if local_rpc:
                    localrpc = LocalRpcServer(volume, str(brick))
                    front = localrpc.front(service)
                    await nursery.start(localrpc.serve)
                bound = await nursery.start(serve_rpc, front, host, port)
                address = format_address(host, bound)
                log.info("brick %s of volume %s listening on %s", brick, volume, address)
                print(f"listening on {address}", flush=True)
                async for signum in signals:
                    log.info("%s received: stopping brick %s", signal.Signals(signum).name, brick)
                    break
                nursery.cancel_scope.cancel()
        finally:
            store.close()


async def _serve_service(
    store: Any, volume: str, credentials: Credentials | None,
    localfds: LocalFdServer | None,
    task_status: trio.TaskStatus[BrickService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Hold the brick's one service (shared by its TCP and Unix listeners) until cancelled."""
    async with open_brick_service(
            store, volume, credentials=credentials, localfds=localfds) as service:
        task_status.started(service)
        await trio.sleep_forever()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--brick", required=True, help="The brick directory to serve.")
@click.option("--listen", required=True, callback=_listen_option,
              help="HOST:PORT to listen on; port 0 picks a free port.")
@click.option("--volume", required=True, help="The volume this brick belongs to.")
@click.option("--volume-id", required=True, callback=_uuid_option,
              help="The volume's UUID, recorded in the brick on first start.")
@click.option("--auth-file", default=None,
              help='JSON {"username": ..., "password": ...} clients must present.')
@click.option("--local-reads/--no-local-reads", default=True, show_default=True,
              help="Hand clients on this host read-only fds of files (short-circuit reads).")
@click.option("--local-rpc/--no-local-rpc", default=True, show_default=True,
              help="Serve clients on this host over a Unix stream socket as well as TCP.")
@click.option("--direct-writes/--no-direct-writes", default=False, show_default=True,
              envvar="PYGLFS_BRICK_DIRECT_WRITES",
              help="Big aligned writes bypass the page cache (storage.direct-writes).")
@click.option("--drop-behind/--no-drop-behind", default=True, show_default=True,
              envvar="PYGLFS_BRICK_DROP_BEHIND", help="Sequential writers' pages are written back early and dropped "
                   "behind them (storage.drop-behind).")
@click.option("--log-file", default=None, help="Log here instead of stderr.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(LOG_LEVELS, case_sensitive=False))
def cli(
    brick: str, listen: tuple[str, int], volume: str, volume_id: str, auth_file: str | None,
    local_reads: bool, local_rpc: bool, direct_writes: bool, drop_behind: bool,
    log_file: str | None, log_level: str,
) -> None:
    """Serve one brick directory of a pyglfs volume."""
    try:
        setup_logging(log_level, log_file)
    except OSError as e:
        raise click.ClickException(f"cannot open log file {log_file}: {e.strerror}") from None
    path = Path(brick)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise click.ClickException(f"brick directory {brick} {what}")
    credentials = None
    if auth_file is not None:
        try:
            credentials = load_credentials(auth_file)
        except AuthFileError as e:
            raise click.ClickException(str(e)) from None
    host, port = listen
    try:
        trio.run(run_brick, path, volume, volume_id, host, port, credentials, local_reads,
                 local_rpc, direct_writes, drop_behind)
    except KeyboardInterrupt:
        pass
    except Exception as e:
        message = _refusal_message(e)
        if message is None:
            raise
        log.error("brick %s not started: %s", brick, message)
        raise click.ClickException(message) from None


def _refusal_message(exc: BaseException) -> str | None:
    """One operator-facing line for a start-up failure, or None for a bug."""
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _refusal_message(exc.exceptions[0])
    if isinstance(exc, BrickRefused):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return None


def main() -> None:
    """Entry point: tune malloc, then run the command."""
    reexec_with_tuned_malloc("pyglfs.brickd.main", "pyglfs-brickd")
    cli(prog_name="pyglfs-brickd")


if __name__ == "__main__":
    main()
