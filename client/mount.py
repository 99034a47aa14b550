"""``pyglfs-mount``: the FUSE client process.

``pyglfs-mount HOST:/VOLUME[/SUBDIR] MOUNTPOINT [-o OPTS] [--foreground]``
``pyglfs-mount [--volfile FILE] MOUNTPOINT [-o OPTS] [--foreground]``

Start-up, in order, each step failing with one clear line and exit status 1
(2 for bad usage) before anything is mounted:

1. re-exec with glibc malloc tuned (``pyglfs.rpc.tuning``): large write buffers
   otherwise go back to the kernel after every request;
2. parse the options and the source, check the mount point (a directory, not
   a pyglfs mount already: mounting over it would hide it) and the log file,
   then read the volfile, or fetch it from pyglfsd (``getspec``: the source's
   host, then ``backup-volfile-servers``, all on ``volfile-server-port``);
3. fork into the background (``client.daemon``) unless ``--foreground``;
4. in trio: build the layer graph, start it and wait (``UP_TIMEOUT``) until it
   is up, then mount with pyfuse3 and tell the waiting parent;
5. serve until unmounted (``umount``, ``fusermount3 -u``) or SIGTERM/SIGINT,
   which unmount cleanly.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from dataclasses import dataclass, field

import click

from pyglfs.client.daemon import Readiness, daemonize, mount_fstype
from pyglfs.client.options import (
    MountOptionError,
    MountOptions,
    MountSource,
    parse_mount_options,
    parse_source,
)
from pyglfs.rpc.tuning import reexec_with_tuned_malloc
from pyglfs.volfiles.model import Graph, VolfileError
from pyglfs.volfiles.parser import parse_file

log = logging.getLogger("pyglfs.client.mount")  # also when run as __main__

LOG_DIR = "/var/log/pyglfs"
FSTYPE = "fuse.pyglfs"  # the type mount(8) and /proc/mounts show (subtype=pyglfs)
UP_TIMEOUT = 10.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class MountError(Exception):
    """A reason not to mount, printed as one line."""


@dataclass
class MountPlan:
    """Everything checked before forking: what to mount where, and how.

    ``volfile`` is the volfile's path, or for a mount by name where it came from
    (``getspec from HOST:PORT``). A mount by name also has ``volume``, the
    volfile ``servers`` (the one that answered first, then the others in the
    order given) and ``subdir``, the directory of the volume mounted as the root
    (``/a/b``) or None for the volume's root.
    """

    mountpoint: str
    volfile: str
    graph: Graph
    options: MountOptions
    log_file: str | None
    fsname: str
    pid_file: str | None = None
    up_timeout: float = UP_TIMEOUT
    volume: str | None = None
    servers: list[tuple[str, int]] = field(default_factory=list)
    subdir: str | None = None


def default_log_file(mountpoint: str) -> str:
    """``/mnt/gvol0`` logs to ``/var/log/pyglfs/mnt-gvol0.log``, as glusterfs names it."""
    name = mountpoint.strip("/").replace("/", "-") or "root"
    return os.path.join(LOG_DIR, f"{name}.log")


def volfile_servers(src: MountSource, opts: MountOptions) -> list[tuple[str, int]]:
    """The source's host, then the backup servers, each once, on the one port."""
    port = opts.volfile_server_port
    hosts = [src.host, *opts.backup_volfile_servers]
    return [(h, port) for i, h in enumerate(hosts) if h not in hosts[:i]]


def source_name(src: MountSource) -> str:
    """``HOST:/VOLUME[/SUBDIR]``, what /proc/mounts shows, as for glusterfs."""
    host = f"[{src.host}]" if ":" in src.host else src.host
    return f"{host}:/{src.volume}{src.subdir or ''}"


def _fetch(src: MountSource, opts: MountOptions) -> tuple[Graph, str, list[tuple[str, int]]]:
    """(graph, where it came from, servers with the one that answered first)."""
    import trio

    from pyglfs.client.volfetch import VolfetchError, fetch_volfile, server_name

    servers = volfile_servers(src, opts)
    try:
        got = trio.run(fetch_volfile, servers, src.volume)
    except VolfetchError as e:
        raise MountError(f"{e}; nothing mounted") from None
    ordered = [got.server, *(s for s in servers if s != got.server)]
    return got.graph, f"getspec from {server_name(got.server)}", ordered


def prepare(mountpoint: str, volfile: str | None, option_strings: tuple[str, ...],
            fsname: str | None, source: str | None = None) -> MountPlan:
    """Check everything that can be checked without mounting.

    With a ``source`` (``HOST:/VOLUME[/SUBDIR]``) the volfile is fetched from
    pyglfsd here, before the process forks, so a refusal is printed by the
    command itself; a local volfile cannot be given as well.
    """
    try:
        opts = parse_mount_options(",".join(o for o in option_strings if o))
        src = parse_source(source) if source else None
    except MountOptionError as e:
        raise MountError(str(e)) from None
    volfile = volfile or opts.volfile
    if src is not None and volfile:
        raise MountError(f"give either the source {source} or a volfile ({volfile}), not both")
    if src is None and not volfile:
        raise MountError("nothing to mount: give HOST:/VOLUME[/SUBDIR] MOUNTPOINT, "
                         "or --volfile FILE (-o volfile=FILE) MOUNTPOINT")
    mp = os.path.abspath(mountpoint)
    if mount_fstype(mp) == FSTYPE:
        # as mount.glusterfs refuses: a second mount would hide the first
        raise MountError(f"{mp} is already a pyglfs mount; nothing mounted")
    try:
        st = os.stat(mp)
    except OSError as e:
        raise MountError(f"mount point {mp}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mount point {mp} is not a directory")
    log_file: str | None = None
    if opts.log_level_number is not None:
        log_file = os.path.abspath(opts.log_file) if opts.log_file else default_log_file(mp)
        try:
            os.makedirs(os.path.dirname(log_file), mode=0o755, exist_ok=True)
            with open(log_file, "a"):
                pass
        except OSError as e:
            raise MountError(f"cannot open log file {log_file}: {e.strerror}") from None
    if src is not None:
        graph, origin, servers = _fetch(src, opts)
        return MountPlan(mp, origin, graph, opts, log_file, fsname or source_name(src),
                         volume=src.volume, servers=servers, subdir=src.subdir)
    assert volfile is not None
    try:
        graph = parse_file(volfile)
    except OSError as e:
        raise MountError(f"cannot read volfile {volfile}: {e.strerror}") from None
    except VolfileError as e:
        raise MountError(f"invalid volfile: {e}") from None
    return MountPlan(mp, os.path.abspath(volfile), graph, opts, log_file,
                     fsname or graph.name)


def setup_logging(plan: MountPlan, foreground: bool) -> None:
    root = logging.getLogger()
    level = plan.options.log_level_number
    if level is None:
        root.addHandler(logging.NullHandler())
        root.setLevel(logging.CRITICAL + 1)
        return
    logging.addLevelName(5, "TRACE")
    root.setLevel(level)
    handlers: list[logging.Handler] = []
    if plan.log_file is not None:
        handlers.append(logging.FileHandler(plan.log_file))
    if foreground:
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        h.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(h)


def run(plan: MountPlan, foreground: bool) -> int:
    """Fork (unless ``foreground``), then mount and serve; the exit status.

    trio, pyfuse3 and the client layers are imported only here: after the
    malloc re-exec and in the process that serves.
    """
    readiness = Readiness() if foreground else daemonize()
    if plan.options.auto_unmount:
        readiness.guard_unmount(plan.mountpoint)
    setup_logging(plan, foreground)
    try:
        import trio

        from pyglfs.client.fuse.session import serve_mount

        return trio.run(serve_mount, plan, readiness)
    except BaseException as e:
        log.exception("pyglfs-mount failed")
        if not readiness.reported:
            readiness.failed(f"pyglfs-mount: {type(e).__name__}: {e}")
        return 1


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("args", nargs=-1, required=True, metavar="[HOST:/VOLUME[/SUBDIR]] MOUNTPOINT")
@click.option("--volfile", metavar="FILE", help="client volfile of the volume to mount")
@click.option("-o", "options", multiple=True, metavar="OPTS",
              help="mount options, comma-separated (ro, log-file=, log-level=, ...)")
@click.option("--foreground", "-f", is_flag=True, help="stay in the foreground, log to stderr")
@click.option("--fsname", hidden=True, help="source shown in /proc/mounts")
@click.option("--pid-file", metavar="FILE", help="write the mount process's PID here once mounted")
@click.option("--up-timeout", type=click.FloatRange(0.1, 3600), default=UP_TIMEOUT,
              show_default=True, help="seconds to wait for the volume's bricks")
def cli(args: tuple[str, ...], volfile: str | None, options: tuple[str, ...], foreground: bool,
        fsname: str | None, pid_file: str | None, up_timeout: float) -> None:
    """Mount a pyglfs volume on MOUNTPOINT: by name, fetching its volfile from the
    pyglfsd on HOST (-o volfile-server-port=PORT, backup-volfile-servers=H2:H3),
    or from a local volfile (--volfile FILE). A source of "none" (as mount(8) gives
    for fstab lines with volfile=) stands for no source."""
    if len(args) > 2:
        raise click.UsageError(f"unexpected argument {args[2]!r}")
    source, mountpoint = (args[0], args[1]) if len(args) == 2 else (None, args[0])
    if source == "none":
        source = None
    try:
        plan = prepare(mountpoint, volfile, options, fsname, source)
        plan.up_timeout = up_timeout
        if pid_file:
            plan.pid_file = os.path.abspath(pid_file)
    except MountError as e:
        click.echo(f"pyglfs-mount: {e}", err=True)
        sys.exit(1)
    sys.exit(run(plan, foreground))


def main() -> None:
    reexec_with_tuned_malloc("pyglfs.client.mount", "pyglfs-mount")
    cli(prog_name="pyglfs-mount")


if __name__ == "__main__":
    main()

