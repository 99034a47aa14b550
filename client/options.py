"""Mount options and the mount source, as mount(8), fstab and kubelet pass them.

``mount -t fuse.pyglfs host:/gvol0/sub /mnt -o ro,log-level=debug`` reaches
``mount.fuse.pyglfs`` (and ``pyglfs-mount``) as a source string and one ``-o``
string: comma-separated ``key=value`` pairs and flags. A value may be put in
double quotes to hold a comma (``log-file="/var/log/a,b.log"``). Later options
override earlier ones (``ro,rw`` mounts read-write), as mount(8) does.

Generic options that mount(8) and fstab hand to every helper (``defaults``,
``_netdev``, ``nofail``, ``x-*`` …) are accepted and ignored; anything else
unknown is an error that lists what is accepted, so a typo in an fstab line
fails the mount loudly instead of being dropped.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pyglfs.volfiles.generator import VOLUME_NAME_RE

DEFAULT_VOLFILE_SERVER_PORT = 24750
TRACE = 5
LOG_LEVELS = {"TRACE": TRACE, "DEBUG": logging.DEBUG, "INFO": logging.INFO,
              "WARNING": logging.WARNING, "ERROR": logging.ERROR,
              "CRITICAL": logging.CRITICAL, "NONE": None}

_HOST_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?")
_PORT_RE = re.compile(r"[0-9]{1,5}")
# Accepted and ignored: what mount(8), fstab and kubelet pass to every helper.
IGNORED_FLAGS = frozenset({
    "_netdev", "defaults", "noauto", "auto", "nofail", "user", "nouser", "users", "owner",
    "group", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime",
    "relatime", "norelatime", "strictatime", "nodiratime", "diratime", "lazytime",
    "nolazytime", "sync", "async", "silent", "loud",
})
# Accepted and ignored with any value (mount(8) passes user=NAME for user mounts).
IGNORED_VALUED = frozenset({"user", "comment"})


class MountOptionError(ValueError):
    """A mount option or mount source is not valid; the message says what is accepted."""


class MountSource(NamedTuple):
    """``host:/volume[/subdir]``: where to fetch the volfile and what to mount.

    ``subdir`` is ``None`` for the volume root, else an absolute path inside the
    volume with single slashes and no trailing slash (``/sub/dir``).
    """

    host: str
    volume: str
    subdir: str | None


@dataclass
class MountOptions:
    """Parsed ``-o`` options with their defaults."""

    read_only: bool = False
    volfile: str | None = None
    log_file: str | None = None
    log_level: str = "INFO"
    auto_unmount: bool = False
    attribute_timeout: float = 1.0
    entry_timeout: float = 1.0
    negative_timeout: float = 0.0
    volfile_server_port: int = DEFAULT_VOLFILE_SERVER_PORT
    backup_volfile_servers: list[str] = field(default_factory=list)
    allow_other: bool = True
    default_permissions: bool = True
    kernel_writeback_cache: bool = False
    # write-behind=no: the graph's performance/write-behind layer writes through
    # (kept, unlike GlusterFS, for A/B runs without editing the volume).
    write_behind: bool = True
    ignored: list[str] = field(default_factory=list)

    @property
    def log_level_number(self) -> int | None:
        """The ``logging`` level (TRACE is 5), or None when logging is off (NONE)."""
        return LOG_LEVELS[self.log_level]

    def fuse_options(self, fsname: str) -> set[str]:
        """Options for ``pyfuse3.init``; ``fsname`` is what /proc/mounts shows as source."""
        opts = {f"fsname={fsname.replace(',', '_')}", "subtype=pyglfs"}
        for on, name in ((self.allow_other, "allow_other"),
                         (self.default_permissions, "default_permissions"),
                         (self.read_only, "ro"), (self.auto_unmount, "auto_unmount")):
            if on:
                opts.add(name)
        return opts


def _path(v: str) -> str:
    if not v or "\x00" in v:
        raise ValueError("expected a file path")
    return v


def _level(v: str) -> str:
    u = v.upper()
    if u not in LOG_LEVELS:
        raise ValueError("expected one of " + ", ".join(LOG_LEVELS) + " (any case)")
    return u


def _seconds(v: str) -> float:
    try:
        f = float(v)
    except ValueError:
        f = math.nan
    if not math.isfinite(f) or f < 0 or not v.strip() == v:
        raise ValueError("expected a number of seconds >= 0")
    return f


def _port(v: str) -> int:
    if not _PORT_RE.fullmatch(v) or not 1 <= int(v) <= 65535:
        raise ValueError("expected a port number 1..65535")
    return int(v)


def _bool(v: str) -> bool:
    u = v.lower()
    if u in ("yes", "on", "true", "1", "enable"):
        return True
    if u in ("no", "off", "false", "0", "disable"):
        return False
    raise ValueError("expected yes or no")


def _hosts(v: str) -> list[str]:
    hosts = v.split(":")
    if not all(_HOST_RE.fullmatch(h) for h in hosts):
        raise ValueError("expected host names or IPv4 addresses separated by ':', like h1:h2")
    return hosts


_FLAGS: dict[str, tuple[str, bool]] = {
    "ro": ("read_only", True), "rw": ("read_only", False),
    "auto_unmount": ("auto_unmount", True), "allow_other": ("allow_other", True),
    "default_permissions": ("default_permissions", True),
}
_VALUED: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "volfile": ("volfile", _path, "FILE"),
    "log-file": ("log_file", _path, "FILE"),
    "log-level": ("log_level", _level, "LEVEL"),
    "attribute-timeout": ("attribute_timeout", _seconds, "SECONDS"),
    "entry-timeout": ("entry_timeout", _seconds, "SECONDS"),
    "negative-timeout": ("negative_timeout", _seconds, "SECONDS"),
    "volfile-server-port": ("volfile_server_port", _port, "PORT"),
    "backup-volfile-servers": ("backup_volfile_servers", _hosts, "HOST1:HOST2"),
    "kernel-writeback-cache": ("kernel_writeback_cache", _bool, "yes|no"),
    "write-behind": ("write_behind", _bool, "yes|no"),
}


def valid_options_text() -> str:
    """The accepted options, for error and help messages."""
    ours = [*_FLAGS, *(f"{k}={meta}" for k, (_, _, meta) in _VALUED.items())]
    return ", ".join(ours) + "; ignored: " + ", ".join(sorted(IGNORED_FLAGS)) + ", x-*"


def _split(opts: str) -> list[str]:
    """Split at commas outside double quotes, removing the quotes."""
    items: list[str] = []
    cur: list[str] = []
    quoted = False
    for c in opts:
        if c == '"':
            quoted = not quoted
        elif c == "," and not quoted:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    if quoted:
        raise MountOptionError(f"unbalanced double quote in mount options {opts!r}")
    items.append("".join(cur))
    return [i for i in items if i]


def parse_mount_options(opts: str | None) -> MountOptions:
    """Parse a ``-o`` string (None or empty gives the defaults).

    Raises ``MountOptionError`` for an unknown option, a flag given a value, an
    option missing its value, or a bad value.
    """
    out = MountOptions()
    for item in _split(opts or ""):
        key, eq, value = item.partition("=")
        if key.startswith("x-") or (eq and key in IGNORED_VALUED):
            out.ignored.append(item)
        elif key in _FLAGS or key in IGNORED_FLAGS:
            if eq:
                raise MountOptionError(f"mount option '{key}' takes no value (got {item!r})")
            if key in _FLAGS:
                attr, flag = _FLAGS[key]
                setattr(out, attr, flag)
            else:
                out.ignored.append(item)
        elif key in _VALUED:
            attr, check, meta = _VALUED[key]
            if not eq:
                raise MountOptionError(f"mount option '{key}' needs a value: {key}={meta}")
            try:
                setattr(out, attr, check(value))
            except ValueError as e:
                raise MountOptionError(f"invalid value {value!r} for {key}: {e}") from None
        else:
            raise MountOptionError(f"unknown mount option {key!r}; "
                                   f"valid options: {valid_options_text()}")
    return out


def _check_host(host: str, source: str) -> str:
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise MountOptionError(f"invalid IPv6 address {host!r} in mount source "
                                   f"{source!r}") from None
    if not _HOST_RE.fullmatch(host):
        raise MountOptionError(f"invalid host {host!r} in mount source {source!r}: "
                               "expected a host name, an IPv4 address or [IPv6]")
    return host


def parse_source(source: str) -> MountSource:
    """Parse ``host:/volume[/subdir]`` (``host:volume`` is accepted too).

    ``[::1]:/gvol0`` gives an IPv6 host. Subdirectory components may not be
    ``.``, ``..``, longer than 255 bytes, or hold NUL; repeated and trailing
    slashes are dropped.
    """
    form = "expected HOST:/VOLUME[/SUBDIR], like server1:/gvol0 or server1:/gvol0/app"
    if source.startswith("["):
        end = source.find("]:")
        if end < 0:
            raise MountOptionError(f"invalid mount source {source!r}: {form}")
        host, path = source[:end + 1], source[end + 2:]
    else:
        host, colon, path = source.partition(":")
        if not colon:
            raise MountOptionError(f"invalid mount source {source!r}: {form}")
    if not host:
        raise MountOptionError(f"mount source {source!r} has no host: {form}")
    host = _check_host(host, source)
    volume, _, sub = path.removeprefix("/").partition("/")
    if not volume:
        raise MountOptionError(f"mount source {source!r} has no volume name: {form}")
    if not VOLUME_NAME_RE.fullmatch(volume):
        raise MountOptionError(f"invalid volume name {volume!r} in mount source {source!r}: "
                               "letters, digits, '_' and '-' only")
    parts = [p for p in sub.split("/") if p]
    for p in parts:
        if p in (".", "..") or "\x00" in p or len(p.encode("utf-8", "surrogateescape")) > 255:
            raise MountOptionError(f"invalid subdirectory component {p!r} in mount source "
                                   f"{source!r}: no '.', '..', NUL or names over 255 bytes")
    return MountSource(host, volume, "/" + "/".join(parts) if parts else None)
