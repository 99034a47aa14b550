"""Writing volfiles: graphs to text, and volume descriptions to graphs.

``generate(graph)`` is the inverse of ``parse``: ``parse(generate(g)) == g`` for
every graph whose top is its last volume (pass ``top=`` to ``parse`` otherwise;
the file format has no way to name the top).

``client_graph(spec)`` builds what the FUSE client mounts, bottom-up::

    <vol>-client-<i>      protocol/client, one per brick
    <vol>-replicate-<k>   cluster/replicate, one per replica set (replica > 1)
    <vol>-dht             cluster/distribute, when there is more than one set
    <vol>-<perf>          performance translators switched on in the options
    <vol>                 debug/io-stats, the top, named after the volume

and ``brick_graph(spec, i)`` what brick ``i`` serves: ``<vol>-posix``
(storage/posix) under the brick path (debug/io-stats) under ``<vol>-server``
(protocol/server), as glusterd names them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from pyglfs.volfiles.model import Graph, VolfileError, Xlator, check_token
from pyglfs.volfiles.options import (
    VOLUME_OPTIONS,
    layer_options,
    perf_enabled,
    validate_options,
)

VOLUME_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
CLIENT = "protocol/client"
_NEEDS_QUOTES = re.compile(r'\A\Z|\A\s|\s\Z|\A["#]|\s#|[\x00-\x1f\x7f-\x9f]')
_ESCAPE_RE = re.compile(r'[\\"\x00-\x1f\x7f-\x9f]')
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def quote_value(value: str) -> str:
    """``value`` as it must appear after an option key to parse back unchanged."""
    if not _NEEDS_QUOTES.search(value):
        return value
    body = _ESCAPE_RE.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}"), value)
    return f'"{body}"'


def generate(graph: Graph, header: str | None = None) -> str:
    """Volfile text for ``graph``, volumes in definition order, each option on its line.

    ``header`` becomes leading ``#`` comment lines.
    """
    out: list[str] = []
    if header:
        out.extend(f"# {h}".rstrip() for h in header.splitlines())
        out.append("")
    for xl in graph:
        out.append(f"volume {xl.name}")
        out.append(f"    type {xl.type}")
        out.extend(f"    option {k} {quote_value(v)}" for k, v in xl.options.items())
        if xl.subvolumes:
            out.append("    subvolumes " + " ".join(xl.subvolume_names))
        out.append("end-volume")
        out.append("")
    return "\n".join(out)


@dataclass(frozen=True)
class BrickSpec:
    """One brick: the directory ``path`` served by a brick daemon at ``host:port``."""

    host: str
    port: int
    path: str


@dataclass
class VolumeSpec:
    """What a volume is made of, as the management daemon stores it.

    Bricks ``i*replica_count .. (i+1)*replica_count-1`` form replica set ``i``.
    ``options`` uses volume option names (``cluster.quorum-type``; see
    ``VOLUME_OPTIONS``). An empty ``username`` means bricks ask for no
    credentials.
    """

    name: str
    volume_id: str
    replica_count: int
    bricks: list[BrickSpec]
    options: dict[str, str] = field(default_factory=dict)
    username: str = ""
    password: str = ""

    def validate(self) -> dict[str, str]:
        """Check the whole description; returns the normalised options."""
        if not isinstance(self.name, str) or not VOLUME_NAME_RE.fullmatch(self.name):
            raise VolfileError(f"invalid volume name {self.name!r}: use 1-64 letters, digits, "
                               "'_' or '-', not starting with '-'")
        try:
            uuid.UUID(str(self.volume_id))
        except ValueError:
            raise VolfileError(f"invalid volume id {self.volume_id!r}: expected a UUID") from None
        rc = self.replica_count
        if type(rc) is not int or rc < 1:
            raise VolfileError(f"invalid replica count {rc!r}: expected an integer >= 1")
        if not self.bricks or len(self.bricks) % rc:
            raise VolfileError(f"volume '{self.name}' has {len(self.bricks)} bricks: "
                               f"need a non-zero multiple of the replica count {rc}")
        seen: set[tuple[str, str]] = set()
        for i, b in enumerate(self.bricks):
            check_token(b.host, f"host of brick {i}")
            if type(b.port) is not int or not 1 <= b.port <= 65535:
                raise VolfileError(f"invalid port {b.port!r} of brick {i}: expected 1..65535")
            check_token(b.path, f"path of brick {i}")
            if not b.path.startswith("/"):
                raise VolfileError(f"path of brick {i} must be absolute: {b.path!r}")
            if (b.host, b.path) in seen:
                raise VolfileError(f"brick {b.host}:{b.path} is listed twice")
            seen.add((b.host, b.path))
        if bool(self.username) != bool(self.password):
            raise VolfileError("username and password go together: give both or neither")
        if self.username:
            check_token(self.username, "username")
            check_token(self.password, "password")
        return validate_options(self.options)


def client_graph(spec: VolumeSpec) -> Graph:
    """The FUSE client's translator graph for ``spec`` (see the module docstring)."""
    opts = spec.validate()
    v = spec.name
    client_opts = layer_options(opts, "client")
    client_opts.setdefault("ping-timeout", VOLUME_OPTIONS["network.ping-timeout"].default)
    xls: list[Xlator] = []
    clients: list[Xlator] = []
    for i, b in enumerate(spec.bricks):
        o = {"remote-host": b.host, "remote-port": str(b.port), "remote-subvolume": b.path,
             "transport-type": "tcp"}
        if spec.username:
            o |= {"username": spec.username, "password": spec.password}
        clients.append(Xlator(f"{v}-client-{i}", CLIENT, o | client_opts))
    xls += clients
    rc = spec.replica_count
    sets: list[Xlator] = clients
    if rc > 1:
        sets = []
        for k in range(len(clients) // rc):
            members = clients[k * rc:(k + 1) * rc]
            o = {"afr-pending-xattr": ",".join(c.name for c in members)}
            sets.append(Xlator(f"{v}-replicate-{k}", "cluster/replicate",
                               o | layer_options(opts, "replicate"), members))
        xls += sets
    below = sets[0]
    if len(sets) > 1:
        below = Xlator(f"{v}-dht", "cluster/distribute", layer_options(opts, "distribute"), sets)
        xls.append(below)
    for t in perf_enabled(opts):
        below = Xlator(f"{v}-{t.split('/', 1)[1]}", t, _perf_options(opts, t), [below])
        xls.append(below)
    xls.append(Xlator(v, "debug/io-stats", layer_options(opts, "top"), [below]))
    return Graph.from_xlators(xls)


# Caches whose timeout follows features.cache-invalidation: type -> timeout option.
_TIMED_CACHES = {"performance/md-cache": "md-cache-timeout",
                 "performance/nl-cache": "nl-cache-timeout"}


def _perf_options(opts: Mapping[str, str], t: str) -> dict[str, str]:
    """A performance translator's options; a cache's ``cache-invalidation``
    and timeout are always written out, so the volfile says how long the
    client trusts it."""
    o = layer_options(opts, t)
    timeout_key = _TIMED_CACHES.get(t)
    if timeout_key is not None:
        inval = opts.get("features.cache-invalidation",
                         VOLUME_OPTIONS["features.cache-invalidation"].default)
        o.setdefault("cache-invalidation", inval)
        o.setdefault(timeout_key, VOLUME_OPTIONS[f"performance.{timeout_key}"].default
                     if inval == "on" else "1")
    return o


def brick_graph(spec: VolumeSpec, index: int) -> Graph:
    """The translator graph brick ``index`` of ``spec`` serves."""
    opts = spec.validate()
    if not 0 <= index < len(spec.bricks):
        raise VolfileError(f"volume '{spec.name}' has no brick {index}")
    b, v = spec.bricks[index], spec.name
    posix = Xlator(f"{v}-posix", "storage/posix",
                   {"directory": b.path, "volume-id": str(uuid.UUID(str(spec.volume_id)))}
                   | layer_options(opts, "posix"))
    stats = Xlator(b.path, "debug/io-stats", layer_options(opts, "brick-top"), [posix])
    o = {"transport-type": "tcp", "transport.socket.bind-address": b.host,
         "transport.socket.listen-port": str(b.port), "auth-path": b.path}
    if spec.username:
        o[f"auth.login.{b.path}.allow"] = spec.username
        o[f"auth.login.{spec.username}.password"] = spec.password
    server_opts = {"auth.allow": VOLUME_OPTIONS["auth.allow"].default} | opts
    o |= layer_options(server_opts, "server", brick=b.path)
    server = Xlator(f"{v}-server", "protocol/server", o, [stats])
    return Graph.from_xlators([posix, stats, server])


BRICK_FLAGS = {"storage.direct-writes": "direct-writes", "storage.drop-behind": "drop-behind"}


def brick_flags(options: Mapping[str, str]) -> list[str]:
    """The pyglfs-brickd flags for a volume's ``options`` (validated, as
    ``VolumeSpec.validate`` returns them): the brick daemon reads no volfile, so
    the options it applies itself reach it on its command line, each one
    explicit (an unset option gives its default)."""
    out = []
    for key, flag in BRICK_FLAGS.items():
        on = options.get(key, VOLUME_OPTIONS[key].default) == "on"
        out.append(f"--{flag}" if on else f"--no-{flag}")
    return out


def client_volfile(spec: VolumeSpec) -> str:
    return generate(client_graph(spec),
                    header=f"client volfile of volume {spec.name}, generated by pyglfs")


def brick_volfile(spec: VolumeSpec, index: int) -> str:
    b = spec.bricks[index] if 0 <= index < len(spec.bricks) else None
    where = f" ({b.host}:{b.path})" if b else ""
    return generate(brick_graph(spec, index),
                    header=f"brick {index}{where} of volume {spec.name}, generated by pyglfs")


def with_options(graph: Graph, changes: Mapping[str, Mapping[str, str]]) -> Graph:
    """A copy of ``graph`` with options set per volume name: ``{"v-client-0": {...}}``."""
    new = graph.copy()
    for name, opts in changes.items():
        xl = new.get(name)
        if xl is None:
            raise VolfileError(f"no volume '{name}' in the graph")
        for k, val in opts.items():
            check_token(k, "option name")
            xl.options[k] = str(val)
    return new


def with_ports(graph: Graph, ports: Mapping[str | int, int]) -> Graph:
    """A copy with ``remote-port`` of protocol/client volumes replaced.

    Keys are a protocol/client volume's name or its index among them in
    definition order (brick order in generated volfiles), so a test can point
    an example volfile at bricks it started on ephemeral ports.
    """
    clients = graph.by_type(CLIENT)
    changes: dict[str, dict[str, str]] = {}
    for key, port in ports.items():
        if isinstance(key, int):
            if not 0 <= key < len(clients):
                raise VolfileError(f"no protocol/client number {key}: "
                                   f"the graph has {len(clients)}")
            name = clients[key].name
        else:
            xl = graph.get(key)
            if xl is None or xl.type != CLIENT:
                raise VolfileError(f"no protocol/client volume '{key}' in the graph")
            name = key
        if type(port) is not int or not 1 <= port <= 65535:
            raise VolfileError(f"invalid port {port!r} for '{name}': expected 1..65535")
        changes[name] = {"remote-port": str(port)}
    return with_options(graph, changes)
