"""Cluster-wide options (`volume set all KEY VALUE`), the first transaction user.

Every node keeps the same values in ``<state>/options``; a change runs as a
cluster transaction under the ``cluster`` lock (stage: the key exists and the
value is valid, on every node; commit: each node writes its file), so the pool
never disagrees. A node joining the pool adopts the prober's options.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from pyglfs.mgmt.errors import MgmtError, bad_args
from pyglfs.mgmt.peers import SharedState
from pyglfs.mgmt.statestore import StateError, read_json, write_json
from pyglfs.mgmt.transaction import TxnError, TxnOp

if TYPE_CHECKING:
    from pyglfs.mgmt.service import MgmtService
    from pyglfs.rpc.server import ServerConnection

log = logging.getLogger(__name__)

OPTIONS_FILE = "options"
TXN_OP = "global-set"

_TRUE = {"on", "yes", "true", "enable", "1"}
_FALSE = {"off", "no", "false", "disable", "0"}


def _bool(v: str) -> str:
    low = v.lower()
    if low in _TRUE:
        return "on"
    if low in _FALSE:
        return "off"
    raise ValueError(f"'{v}' is not a valid boolean value (on/off, yes/no, true/false, "
                     "enable/disable, 1/0)")


def _uint(v: str) -> str:
    if not v.isdigit():
        raise ValueError(f"'{v}' is not a valid non-negative integer")
    return str(int(v))


def _percent(v: str) -> str:
    num = v[:-1] if v.endswith("%") else v
    try:
        f = float(num)
    except ValueError:
        raise ValueError(f"'{v}' is not a valid percentage") from None
    if not 0 <= f <= 100:
        raise ValueError(f"'{v}' is not a valid percentage")
    return f"{num}%"


def _log_level(v: str) -> str:
    up = v.upper()
    if up not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"'{v}' is not a valid log level (DEBUG, INFO, WARNING, ERROR, "
                         "CRITICAL)")
    return up


# key -> (default, normalizer raising ValueError)
GLOBAL_OPTIONS: dict[str, tuple[str, Callable[[str], str]]] = {
    "cluster.server-quorum-ratio": ("51%", _percent),
    "cluster.brick-multiplex": ("off", _bool),
    "cluster.max-bricks-per-process": ("250", _uint),
    "cluster.daemon-log-level": ("INFO", _log_level),
}


def unknown_key(key: object) -> str:
    """gluster's message for a key that is not a cluster option, with the valid ones."""
    return f"option : {key} does not exist. Valid options: {', '.join(sorted(GLOBAL_OPTIONS))}"


def normalize(key: str, value: str) -> str:
    """The stored form of ``value`` for ``key``; TxnError(EINVAL) if either is bad."""
    entry = GLOBAL_OPTIONS.get(key)
    if entry is None:
        raise TxnError(unknown_key(key), errno.EINVAL)
    try:
        return entry[1](value)
    except ValueError as exc:
        raise TxnError(f"option {key}: {exc}", errno.EINVAL) from None


class GlobalOptions:
    """One node's copy of the cluster options; ``values`` holds only those set."""

    def __init__(self, state_dir: Path | str,
                 limiter: trio.CapacityLimiter | None = None) -> None:
        self.path = Path(state_dir) / OPTIONS_FILE
        self.values: dict[str, str] = {}
        self._limiter = limiter or trio.CapacityLimiter(1)

    def load(self) -> None:
        """Read the options file if there is one; StateError names it if it is bad."""
        if not self.path.exists():
            return
        d = read_json(self.path)
        if type(d) is not dict or not all(type(k) is str and type(v) is str
                                          for k, v in d.items()):
            raise StateError(self.path, "corrupt state file (not a map of strings)")
        self.values = d

    def effective(self) -> dict[str, str]:
        return {k: self.values.get(k, default) for k, (default, _) in
                GLOBAL_OPTIONS.items()}

    async def replace(self, values: dict[str, str]) -> None:
        await trio.to_thread.run_sync(write_json, self.path, values, limiter=self._limiter)
        self.values = dict(values)

    # -- the transaction --------------------------------------------------
    @staticmethod
    def _args(args: dict[str, Any]) -> tuple[str, str]:
        key, value = args.get("key"), args.get("value")
        if type(key) is not str or type(value) is not str or len(value) > 4096:
            raise TxnError("invalid arguments: key and value must be strings", errno.EINVAL)
        return key, normalize(key, value)

    async def _stage(self, args: dict[str, Any]) -> None:
        self._args(args)

    async def _commit(self, args: dict[str, Any]) -> Any:
        key, value = self._args(args)
        await self.replace({**self.values, key: value})
        log.info("cluster option %s set to %s", key, value)
        return {"key": key, "value": value}

    def txn_op(self) -> TxnOp:
        return TxnOp(self._stage, self._commit)

    # -- what a joining node adopts --------------------------------------
    def export(self) -> dict[str, str]:
        return dict(self.values)

    @staticmethod
    def check(values: Any) -> dict[str, str]:
        """The pool's options as sent to a joining node, checked (MgmtError if bad)."""
        if values is None:
            return {}
        if type(values) is not dict or not all(type(k) is str and type(v) is str
                                               for k, v in values.items()):
            raise MgmtError(errno.EINVAL, "invalid arguments: options")
        try:
            return {k: normalize(k, v) for k, v in values.items()}
        except TxnError as exc:
            raise MgmtError(errno.EINVAL, str(exc)) from None

    async def adopt(self, values: dict[str, str]) -> None:
        if values != self.values:
            await self.replace(values)

    def shared(self) -> SharedState:
        return SharedState(self.export, self.check, self.adopt)


def register_global_options(service: MgmtService, options: GlobalOptions) -> None:
    """Serve ``volume_set`` / ``volume_get`` for the volume name ``all`` and make a
    joining node adopt the pool's options. The volume slice takes over the other
    volume names."""
    service.engine.register(TXN_OP, options.txn_op())
    service.peers.shared["options"] = options.shared()

    def volume_arg(args: dict[str, Any]) -> str:
        volume = args.get("volume")
        if type(volume) is not str or not volume:
            raise bad_args("volume")
        if volume != "all":
            raise MgmtError(errno.ENOENT, f"failed: Volume {volume} does not exist")
        return volume

    async def volume_set(args: dict[str, Any], conn: ServerConnection) -> Any:
        volume_arg(args)
        key, value = args.get("key"), args.get("value")
        if type(key) is not str or type(value) is not str:
            raise bad_args("key and value")
        try:
            normalize(key, value)
            committed = await service.transaction(TXN_OP, {"key": key, "value": value})
        except TxnError as exc:
            raise MgmtError(exc.code, f"failed: {exc}") from None
        except MgmtError as exc:
            raise MgmtError(exc.errno or errno.EIO, f"failed: {exc.message}") from None
        return {"key": key, "value": normalize(key, value), "nodes": len(committed)}

    async def volume_get(args: dict[str, Any], conn: ServerConnection) -> Any:
        volume_arg(args)
        key = args.get("key", "all")
        values = options.effective()
        if key == "all":
            return {"options": values}
        if type(key) is not str or key not in values:
            raise MgmtError(errno.EINVAL, f"failed: {unknown_key(key)}")
        return {"options": {key: values[key]}}

    service.register("volume_set", volume_set)
    service.register("volume_get", volume_get)
