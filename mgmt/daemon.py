"""pyglfsd: the management daemon, one per node.

Start-up order matters for the operator: the state directory is locked and read
before anything else, so a corrupt or unreadable state file stops the daemon with
a message naming the file (and the file is left as it was). Without
``--foreground`` the process forks before trio starts; the parent waits until the
child listens (or failed) and exits with the child's verdict, so an init script
or a test knows the daemon is ready when ``pyglfsd`` returns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import click
import trio

from pyglfs.mgmt.bricksup import DEFAULT_BRICK_PORT, BrickSupervisor
from pyglfs.mgmt.errors import MgmtError
from pyglfs.mgmt.globalopts import GlobalOptions, register_global_options
from pyglfs.mgmt.peerlink import DEFAULT_PORT, PeerMonitor
from pyglfs.mgmt.peers import WILDCARD_HOSTS, PeerManager, parse_hostport
from pyglfs.mgmt.service import MgmtService
from pyglfs.mgmt.statestore import DEFAULT_STATE_DIR, PeerRecord, StateError, StateStore
from pyglfs.mgmt.transaction import TxnEngine
from pyglfs.mgmt.volservice import register_volumes
from pyglfs.mgmt.volstore import VolumeRecord, VolumeStore
from pyglfs.mgmt.volumes import VolumeManager
from pyglfs.mgmt.volwatch import install_volfile_watch
from pyglfs.rpc.server import serve_rpc

log = logging.getLogger(__name__)

DEFAULT_LOG_FILE = "/var/log/pyglfs/pyglfsd.log"
# Longer than a client's ping interval (half its ping timeout: 5 s by default).
DEFAULT_IDLE_TIMEOUT = 42.0
LOG_FORMAT = "[%(asctime)s] %(levelname)s %(name)s: %(message)s"


class MgmtDaemon:
    """One node's management daemon: the pool, the transaction engine, the rpc server.

    Build it from a store that is already open and read (so state errors surface
    before it exists); ``serve`` runs until cancelled. A connection (a peer's
    link, a mount's volfile watch, the CLI) that sends nothing, not even a ping,
    for ``idle_timeout`` seconds while none of its requests runs is dropped, so
    a client whose host vanished or whose process stopped does not stay
    subscribed (see rpc/server.py). By default the limit is 42 s or twice
    ``ping_timeout`` (the pool's peers ping each other every half of it),
    whichever is longer; 0: never.
    """

    def __init__(self, state: NodeState, host: str, port: int, *,
                 retry_interval: float = 3.0, ping_timeout: float = 10.0,
                 brick_port: int = DEFAULT_BRICK_PORT,
                 idle_timeout: float | None = None) -> None:
        self.store = state.store
        self.host = host
        if idle_timeout is None:
            idle_timeout = max(DEFAULT_IDLE_TIMEOUT, 2 * ping_timeout)
        self.idle_timeout = idle_timeout
        self.monitor = PeerMonitor(state.uuid, retry_interval=retry_interval,
                                   ping_timeout=ping_timeout)
        self.peers = PeerManager(state.store, state.uuid, state.peers, self.monitor,
                                 listen_host=host, port=port, call_timeout=ping_timeout)
        self.engine = TxnEngine()
        self.service = MgmtService(self.peers, self.engine)
        self.options = state.options
        register_global_options(self.service, self.options)
        self.supervisor = BrickSupervisor(state.volstore, self.store.dir / "logs" / "bricks",
                                          base_port=brick_port)
        self.volumes = VolumeManager(state.volstore, state.uuid, self.supervisor,
                                     state.volumes)
        register_volumes(self.service, self.volumes)
        self.volwatch = install_volfile_watch(self.service, state.volstore)

    @property
    def uuid(self) -> str:
        return self.peers.uuid

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Listen, watch the peers, record where we listen; reports the bound port."""
        async with trio.open_nursery() as nursery:
            bound: int = await nursery.start(
                partial(serve_rpc, idle_timeout=self.idle_timeout), self.service, self.host,
                self.peers.port)
            self.peers.port = bound
            self.monitor.hello_args = {"port": bound}
            await nursery.start(self.monitor.serve)
            await nursery.start(self.supervisor.serve)
            await nursery.start(self.volwatch.serve)
            await self.volumes.resume()
            self.peers.start_monitoring()
            cli_host = "127.0.0.1" if self.host in WILDCARD_HOSTS else self.host
            await trio.to_thread.run_sync(self.store.save_listen, cli_host, bound)
            log.info("pyglfsd %s listening on %s:%d with %d peer(s)", self.uuid, self.host,
                     bound, len(self.peers.peers))
            try:
                task_status.started(bound)
                await trio.sleep_forever()
            finally:
                self.store.clear_listen()


class NodeState(NamedTuple):
    """Everything read from the state directory before the daemon starts."""

    store: StateStore
    uuid: str
    peers: dict[str, PeerRecord]
    options: GlobalOptions
    volstore: VolumeStore
    volumes: dict[str, VolumeRecord]


def load_state(state_dir: str) -> NodeState:
    """Open, lock and read the state directory; StateError names the bad file."""
    store = StateStore(state_dir)
    store.open(lock=True)
    try:
        node_uuid = store.load_or_create_uuid()
        peers = store.load_peers()
        options = GlobalOptions(store.dir)
        options.load()
        volstore = VolumeStore(store.dir)
        volumes = volstore.load()
    except BaseException:
        store.close()
        raise
    return NodeState(store, node_uuid, peers, options, volstore, volumes)


def _setup_logging(log_file: str | None, level: str) -> None:
    handler: logging.Handler
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _daemonize(log_file: str) -> int:
    """Fork; the parent waits for the child's verdict on a pipe and exits with it.

    Returns, in the child, the pipe's write end on which to report.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        chunks = []
        while chunk := os.read(r, 4096):
            chunks.append(chunk)
        msg = b"".join(chunks).decode(errors="replace").strip()
        if msg.startswith("ok "):
            print(f"pyglfsd: {msg[3:]} (pid {pid})")
            os._exit(0)
        print(msg or f"pyglfsd: exited during start-up; see {log_file}", file=sys.stderr)
        os._exit(1)
    os.close(r)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    # Whatever escapes logging (a crash in the interpreter) still lands in the log.
    err = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(err, 2)
    os.close(devnull)
    os.close(err)
    return w


def _first_oserror(exc: BaseException) -> OSError | None:
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = _first_oserror(sub)
            if found is not None:
                return found
    return None


async def _run(daemon: MgmtDaemon, report: Any) -> int:
    """Serve until SIGTERM/SIGINT; the process exit code."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            try:
                bound = await nursery.start(daemon.serve)
            except (OSError, ExceptionGroup) as group:
                exc = _first_oserror(group)
                if exc is None:
                    raise
                report(f"pyglfsd: cannot listen on {daemon.host}:{daemon.peers.port}: "
                       f"{exc.strerror or exc}", False)
                return 1
            report(f"listening on {daemon.host}:{bound}", True)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: nothing to reload yet")
                    continue
                log.info("%s: shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    return 0


def listen_address(text: str) -> tuple[str, int]:
    """``HOST[:PORT]`` for --listen; ``:PORT`` or ``*`` mean every address, port 0 any."""
    if text.startswith(":"):
        text = "0.0.0.0" + text
    elif text.startswith("*"):
        text = "0.0.0.0" + text[1:]
    if text.endswith(":0") and not text.startswith("["):
        return parse_hostport(text[:-2])[0], 0
    return parse_hostport(text)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True,
              help="Where the node UUID, peers and volumes are kept.")
@click.option("--listen", default=f"0.0.0.0:{DEFAULT_PORT}", show_default=True,
              metavar="HOST[:PORT]", help="Address to serve the CLI and the other daemons on.")
@click.option("--log-file", default=None, help=f"Log here (daemon default {DEFAULT_LOG_FILE}).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--foreground", is_flag=True, help="Do not fork; log to stderr by default.")
@click.option("--ping-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds of silence after which a peer counts as disconnected.")
@click.option("--retry-interval", default=3.0, show_default=True, type=click.FloatRange(0.05),
              help="Seconds between reconnection attempts to a peer that is down.")
@click.option("--brick-port", default=DEFAULT_BRICK_PORT, show_default=True,
              type=click.IntRange(1, 65535), help="First port to try for a local brick.")
@click.option("--idle-timeout", default=None, type=click.FloatRange(0),
              help="Drop a client or peer connection that sends nothing (clients ping) for "
              "this many seconds; 0 never drops one.  [default: 42 or twice --ping-timeout]")
def main(state_dir: str, listen: str, log_file: str | None, log_level: str, foreground: bool,
         ping_timeout: float, retry_interval: float, brick_port: int,
         idle_timeout: float | None) -> None:
    """The pyglfs management daemon."""
    try:
        host, port = listen_address(listen)
    except MgmtError as exc:
        raise click.BadParameter(exc.message, param_hint="--listen") from None
    try:
        state = load_state(state_dir)
    except StateError as exc:
        click.echo(f"pyglfsd: {exc}", err=True)
        sys.exit(1)
    if not foreground:
        log_file = log_file or DEFAULT_LOG_FILE
        try:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            with open(log_file, "a"):
                pass
        except OSError as exc:
            click.echo(f"pyglfsd: cannot open log file {log_file}: {exc.strerror}", err=True)
            sys.exit(1)
    pipe = None if foreground else _daemonize(str(log_file))
    _setup_logging(log_file, log_level)

    def report(msg: str, ok: bool) -> None:
        nonlocal pipe
        if pipe is None:
            if foreground:
                click.echo(f"pyglfsd: {msg}" if ok else msg, err=not ok)
                sys.stdout.flush()
            return
        with contextlib.suppress(OSError):
            os.write(pipe, (f"ok {msg}" if ok else msg).encode())
        os.close(pipe)
        pipe = None

    daemon = MgmtDaemon(state, host, port, retry_interval=retry_interval,
                        ping_timeout=ping_timeout, brick_port=brick_port,
                        idle_timeout=idle_timeout)
    code = 1
    try:
        code = trio.run(_run, daemon, report)
    except Exception:
        log.exception("pyglfsd failed")
        report("pyglfsd: failed during start-up; see the log", False)
        code = 1
    finally:
        state.store.close()
    log.info("pyglfsd stopped")
    sys.exit(code)
