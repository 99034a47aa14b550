"""The shapes of protocol messages (see PROTOCOL.md), built and checked in one place.

Builders return plain dicts for ``FrameWriter.put``. Checkers take a decoded frame
and either return its parts or raise ProtocolError: a frame that is not a message
of the expected shape means the peer cannot be trusted to frame anything else.
"""

from __future__ import annotations

import errno as _errno
from typing import Any

from pyglfs.rpc.brickops import PROTOCOL_VERSION
from pyglfs.rpc.errors import ProtocolError, errno_name

ROLES = frozenset({"client", "mgmt", "heal", "bench"})
_MAX_IDENT = 1024


def hello(
    *, volume: str, client_id: str, role: str = "client", auth: dict[str, Any] | None = None,
    version: int = PROTOCOL_VERSION,
) -> dict[str, Any]:
    return {"hello": {
        "version": version, "role": role, "volume": volume, "client_id": client_id, "auth": auth,
    }}


def welcome(server: str, volume: str) -> dict[str, Any]:
    return {"welcome": {"version": PROTOCOL_VERSION, "server": server, "volume": volume}}


def refused(reason: str) -> dict[str, Any]:
    return {"refused": reason}


def request(rid: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"id": rid, "op": op, "args": args}


def reply_ok(rid: int, result: Any) -> dict[str, Any]:
    return {"id": rid, "ok": result}


def error_fields(exc: OSError) -> tuple[str, str]:
    """The errno name and message an OSError travels as (EIO when it has no errno)."""
    code = exc.errno if type(exc.errno) is int else _errno.EIO
    return errno_name(code), exc.strerror or str(exc)


def reply_error(rid: int, exc: OSError) -> dict[str, Any]:
    name, msg = error_fields(exc)
    return {"id": rid, "errno": name, "msg": msg}


def reply_errno(rid: int, name: str, msg: str) -> dict[str, Any]:
    return {"id": rid, "errno": name, "msg": msg}


def event(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"event": name, "args": args}


def _ident(hello_: dict[str, Any], key: str) -> str:
    v = hello_.get(key)
    if type(v) is not str or len(v) > _MAX_IDENT:
        raise ProtocolError(f"hello: {key!r} must be a string of at most {_MAX_IDENT} characters")
    return v


def check_hello(msg: Any) -> dict[str, Any]:
    """The hello's fields, checked for type; the version is left to the caller to judge."""
    if type(msg) is not dict or len(msg) != 1 or type(msg.get("hello")) is not dict:
        raise ProtocolError("first frame is not a hello")
    h: dict[str, Any] = msg["hello"]
    if type(h.get("version")) is not int:
        raise ProtocolError("hello: 'version' must be an integer")
    role = _ident(h, "role")
    if role not in ROLES:
        raise ProtocolError(f"hello: unknown role {role!r}")
    _ident(h, "volume")
    _ident(h, "client_id")
    auth = h.get("auth")
    if auth is not None and type(auth) is not dict:
        raise ProtocolError("hello: 'auth' must be a map or nil")
    return h


def check_welcome(msg: Any) -> dict[str, Any]:
    """The welcome's fields, or ProtocolError. Callers test for ``refused`` first."""
    if type(msg) is not dict or type(msg.get("welcome")) is not dict:
        raise ProtocolError(f"expected a welcome, got {describe(msg)}")
    w: dict[str, Any] = msg["welcome"]
    if w.get("version") != PROTOCOL_VERSION:
        raise ProtocolError(f"server speaks protocol version {w.get('version')!r}")
    return w


def describe(msg: Any) -> str:
    """A short, safe description of an unexpected message for a log line."""
    if type(msg) is dict:
        return "a map with keys " + ", ".join(sorted(repr(k) for k in msg)[:5])
    return f"a {type(msg).__name__}"
