"""Volume options: the GlusterFS-style names an operator sets, and where they land.

``gluster volume set gvol0 cluster.quorum-type auto`` changes one option of the
volume; the volfile generator places it on the translators it belongs to, under
the translator's own option name (``cluster.quorum-type`` becomes ``quorum-type``
on every ``cluster/replicate``). This table is that mapping, and the one place
that says which volume options exist, what values they take and their default,
so ``volume set`` can refuse a bad one before any volfile is written.

Layers: ``client`` (each protocol/client), ``replicate``, ``distribute``, ``top``
(the client's debug/io-stats top), ``server``, ``posix`` and ``brick-top`` (the
brick graph), and ``performance/<name>`` for a performance translator. A
``performance.<name>`` switch (``xl_option`` None) decides whether that
translator is in the client graph at all. md-cache is on by default
(``performance.stat-prefetch``) with GlusterFS's ``group metadata-cache``
settings: bricks push cache invalidations, so clients may trust cached
metadata for ``performance.md-cache-timeout`` (600 s); with
``features.cache-invalidation`` off a client trusts it for 1 s unless told.
nl-cache (names known absent) is on by default too, for the same reason
(GlusterFS, whose bricks push nothing unless told, ships it off), and honours
``features.cache-invalidation`` the same way. write-behind is on by default.
The others stay off until the client implements them.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pyglfs.volfiles.model import VolfileError, parse_bool, parse_size

Check = Callable[[str], str]
_INT = re.compile(r"[+-]?[0-9]+")
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "NONE")


def _bool(v: str) -> str:
    return "on" if parse_bool(v) else "off"


def _int(lo: int | None = None, hi: int | None = None) -> Check:
    def check(v: str) -> str:
        s = v.strip()
        n = int(s) if _INT.fullmatch(s) else None
        if n is None or (lo is not None and n < lo) or (hi is not None and n > hi):
            rng = (f" in {lo}..{hi}" if lo is not None and hi is not None
                   else f" >= {lo}" if lo is not None else "")
            raise ValueError(f"expected an integer{rng}")
        return str(n)
    return check


def _float(lo: float = 0.0) -> Check:
    def check(v: str) -> str:
        try:
            f = float(v.strip())
        except ValueError:
            f = math.nan
        if not math.isfinite(f) or f < lo:
            raise ValueError(f"expected a number >= {lo:g}")
        return v.strip()
    return check


def _choice(*choices: str, upper: bool = False) -> Check:
    def check(v: str) -> str:
        s = v.strip().upper() if upper else v.strip().lower()
        if s not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return s
    return check


def _size(v: str) -> str:
    parse_size(v)
    return v.strip()


def _size_or_percent(v: str) -> str:
    s = v.strip()
    if s.endswith("%"):
        return _int(0, 100)(s[:-1]) + "%"
    try:
        return _size(s)
    except ValueError:
        raise ValueError("expected a percentage like 10% or a size like 1GB") from None


def _text(v: str) -> str:
    if not v.strip():
        raise ValueError("expected a non-empty value")
    return v.strip()


@dataclass(frozen=True)
class VolumeOption:
    """One settable volume option; ``check`` normalises a value or raises ValueError."""

    key: str
    layer: str
    xl_option: str | None
    check: Check
    default: str
    doc: str


def _opts(*rows: tuple[str, str, str | None, Check, str, str]) -> dict[str, VolumeOption]:
    return {r[0]: VolumeOption(*r) for r in rows}


RP = "replicate"
PERF_ORDER = ("write-behind", "read-ahead", "io-cache", "open-behind", "quick-read", "nl-cache",
              "md-cache")
_WB, _RA, _IOC, _MDC, _NLC = ("performance/write-behind", "performance/read-ahead",
                              "performance/io-cache", "performance/md-cache",
                              "performance/nl-cache")

VOLUME_OPTIONS: dict[str, VolumeOption] = _opts(
    ("network.ping-timeout", "client", "ping-timeout", _float(0.0), "10",
     "seconds without a reply before a brick is declared down"),
    ("network.frame-timeout", "client", "frame-timeout", _int(1), "1800",
     "seconds before an unanswered request fails"),
    ("client.ssl", "client", "transport.socket.ssl-enabled", _bool, "off",
     "TLS on client-to-brick connections"),
    ("client.local-read", "client", "local-read", _bool, "on",
     "a client reads the files of a brick on its own host itself, through a "
     "read-only descriptor the brick hands over (short-circuit read)"),
    ("client.local-rpc", "client", "local-rpc", _bool, "on",
     "a client speaks to a brick on its own host over a Unix stream socket "
     "instead of TCP loopback"),
    ("cluster.quorum-type", RP, "quorum-type", _choice("none", "auto", "fixed"), "auto",
     "how many bricks must be up for writes: auto = more than half (replica 2: the first)"),
    ("cluster.quorum-count", RP, "quorum-count", _int(1), "1",
     "bricks that must be up when quorum-type is fixed"),
    ("cluster.quorum-reads", RP, "quorum-reads", _bool, "off", "fail reads without quorum"),
    ("cluster.data-self-heal", RP, "data-self-heal", _bool, "on", "client heals file data"),
    ("cluster.metadata-self-heal", RP, "metadata-self-heal", _bool, "on",
     "client heals metadata"),
    ("cluster.entry-self-heal", RP, "entry-self-heal", _bool, "on",
     "client heals directory entries"),
    ("cluster.data-self-heal-algorithm", RP, "data-self-heal-algorithm",
     _choice("diff", "full"), "diff", "copy only differing blocks, or whole files"),
    ("cluster.favorite-child-policy", RP, "favorite-child-policy",
     _choice("none", "size", "ctime", "mtime", "majority"), "none",
     "resolve split-brain automatically by this rule"),
    ("cluster.eager-lock", RP, "eager-lock", _bool, "on",
     "keep inode locks while the only writer"),
    ("cluster.post-op-delay-secs", RP, "post-op-delay-secs", _int(0), "1",
     "seconds a post-op may be delayed for batching"),
    ("cluster.read-subvolume-index", RP, "read-subvolume-index", _int(-1), "-1",
     "brick to read from (-1: choose)"),
    ("cluster.choose-local", RP, "choose-local", _bool, "on",
     "read from a brick on the client's own host when it is a good copy "
     "(read-subvolume-index, when set, wins)"),
    ("cluster.self-heal-daemon", RP, "self-heal-daemon", _bool, "on",
     "the heal daemon crawls this volume"),
    ("cluster.heal-timeout", RP, "heal-timeout", _int(1), "600",
     "seconds between heal daemon crawls"),
    ("cluster.background-self-heal-count", RP, "background-self-heal-count", _int(0), "8",
     "heals a client runs in the background at once"),
    ("cluster.min-free-disk", "distribute", "min-free-disk", _size_or_percent, "10%",
     "avoid placing new files on bricks with less free space"),
    ("cluster.lookup-optimize", "distribute", "lookup-optimize", _bool, "on",
     "skip lookups on all bricks for missing names"),
    ("diagnostics.client-log-level", "top", "log-level", _choice(*LOG_LEVELS, upper=True),
     "INFO", "client log level"),
    ("diagnostics.latency-measurement", "top", "latency-measurement", _bool, "off",
     "record per-operation latencies"),
    ("diagnostics.count-fop-hits", "top", "count-fop-hits", _bool, "off",
     "count operations by type"),
    ("diagnostics.brick-log-level", "brick-top", "log-level", _choice(*LOG_LEVELS, upper=True),
     "INFO", "brick log level"),
    ("server.ssl", "server", "transport.socket.ssl-enabled", _bool, "off",
     "TLS on brick connections"),
    ("auth.allow", "server", "auth.addr.{brick}.allow", _text, "*",
     "comma-separated client addresses allowed to connect"),
    ("auth.reject", "server", "auth.addr.{brick}.reject", _text, "NONE",
     "comma-separated client addresses refused"),
    ("storage.reserve", "posix", "reserve", _int(0, 100), "1",
     "percent of the brick's disk kept free"),
    ("storage.health-check-interval", "posix", "health-check-interval", _int(0), "30",
     "seconds between brick health checks (0: off)"),
    ("storage.direct-writes", "posix", "direct-writes", _bool, "off",
     "writes of 256 KiB or more, aligned to 4 KiB in offset and length, skip the "
     "brick's page cache (O_DIRECT) and return once on the disk; other writes stay "
     "buffered; fsync is still needed for durability; the data is not cached in "
     "the brick afterwards. Applied when the brick (re)starts"),
    ("storage.drop-behind", "posix", "drop-behind", _bool, "on",
     "a file's sequential writes of 64 KiB or more start writeback every 8 MiB "
     "and drop the written pages 16 MiB behind from the brick's page cache, so a "
     "big file recycles a few MiB of memory instead of filling the cache; no "
     "change to what write or fsync guarantee. Applied when the brick (re)starts"),
    ("performance.write-behind", _WB, None, _bool, "on",
     "write-behind translator: a write returns once queued, close and fsync wait "
     "for the bricks (the mount option write-behind=no makes it write through)"),
    ("performance.write-behind-window-size", _WB, "cache-size", _size, "4MB",
     "bytes of writes queued per file"),
    ("performance.flush-behind", _WB, "flush-behind", _bool, "on",
     "close returns before the file's queued writes reach the bricks (a write "
     "that already failed is still reported by close; fsync waits; later "
     "failures are logged)"),
    ("performance.create-behind", _WB, "create-behind", _bool, "on",
     "a create in a directory whose lease the mount holds is answered at once and "
     "reaches the bricks moments later; other mounts' lookups, listings and entry "
     "changes there wait at the bricks until it has (O_EXCL stays exact); a brick's "
     "error shows at the file's next write, close or fsync"),
    ("performance.read-ahead", _RA, None, _bool, "off", "read-ahead translator"),
    ("performance.read-ahead-page-count", _RA, "page-count", _int(1, 16), "4",
     "pages read ahead"),
    ("performance.io-cache", _IOC, None, _bool, "off", "io-cache translator"),
    ("performance.cache-size", _IOC, "cache-size", _size, "32MB", "io-cache size"),
    ("performance.cache-refresh-timeout", _IOC, "cache-timeout", _int(0, 61), "1",
     "seconds cached data is trusted"),
    ("performance.open-behind", "performance/open-behind", None, _bool, "off",
     "open-behind translator"),
    ("performance.quick-read", "performance/quick-read", None, _bool, "off",
     "quick-read translator"),
    ("performance.stat-prefetch", _MDC, None, _bool, "on", "md-cache translator"),
    ("performance.md-cache-timeout", _MDC, "md-cache-timeout", _int(0, 600), "600",
     "seconds cached metadata is trusted (1 when cache-invalidation is off, unless set)"),
    ("features.cache-invalidation", _MDC, "cache-invalidation", _bool, "on",
     "clients rely on the invalidations bricks push (bricks always send them)"),
    ("performance.nl-cache", _NLC, None, _bool, "on",
     "nl-cache translator: lookups of names known absent are answered by the client"),
    ("performance.nl-cache-timeout", _NLC, "nl-cache-timeout", _int(0, 600), "600",
     "seconds known absences are trusted (1 when cache-invalidation is off, unless set)"),
    ("performance.nl-cache-limit", _NLC, "nl-cache-limit", _size, "10MB",
     "memory for names known absent or present, per client"),
)

PERF_SWITCHES: dict[str, str] = {o.layer: o.key for o in VOLUME_OPTIONS.values()
                                 if o.layer.startswith("performance/") and o.xl_option is None}


def validate_option(key: str, value: str) -> str:
    """The normalised value of volume option ``key``, or a ``VolfileError`` saying why not."""
    opt = VOLUME_OPTIONS.get(key)
    if opt is None:
        close = difflib.get_close_matches(key, VOLUME_OPTIONS, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise VolfileError(f"unknown volume option '{key}'{hint}")
    try:
        return opt.check(value)
    except ValueError as e:
        raise VolfileError(f"invalid value {value!r} for {key}: {e}") from None


def validate_options(options: Mapping[str, str]) -> dict[str, str]:
    """Every option validated and normalised, in the given order."""
    return {k: validate_option(k, v) for k, v in options.items()}


def layer_options(options: Mapping[str, str], layer: str, **fmt: str) -> dict[str, str]:
    """The translator options for ``layer`` from validated volume ``options``.

    ``fmt`` fills placeholders in translator option names (``{brick}``).
    """
    out: dict[str, str] = {}
    for key, value in options.items():
        opt = VOLUME_OPTIONS[key]
        if opt.layer == layer and opt.xl_option is not None:
            out[opt.xl_option.format(**fmt) if fmt else opt.xl_option] = value
    return out


def perf_enabled(options: Mapping[str, str]) -> list[str]:
    """Performance translator types switched on, bottom-up in GlusterFS order."""
    on = [f"performance/{n}" for n in PERF_ORDER]
    return [t for t in on if t in PERF_SWITCHES
            and options.get(PERF_SWITCHES[t], VOLUME_OPTIONS[PERF_SWITCHES[t]].default) == "on"]
