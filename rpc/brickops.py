"""The brick operations: names, argument schemas and the iatt wire shape.

This table is the contract between the brick server and the client's protocol
layer. The brick validates every request against it at the boundary, before any
storage code runs, so storage code may trust types and sizes (not names: the
brick checks those itself, because confinement is its job).

Conventions
- gfid: 16 raw bytes. The root directory's gfid is ``ROOT_GFID``.
- name: one path component as raw bytes (the brick refuses ``/``, NUL, ``.``,
  ``..``, over 255 bytes, and ``.pyglfs`` in the root).
- Times are integer nanoseconds since the epoch.
- An inode's attributes travel as an *iatt*: a list in ``IATT_FIELDS`` order.
- Modifying ops accept ``xattrop``: ``{xattr name: 12-byte delta}``, applied
  atomically (three big-endian signed 32-bit counter additions) to the changed
  inode *before* the change: the parent directory for entry ops (create, mkdir,
  mknod, symlink, link, unlink, rmdir, rename: both parents), the inode itself
  for data and metadata ops. This is how replicate sets its dirty mark in the
  same round trip as the change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

PROTOCOL_VERSION = 1
ROOT_GFID = b"\x00" * 15 + b"\x01"
GFID_LEN = 16
NAME_MAX = 255
MAX_IO = 16 * 1024 * 1024

# Internal xattrs. Clients may not set or remove them (EPERM) and listxattr hides
# them; changelog counters change only through ``xattrop``.
GFID_XATTR = "trusted.gfid"
AFR_PREFIX = "trusted.afr."
AFR_DIRTY = "trusted.afr.dirty"
VOLUME_ID_XATTR = "trusted.pyglfs.volume-id"
INTERNAL_XATTR_PREFIXES = ("trusted.gfid", "trusted.afr.", "trusted.pyglfs.")


def afr_xattr(volume: str, brick_index: int) -> str:
    """The changelog xattr in which a brick blames brick ``brick_index``."""
    return f"{AFR_PREFIX}{volume}-client-{brick_index}"


IATT_FIELDS = (
    "gfid", "ino", "mode", "nlink", "uid", "gid", "rdev", "size", "blocks",
    "atime_ns", "mtime_ns", "ctime_ns",
)


class Iatt(NamedTuple):
    """Attributes of one inode as a brick reports them."""

    gfid: bytes
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def from_wire(cls, v: list[Any]) -> Iatt:
        return cls(*v)

    def to_wire(self) -> list[Any]:
        return list(self)


class ArgError(ValueError):
    """A request's arguments do not fit the op's schema (becomes EINVAL)."""


Check = Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_uint(v: Any) -> bool:
    return type(v) is int and v >= 0


def _is_bool(v: Any) -> bool:
    return type(v) is bool


def _is_gfid(v: Any) -> bool:
    return type(v) is bytes and len(v) == GFID_LEN


def _is_name(v: Any) -> bool:
    return type(v) is bytes and 0 < len(v) <= 4096


def _is_bytes(v: Any) -> bool:
    return type(v) is bytes and len(v) <= MAX_IO


def _is_data(v: Any) -> bool:
    # A write's data may come as a view of the received frame (rpc/framing.py).
    return (type(v) is bytes or type(v) is memoryview) and len(v) <= MAX_IO


def _is_str(v: Any) -> bool:
    return type(v) is str and len(v) <= 4096


def _is_xattrop(v: Any) -> bool:
    if type(v) is not dict or len(v) > 16:
        return False
    for k, d in v.items():
        if type(k) is not str or type(d) is not bytes or len(d) != 12:
            return False
    return True


def _one_of(*allowed: str) -> Check:
    def check(v: Any) -> bool:
        return v in allowed

    return check


def _opt(check: Check) -> Check:
    def optional(v: Any) -> bool:
        return v is None or check(v)

    optional.optional = True  # type: ignore[attr-defined]
    optional.inner = check  # type: ignore[attr-defined]
    return optional


_LOCK_TYPE = _one_of("rd", "wr", "un")


def _is_new_lock(v: Any) -> bool:
    return (type(v) is dict and len(v) == 2 and _is_str(v.get("domain"))
            and type(v.get("owner")) is bytes and len(v["owner"]) <= 1024)


_XOP = _opt(_is_xattrop)

# op -> {arg: check}. Args whose check is _opt(...) may be absent.
#
# Results (the reply's "ok" value):
#   null, flush, release, fsync, unlink, rmdir, setxattr, removexattr -> {}
#   lookup, lookup_gfid -> {"iatt": iatt, "xattrs": {afr changelog xattr: bytes}}
#   stat, setattr, create, mkdir, mknod, symlink, link, rename, open,
#   fallocate -> {"iatt": iatt}   (rename: the moved inode; create with "lock"
#       also {"locked": bool})
#   entry ops also return the parent's attributes after the change:
#       create, mkdir, mknod, symlink, link -> also {"postparent": iatt};
#       unlink, rmdir -> {"postparent": iatt}; rename -> also
#       {"postoldparent": iatt, "postnewparent": iatt}
#   write -> {"iatt": iatt}   (post-write attributes)
#   read -> {"data": bytes}   (short at end of file)
#   readlink -> {"target": bytes}
#   readdir -> {"entries": [[name, cookie, d_type, iatt | None], ...], "eof": bool}
#       the cookie of an entry resumes the listing after it; iatt only when plus
#   getxattr -> {"value": bytes}; listxattr -> {"names": [str]}
#   xattrop -> {"xattrs": {name: new 12-byte value}}
#   statfs -> {"bsize", "frsize", "blocks", "bfree", "bavail", "files", "ffree",
#              "namemax"}
#   inodelk, entrylk -> {}  (EAGAIN when not blocking and held elsewhere)
#   lk -> {} for setlk/setlkw; getlk -> {"type": "un"} or the conflicting lock
#       {"type", "start", "len", "pid", "owner"}
#   checksum -> {"sums": [xxh3_64 int per block]}
#   index_list -> {"gfids": [gfid], "cookie": int, "eof": bool}
#   compound -> {"results": [result of each sub-op that ran, in order]}, plus
#       "error": [index, errno name, message] when sub-op ``index`` failed (the
#       sub-ops after it did not run); see ``validate_compound``
#
# Events pushed by the brick: "lock-contention" {"gfid", "domain", "owner"} to
# the holder of an inode or entry lock (gfid: the directory's) another client is
# waiting for; "cache-invalidation" {"gfids", "entries"} or {"all": True} to the
# other clients after a change (brickd/upcall.py).
LEASE_DOMAIN = "pyglfs.dir-lease"
"""The inode-lock domain of directory leases: a client holding a whole-range "wr"
inodelk on a directory's gfid in this domain holds its lease. While it does, a
brick holds other connections' requests that read or change that directory's
entries (lookup of a name in it, readdir of it, entry ops in it) until the lease
is given back; waiting for it is what tells the holder ("lock-contention")."""

OPS: dict[str, dict[str, Check]] = {
    "null": {},
    "statfs": {},
    "lookup": {"pgfid": _is_gfid, "name": _is_name},
    "lookup_gfid": {"gfid": _is_gfid},
    "stat": {"gfid": _is_gfid},
    "setattr": {
        "gfid": _is_gfid, "mode": _opt(_is_uint), "uid": _opt(_is_uint), "gid": _opt(_is_uint),
        "size": _opt(_is_uint), "atime_ns": _opt(_is_int), "mtime_ns": _opt(_is_int),
        "atime_now": _opt(_is_bool), "mtime_now": _opt(_is_bool), "xattrop": _XOP,
    },
    "create": {
        "pgfid": _is_gfid, "name": _is_name, "gfid": _is_gfid, "mode": _is_uint,
        "uid": _is_uint, "gid": _is_uint, "flags": _opt(_is_uint), "xattrop": _XOP,
        # {"domain", "owner"}: also take the new file's whole-file "wr" inode lock
        # for that owner (non-blocking); the reply then says {"locked": bool}.
        "lock": _opt(_is_new_lock),
    },
    "mkdir": {
        "pgfid": _is_gfid, "name": _is_name, "gfid": _is_gfid, "mode": _is_uint,
        "uid": _is_uint, "gid": _is_uint, "xattrop": _XOP,
    },
    "mknod": {
        "pgfid": _is_gfid, "name": _is_name, "gfid": _is_gfid, "mode": _is_uint,
        "rdev": _is_uint, "uid": _is_uint, "gid": _is_uint, "xattrop": _XOP,
    },
    "symlink": {
        "pgfid": _is_gfid, "name": _is_name, "gfid": _is_gfid, "target": _is_name,
        "uid": _is_uint, "gid": _is_uint, "xattrop": _XOP,
    },
    "link": {"gfid": _is_gfid, "pgfid": _is_gfid, "name": _is_name, "xattrop": _XOP},
    "unlink": {"pgfid": _is_gfid, "name": _is_name, "xattrop": _XOP},
    "rmdir": {"pgfid": _is_gfid, "name": _is_name, "xattrop": _XOP},
    "rename": {
        "old_pgfid": _is_gfid, "old_name": _is_name, "new_pgfid": _is_gfid,
        "new_name": _is_name, "flags": _opt(_is_uint), "xattrop": _XOP,
    },
    "readlink": {"gfid": _is_gfid},
    "open": {"gfid": _is_gfid, "flags": _is_uint},
    "release": {"gfid": _is_gfid},
    "flush": {"gfid": _is_gfid},
    "fsync": {"gfid": _is_gfid, "datasync": _opt(_is_bool)},
    "read": {"gfid": _is_gfid, "offset": _is_uint, "size": _is_uint},
    "write": {"gfid": _is_gfid, "offset": _is_uint, "data": _is_data, "xattrop": _XOP},
    "fallocate": {
        "gfid": _is_gfid, "mode": _is_uint, "offset": _is_uint, "length": _is_uint,
        "xattrop": _XOP,
    },
    "readdir": {
        "gfid": _is_gfid, "cookie": _is_uint, "count": _is_uint, "plus": _opt(_is_bool),
    },
    "getxattr": {"gfid": _is_gfid, "name": _is_str},
    "listxattr": {"gfid": _is_gfid},
    "setxattr": {
        "gfid": _is_gfid, "name": _is_str, "value": _is_bytes, "flags": _opt(_is_uint),
        "xattrop": _XOP,
    },
    "removexattr": {"gfid": _is_gfid, "name": _is_str, "xattrop": _XOP},
    "xattrop": {"gfid": _is_gfid, "xattrop": _is_xattrop},
    "inodelk": {
        "gfid": _is_gfid, "domain": _is_str, "type": _LOCK_TYPE, "start": _is_uint,
        "len": _is_uint, "owner": _is_bytes, "block": _opt(_is_bool),
    },
    "entrylk": {
        "pgfid": _is_gfid, "name": _opt(_is_name), "domain": _is_str, "type": _LOCK_TYPE,
        "owner": _is_bytes, "block": _opt(_is_bool),
    },
    "lk": {
        "gfid": _is_gfid, "cmd": _one_of("getlk", "setlk", "setlkw"), "type": _LOCK_TYPE,
        "start": _is_uint, "len": _is_uint, "pid": _is_int, "owner": _is_bytes,
    },
    "checksum": {"gfid": _is_gfid, "offset": _is_uint, "size": _is_uint, "block": _is_uint},
    "index_list": {"cookie": _opt(_is_uint), "count": _opt(_is_uint)},
    # [[op, args], ...]: sub-ops run in order, as separate requests would
    # (validate_compound checks each before any runs).
    "compound": {"ops": lambda v: type(v) is list and 0 < len(v) <= COMPOUND_MAX},
}

COMPOUND_MAX = 64
COMPOUND_OPS = frozenset({
    "stat", "setattr", "open", "release", "flush", "fsync", "write", "fallocate",
    "getxattr", "setxattr", "removexattr", "xattrop", "inodelk", "entrylk",
})
"""Ops a compound may carry: inode ops and replicate's own locks. Entry ops,
application locks (``lk``), listings and nested compounds are refused."""

MODIFYING_OPS = frozenset(
    op for op, schema in OPS.items() if "xattrop" in schema
)


# Checks whose test the compiled validators write out inline instead of calling
# the function (a call per argument was most of a request's validation). Each
# expression must accept exactly what its function accepts; a check missing here
# is called.
_INLINE: dict[Check, str] = {
    _is_int: "type(v) is int",
    _is_uint: "type(v) is int and v >= 0",
    _is_bool: "type(v) is bool",
    _is_gfid: f"type(v) is bytes and len(v) == {GFID_LEN}",
    _is_name: "type(v) is bytes and 0 < len(v) <= 4096",
    _is_str: "type(v) is str and len(v) <= 4096",
    _is_bytes: f"type(v) is bytes and len(v) <= {MAX_IO}",
    _is_data: f"(type(v) is bytes or type(v) is memoryview) and len(v) <= {MAX_IO}",
    _LOCK_TYPE: "v in ('rd', 'wr', 'un')",
}


def _compile(op: str, schema: dict[str, Check]) -> Callable[[Any], dict[str, Any]]:
    """The validator of one op: ``validate`` for that op, written out as one
    function (built once, at import) that tests each argument in line."""
    env: dict[str, Any] = {"ArgError": ArgError, "allowed": frozenset(schema)}
    req = [(k, c) for k, c in schema.items() if not getattr(c, "optional", False)]
    opt = [(k, c.inner) for k, c in schema.items()  # type: ignore[attr-defined]
           if getattr(c, "optional", False)]

    def test(i: int, check: Check) -> str:
        expr = _INLINE.get(check)
        if expr is None:
            env[f"c{i}"] = check
            expr = f"c{i}(v)"
        return expr

    lines = [
        "def check(args):",
        "    if type(args) is not dict:",
        f"        raise ArgError({op + ': arguments must be a map'!r})",
    ]
    # ``args`` itself stands for "absent": no value in a decoded map can be it.
    for i, (key, check) in enumerate(req):
        lines += [
            f"    v = args.get({key!r}, args)",
            "    if v is args:",
            f"        raise ArgError({f'{op}: missing argument {key!r}'!r})",
            f"    if not ({test(i, check)}):",
            f"        raise ArgError({f'{op}: bad value for {key!r}'!r})",
        ]
    # All required args are there: any other arg makes the map longer.
    lines += [
        f"    if len(args) != {len(req)}:",
        "        if not allowed.issuperset(args):",
        "            k = next(k for k in args if k not in allowed)",
        f"            raise ArgError({op + ': unknown argument '!r} + repr(k))",
    ]
    if opt:
        for i, (key, check) in enumerate(opt, len(req)):
            lines += [
                f"        v = args.get({key!r})",
                f"        if v is not None and not ({test(i, check)}):",
                f"            raise ArgError({f'{op}: bad value for {key!r}'!r})",
            ]
    lines.append("    return args")
    exec("\n".join(lines), env)  # noqa: S102 - source built above from the OPS table
    fn: Callable[[Any], dict[str, Any]] = env["check"]
    fn.__qualname__ = fn.__name__ = f"validate_{op}"
    return fn


class _Validators(dict[str, Callable[[Any], dict[str, Any]]]):
    """Compiles an op's validator the first time it is asked for (compiling all
    of them costs an import ~15 ms, which processes that never validate need
    not pay); KeyError for an op that is not in OPS."""

    def __missing__(self, op: str) -> Callable[[Any], dict[str, Any]]:
        fn = self[op] = _compile(op, OPS[op])
        return fn


VALIDATORS: dict[str, Callable[[Any], dict[str, Any]]] = _Validators()
"""op -> its validator (``validate`` for that op alone): the brick's dispatch
looks one up per request."""


def validate(op: Any, args: Any) -> dict[str, Any]:
    """Check ``args`` against ``op``'s schema; unknown args are refused too, and
    an optional arg may be given as None.

    Raises KeyError for an unknown op and ArgError for bad arguments.
    """
    return VALIDATORS[op](args)


def validate_compound(args: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The sub-ops of a ``compound`` whose ``args`` passed ``validate``, each
    checked against its own schema; ArgError names the first bad one.

    A compound never waits on another client: a lock sub-op with ``block`` set
    is refused, as is any op outside ``COMPOUND_OPS``.
    """
    out: list[tuple[str, dict[str, Any]]] = []
    validators = VALIDATORS
    for i, item in enumerate(args["ops"]):
        if type(item) is not list or len(item) != 2 or type(item[0]) is not str:
            raise ArgError(f"compound: sub-op {i} is not [op, args]")
        op, sub = item
        if op not in COMPOUND_OPS:
            raise ArgError(f"compound: sub-op {i}: {op!r} may not be part of a compound")
        try:
            validators[op](sub)
        except ArgError as e:
            raise ArgError(f"compound: sub-op {i}: {e}") from None
        if sub.get("block"):
            raise ArgError(f"compound: sub-op {i}: a compound never waits for a lock")
        out.append((op, sub))
    return out
