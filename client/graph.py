"""Build the client's layer graph from a parsed client volfile.

Translator types map to layers:

- ``protocol/client`` -> ``ProtocolClient`` (``remote-host``, ``remote-port``,
  ``remote-subvolume``, ``username``/``password``, ``ping-timeout``,
  ``local-read``, ``local-rpc``);
- ``cluster/replicate`` -> ``Replicate`` (``afr-pending-xattr``, ``quorum-type``,
  ``quorum-count``, ``post-op-delay-secs``, ``eager-lock``,
  ``read-subvolume-index``, ``choose-local``);
- ``performance/md-cache`` -> ``MdCache`` (``md-cache-timeout``,
  ``cache-invalidation``; see ``pyglfs.client.mdcache``);
- ``performance/nl-cache`` -> ``NlCache`` (``nl-cache-timeout``,
  ``nl-cache-limit`` in bytes, ``cache-invalidation``; see
  ``pyglfs.client.nlcache``);
- ``performance/write-behind`` -> ``WriteBehind`` (``cache-size``: the bytes
  queued per file, GlusterFS's ``performance.write-behind-window-size``);
  ``write_behind=False`` (the mount option ``write-behind=no``) builds it as a
  write-through layer instead. Under it, ``CreateBehind``
  (``pyglfs.client.createbehind``; option ``create-behind``, on by default):
  not with write-through, nor when a name cache of the graph (md-cache,
  nl-cache) has ``cache-invalidation`` off, since an early create relies on
  the kernel's lookup before it being current. With ``wb_group`` (a mount passes one list for
  all its graphs) every write-behind layer of the mount waits for the writes
  the others still have queued, so a graph switch never lets a close, fsync or
  read overtake a write queued in the graph being retired; a graph without a
  write-behind translator then gets a write-through one at its top for this;
- any other type with one subvolume *above* the first of those (``debug/io-stats``,
  performance translators we do not implement yet) -> a plain pass-through
  ``Layer``, since dropping a cache or a statistics layer changes no result;
- any other type below that point, and any other ``cluster/`` or ``protocol/``
  type anywhere (``cluster/distribute`` today), is refused with a
  ``VolfileError`` naming the volume: skipping it would change where data goes.

The handshake's volume name is the graph's name (its top volume), as the
generator writes client volfiles.
"""

from __future__ import annotations

import logging

from pyglfs.client.createbehind import CreateBehind
from pyglfs.client.layer import Layer
from pyglfs.client.mdcache import MdCache
from pyglfs.client.nlcache import DEFAULT_LIMIT as NLCACHE_LIMIT
from pyglfs.client.nlcache import NlCache
from pyglfs.client.protocol import ProtocolClient
from pyglfs.client.replicate import Replicate
from pyglfs.client.replicate.quorum import QUORUM_TYPES
from pyglfs.client.writebehind import DEFAULT_WINDOW, WriteBehind
from pyglfs.volfiles.model import Graph, VolfileError, Xlator

log = logging.getLogger(__name__)

CLIENT = "protocol/client"
REPLICATE = "cluster/replicate"
MDCACHE = "performance/md-cache"
NLCACHE = "performance/nl-cache"
WRITE_BEHIND = "performance/write-behind"
DEFAULT_PORT = 49750
# md-cache's and nl-cache's timeout when bricks push invalidations and the
# volfile names none.
MDCACHE_TIMEOUT_INVALIDATED = 600.0


def build_graph(graph: Graph, *, client_id: str, volume: str | None = None,
                call_timeout: float | None = None, write_behind: bool = True,
                wb_group: list[WriteBehind] | None = None) -> Layer:
    """The layers for ``graph``, top first, wired but not started."""
    builder = _Builder(graph, client_id, volume or graph.name, call_timeout,
                       write_behind, wb_group)
    top = builder.build(graph.top, pass_through_ok=True)
    if wb_group is not None and not builder.write_behinds:
        top = WriteBehind(f"{graph.name}-write-through", top, queue=False, group=wb_group)
    return top


class _Builder:
    def __init__(self, graph: Graph, client_id: str, volume: str,
                 call_timeout: float | None, write_behind: bool,
                 wb_group: list[WriteBehind] | None) -> None:
        self.graph = graph
        self.client_id = client_id
        self.volume = volume
        self.call_timeout = call_timeout
        self.write_behind = write_behind
        self.wb_group = wb_group
        self.write_behinds: list[WriteBehind] = []
        self.used: set[str] = set()

    def error(self, xl: Xlator, msg: str) -> VolfileError:
        return VolfileError(f"volume '{xl.name}': {msg}", source=xl.source, line=xl.line)

    def build(self, xl: Xlator, pass_through_ok: bool) -> Layer:
        if xl.name in self.used:
            raise self.error(xl, "is a subvolume of more than one translator, which this "
                                 "client does not support")
        self.used.add(xl.name)
        if xl.type == CLIENT:
            if xl.subvolumes:
                raise self.error(xl, "protocol/client takes no subvolumes")
            return self.protocol_client(xl)
        if xl.type == REPLICATE:
            children = [self.build(s, False) for s in xl.subvolumes]
            return self.replicate(xl, children)
        if xl.type == MDCACHE and pass_through_ok and len(xl.subvolumes) == 1:
            return self.mdcache(xl, self.build(xl.subvolumes[0], True))
        if xl.type == NLCACHE and pass_through_ok and len(xl.subvolumes) == 1:
            return self.nlcache(xl, self.build(xl.subvolumes[0], True))
        if xl.type == WRITE_BEHIND and pass_through_ok and len(xl.subvolumes) == 1:
            return self.writebehind(xl, self.build(xl.subvolumes[0], True))
        if pass_through_ok and not xl.type.startswith(("cluster/", "protocol/")):
            if len(xl.subvolumes) != 1:
                raise self.error(xl, f"type {xl.type} is not supported by this client "
                                     "(only one-subvolume pass-through at the top)")
            log.debug("volume %s: type %s served as a pass-through layer", xl.name, xl.type)
            return Layer(xl.name, [self.build(xl.subvolumes[0], True)])
        raise self.error(xl, f"type {xl.type} is not supported by this client below "
                             "cluster/replicate or protocol/client layers")

    def protocol_client(self, xl: Xlator) -> ProtocolClient:
        host = xl.opt("remote-host")
        brick = xl.opt("remote-subvolume")
        if not host or not brick:
            raise self.error(xl, "protocol/client needs remote-host and remote-subvolume")
        return ProtocolClient(
            xl.name, host=host,
            port=xl.opt_int("remote-port", DEFAULT_PORT, min=1, max=65535),
            volume=self.volume, brick_path=brick, client_id=self.client_id,
            username=xl.opt("username"), password=xl.opt("password"),
            ping_timeout=xl.opt_float("ping-timeout", 10.0, min=0.1),
            call_timeout=self.call_timeout, local_read=xl.opt_bool("local-read", True),
            local_rpc=xl.opt_bool("local-rpc", True))

    def replicate(self, xl: Xlator, children: list[Layer]) -> Replicate:
        if not children:
            raise self.error(xl, "cluster/replicate needs subvolumes")
        names = xl.opt_list("afr-pending-xattr", [c.name for c in children])
        if len(names) != len(children):
            raise self.error(xl, f"afr-pending-xattr names {len(names)} bricks but there are "
                                 f"{len(children)} subvolumes")
        qtype = xl.opt_choice("quorum-type", QUORUM_TYPES, "auto")
        count = xl.opt_int("quorum-count", 1, min=1)
        if qtype == "fixed" and count > len(children):
            raise self.error(xl, f"quorum-count {count} is more than the {len(children)} "
                                 "subvolumes")
        rep = Replicate(
            xl.name, children, pending_xattrs=names, quorum_type=qtype, quorum_count=count,
            post_op_delay=xl.opt_float("post-op-delay-secs", 1.0, min=0.0),
            eager_lock=xl.opt_bool("eager-lock", True),
            read_child=xl.opt_int("read-subvolume-index", -1, min=-1,
                                  max=len(children) - 1))
        rep.inodes.choose_local = xl.opt_bool("choose-local", True)
        return rep

    def mdcache(self, xl: Xlator, child: Layer) -> MdCache:
        invalidation, timeout = _coherence(xl, "md-cache-timeout")
        return MdCache(xl.name, child, invalidation=invalidation, timeout=timeout)

    def nlcache(self, xl: Xlator, child: Layer) -> NlCache:
        invalidation, timeout = _coherence(xl, "nl-cache-timeout")
        return NlCache(xl.name, child, invalidation=invalidation, timeout=timeout,
                       limit=xl.opt_size("nl-cache-limit", NLCACHE_LIMIT))

    def writebehind(self, xl: Xlator, child: Layer) -> WriteBehind:
        if (xl.opt_bool("create-behind", True) and self.write_behind
                and all(c.opt_bool("cache-invalidation", False)
                        for c in self.graph.xlators.values() if c.type in (MDCACHE, NLCACHE))):
            cb = CreateBehind(f"{xl.name}-create-behind", child)
            for other in self.wb_group or ():
                if isinstance(other.child, CreateBehind):  # a graph being replaced
                    cb.share_pending(other.child)
                    break
            child = cb
        wb = WriteBehind(xl.name, child, window=xl.opt_size("cache-size", DEFAULT_WINDOW),
                         queue=self.write_behind, group=self.wb_group,
                         flush_behind=xl.opt_bool("flush-behind", True))
        self.write_behinds.append(wb)
        return wb


def _coherence(xl: Xlator, timeout_key: str) -> tuple[bool, float]:
    """A cache's ``cache-invalidation`` and its timeout, which defaults to
    ``MDCACHE_TIMEOUT_INVALIDATED`` when bricks push invalidations, else 1 s."""
    invalidation = xl.opt_bool("cache-invalidation", False)
    default = MDCACHE_TIMEOUT_INVALIDATED if invalidation else 1.0
    return invalidation, xl.opt_float(timeout_key, default, min=0.0)
