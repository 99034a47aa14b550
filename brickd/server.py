"""The brick's RPC service: the boundary between the wire and the storage.

Every request is checked against ``rpc.brickops`` before any storage code runs
(an unknown op is ENOSYS, bad arguments EINVAL). Lock ops go to the in-memory
:class:`~pyglfs.brickd.locks.LockManager`, ``index_list`` to the heal index,
everything else to the store method of the same name, with the same argument
names. A change tells the other clients what it made stale (``upcall``), and
that event leaves before the reply to the change. A
connection's locks and open files belong to it: when it ends, they are
released, so a client that died cannot wedge the others.

A ``compound`` runs its sub-ops in order through the same handlers, with the
same connection state and upcalls as separate requests; it stops at the first
sub-op that fails and says which one, so the client knows what happened.

While a directory is leased (``brickd/leases.py``), other connections' requests
on its entries wait at the lease gate before they run; such a request is never
run inline, in the connection's reader task, which must keep answering pings.

The handshake admits a client only for this brick's volume and, when the brick
has credentials, only with exactly those credentials.
"""

from __future__ import annotations

import errno
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import trio

from pyglfs.brickd.auth import Credentials
from pyglfs.brickd.changelog import HealIndex
from pyglfs.brickd.leases import GATED_OPS, LEASE_RECALL_TIMEOUT, LeaseGate, LeaseUpcall
from pyglfs.brickd.localfds import LocalFdServer
from pyglfs.brickd.locks import LockManager
from pyglfs.brickd.upcall import CHANGING_OPS
from pyglfs.rpc.brickops import (
    LEASE_DOMAIN,
    OPS,
    VALIDATORS,
    ArgError,
    validate,
    validate_compound,
)
from pyglfs.rpc.errors import HandshakeRefused
from pyglfs.rpc.messages import error_fields
from pyglfs.rpc.server import ServerConnection, serve_rpc

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], ServerConnection], Awaitable[Any]]

LOCK_OPS = ("inodelk", "entrylk", "lk")
INDEX_PAGE_MAX = 4096
# Ops answered from memory or a single short syscall: run in the reader task,
# saving a task spawn per request. Lock ops may wait, so they never are.
_INLINE_OWN = frozenset({"null", "index_list"})
# Never wait inside a compound: a compound refuses blocking lock requests.
_NONBLOCKING_LOCK_OPS = frozenset({"inodelk", "entrylk"})
# Where a connection's hello keeps its local-read token (set by the brick).
_LOCAL_TOKEN = "_local_read_token"


async def _null(args: dict[str, Any], conn: ServerConnection) -> dict[str, Any]:
    return {}


class BrickService:
    """``rpc.server.Service`` for one brick.

    ``store`` has one async method per storage op of ``rpc.brickops`` (taking
    ``conn_id=`` where it tracks per-connection state) and ``release_all``.
    ``nursery`` runs the service's background sends (lock-contention events),
    so a blocked lock request never waits on the holder's socket.
    ``lease_recall_timeout``: how long a directory lease may keep a request
    waiting before the brick takes it away (``brickd/leases.py``).
    """

    def __init__(
        self,
        store: Any,
        volume: str,
        *,
        nursery: trio.Nursery,
        credentials: Credentials | None = None,
        index: HealIndex | None = None,
        server_name: str | None = None,
        localfds: LocalFdServer | None = None,
        lease_recall_timeout: float = LEASE_RECALL_TIMEOUT,
    ) -> None:
        self.store = store
        self.localfds = localfds
        self.volume = volume
        self.credentials = credentials
        self.server_name = server_name
        self.index = index if index is not None else getattr(store, "heal_index", None)
        self.locks = LockManager(on_contention=self._contention)
        self.leases = LeaseGate(self.locks, lease_recall_timeout, self._child_gfid)
        self._lease_table = self.locks.lease_table
        self._nursery = nursery
        self.upcall = LeaseUpcall(nursery)
        self._table: dict[str, Handler] = self._build_table()
        # op -> (validator, handler, whether it changes something others cache)
        self._ops: dict[str, tuple[Callable[[Any], Any], Handler, bool]] = {
            op: (VALIDATORS[op], handler, op in CHANGING_OPS)
            for op, handler in self._table.items()
        }
        inline_ops = _INLINE_OWN | frozenset(getattr(store, "inline_ops", ()))
        # Entry ops may wait at the lease gate: inline only while no lease is near.
        self._gated_inline = inline_ops & GATED_OPS
        self.inline_ops = inline_ops - GATED_OPS
        # (op, args) -> bool: ops run inline only for some arguments (small reads).
        self._store_inline_when: Callable[[str, dict[str, Any]], bool] | None = getattr(
            store, "inline_when", None)
        self.inline_when: Callable[[str, dict[str, Any]], bool] | None = self._inline_when

    # ---- handshake and connection life ---------------------------------------------------

    def authenticate(self, hello: dict[str, Any]) -> None:
        """Refuse a client of another volume or with the wrong credentials."""
        if hello.get("volume") != self.volume:
            raise HandshakeRefused(
                f"volume {hello.get('volume')!r} is not served here: "
                f"this brick belongs to volume {self.volume!r}"
            )
        if self.credentials is not None and not self.credentials.accepts(hello.get("auth")):
            raise HandshakeRefused(
                f"authentication failed for volume {self.volume!r}: wrong or missing credentials"
            )

    def welcome_extra(self, hello: dict[str, Any]) -> dict[str, Any]:
        """A client's welcome offers local reads (``brickd.localfds``) with a
        token that lives as long as this connection (kept in its hello)."""
        offer = None
        if self.localfds is not None and hello.get("role") == "client":
            offer = self.localfds.offer(str(hello.get("client_id")))
        hello[_LOCAL_TOKEN] = offer["token"] if offer is not None else None
        return {"local_read": offer} if offer is not None else {}

    def disconnected(self, conn: ServerConnection) -> None:
        """Release everything the connection held: locks at once, open files soon."""
        if self.localfds is not None:
            self.localfds.revoke(conn.hello.get(_LOCAL_TOKEN))
        self.upcall.gone(conn)
        self.locks.release_all(conn)
        release = getattr(self.store, "release_all", None)
        if release is None:
            return
        result = release(conn.conn_id)
        if inspect.isawaitable(result):
            self._nursery.start_soon(_await_logged, result, conn)

    def _contention(self, holder: Hashable, gfid: bytes, domain: str, owner: bytes) -> None:
        if domain == LEASE_DOMAIN and self.leases.is_gate_owner(owner):
            return
        conn = holder
        if isinstance(conn, ServerConnection) and not conn.closed:
            self._nursery.start_soon(_send_contention, conn, gfid, domain, owner)

    # ---- requests ------------------------------------------------------------------------

    async def handle(self, op: str, args: dict[str, Any], conn: ServerConnection) -> Any:
        """Validate, then dispatch; errors leave as OSError (errno names on the wire)."""
        entry = self._ops.get(op)
        if entry is None:
            _refuse(op, args)
        check, handler, changing = entry
        try:
            check(args)
        except ArgError as e:
            raise OSError(errno.EINVAL, str(e)) from None
        upcall = self.upcall
        upcall.seen(conn)
        if self._lease_table and op in GATED_OPS:
            result = await self.leases.run(op, args, conn, handler)
        else:
            result = await handler(args, conn)
        if changing:
            upcall.changed(op, args, result, conn)
        if upcall.ready:
            await upcall.deliver()
        return result

    def _inline_when(self, op: str, args: dict[str, Any]) -> bool:
        """Whether ``op`` with these (not yet validated) ``args`` never awaits
        anything but brief local work: a compound is when all its sub-ops are.
        An entry op is while no lease lock exists on a directory it names."""
        if op in self._gated_inline:
            return not self._lease_table or self.leases.may_run_inline(op, args)
        if op != "compound":
            when = self._store_inline_when
            return when is not None and when(op, args)
        ops = args.get("ops")
        if type(ops) is not list:
            return False
        inline = self.inline_ops
        gated = self._gated_inline
        when = self._store_inline_when
        for item in ops:
            if (type(item) is not list or len(item) != 2 or type(item[0]) is not str
                    or type(item[1]) is not dict):
                return False
            sub = item[0]
            if sub in gated:
                if self._lease_table and not self.leases.may_run_inline(sub, item[1]):
                    return False
            elif not (sub in inline or sub in _NONBLOCKING_LOCK_OPS
                      or (when is not None and when(sub, item[1]))):
                return False
        return True

    async def _compound(self, args: dict[str, Any], conn: ServerConnection) -> dict[str, Any]:
        try:
            ops = validate_compound(args)
        except ArgError as e:
            raise OSError(errno.EINVAL, str(e)) from None
        table = self._table
        handlers = []
        for op, _ in ops:
            handler = table.get(op)
            if handler is None:
                raise OSError(errno.ENOSYS, f"operation {op!r} is not supported by this brick")
            handlers.append(handler)
        upcall = self.upcall
        results: list[Any] = []
        for i, (op, sub) in enumerate(ops):
            try:
                result = await handlers[i](sub, conn)
            except OSError as e:
                return {"results": results, "error": [i, *error_fields(e)]}
            except Exception:
                log.exception("%r: compound sub-op %d (%s) failed", conn, i, op)
                return {"results": results, "error": [i, "EIO", "internal error"]}
            if op in CHANGING_OPS:
                upcall.changed(op, sub, result, conn)
            results.append(result)
        return {"results": results}

    def _build_table(self) -> dict[str, Handler]:
        table: dict[str, Handler] = {"null": _null, "index_list": self._index_list,
                                     "compound": self._compound}
        locks = self.locks
        for name in LOCK_OPS:
            table[name] = _lock_handler(getattr(locks, name))
        table["inodelk"] = self._inodelk_handler()
        for op in OPS:
            if op in table:
                continue
            meth = getattr(self.store, op, None)
            if meth is None:
                continue
            table[op] = _store_handler(meth, _takes_conn_id(meth))
        if "create" in table:
            table["create"] = _create_and_lock(table["create"], self.locks)
        return table

    async def _child_gfid(self, pgfid: bytes, name: bytes) -> bytes | None:
        lookup = getattr(self.store, "lookup", None)
        if lookup is None:
            return None
        try:
            gfid: bytes = (await lookup(pgfid, name))["iatt"][0]
        except OSError:
            return None
        return gfid

    def _inodelk_handler(self) -> Handler:
        """``inodelk`` whose grant of a lease lock is answered only after the
        cache-invalidation events owed to the connection (``brickd/leases.py``)."""
        inodelk = self.locks.inodelk
        send_owed = self.upcall.send_owed

        async def lease_lock(args: dict[str, Any], conn: ServerConnection) -> Any:
            result = await inodelk(conn_id=conn, **args)
            if args["type"] != "un":
                await send_owed(conn)
            return result

        def handler(args: dict[str, Any], conn: ServerConnection) -> Awaitable[Any]:
            if args["domain"] == LEASE_DOMAIN:
                return lease_lock(args, conn)
            return inodelk(conn_id=conn, **args)

        return handler

    async def _index_list(self, args: dict[str, Any], conn: ServerConnection) -> dict[str, Any]:
        if self.index is None:
            raise OSError(errno.ENOSYS, "this brick keeps no heal index")
        count = min(args.get("count") or INDEX_PAGE_MAX, INDEX_PAGE_MAX)
        gfids, cookie, eof = self.index.list(args.get("cookie") or 0, count)
        return {"gfids": gfids, "cookie": cookie, "eof": eof}


def _refuse(op: Any, args: Any) -> NoReturn:
    """The error for an op this brick has no handler for: ENOSYS, or EINVAL for
    a known op whose arguments are bad anyway."""
    try:
        validate(op, args)
    except KeyError:
        raise OSError(errno.ENOSYS, f"unknown operation {op!r}") from None
    except ArgError as e:
        raise OSError(errno.EINVAL, str(e)) from None
    raise OSError(errno.ENOSYS, f"operation {op!r} is not supported by this brick")


# The handlers below are plain functions returning the op's coroutine: awaiting
# that directly saves a coroutine of their own on every request.

def _lock_handler(meth: Callable[..., Awaitable[Any]]) -> Handler:
    def handler(args: dict[str, Any], conn: ServerConnection) -> Awaitable[Any]:
        return meth(conn_id=conn, **args)

    return handler


def _store_handler(meth: Callable[..., Awaitable[Any]], with_conn: bool) -> Handler:
    if with_conn:
        def handler(args: dict[str, Any], conn: ServerConnection) -> Awaitable[Any]:
            return meth(conn_id=conn.conn_id, **args)
    else:
        def handler(args: dict[str, Any], conn: ServerConnection) -> Awaitable[Any]:
            return meth(**args)

    return handler


def _create_and_lock(create: Handler, locks: LockManager) -> Handler:
    """``create`` that, given ``lock``, also takes the new file's inode lock for
    the client, so its first write needs no lock round trip of its own. The
    lock is tried only once the file exists; a failed try (only possible for a
    gfid some other client already locks) leaves the file created and says
    ``locked: False``."""
    async def handler(args: dict[str, Any], conn: ServerConnection) -> Any:
        # The request's own args: taking "lock" out leaves what create takes.
        lock = args.pop("lock", None)
        result = await create(args, conn)
        if lock is None:
            return result
        result["locked"] = locks.try_whole_inodelk(conn, args["gfid"], lock["domain"],
                                                   lock["owner"])
        return result

    return handler


def _takes_conn_id(meth: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(meth).parameters
    except (TypeError, ValueError):
        return False
    return "conn_id" in params


async def _await_logged(result: Awaitable[Any], conn: ServerConnection) -> None:
    try:
        await result
    except Exception:
        log.exception("%r: releasing its open files failed", conn)


async def _send_contention(conn: ServerConnection, gfid: bytes, domain: str,
                           owner: bytes) -> None:
    try:
        await conn.send_event("lock-contention", {"gfid": gfid, "domain": domain, "owner": owner})
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
        log.debug("%r: lock-contention event not delivered: %r", conn, e)


@asynccontextmanager
async def open_brick_service(
    store: Any,
    volume: str,
    *,
    credentials: Credentials | None = None,
    index: HealIndex | None = None,
    server_name: str | None = None,
    localfds: LocalFdServer | None = None,
    lease_recall_timeout: float = LEASE_RECALL_TIMEOUT,
) -> AsyncIterator[BrickService]:
    """A BrickService whose background sends stop when the block exits."""
    async with trio.open_nursery() as nursery:
        service = BrickService(
            store, volume, nursery=nursery, credentials=credentials, index=index,
            server_name=server_name, localfds=localfds,
            lease_recall_timeout=lease_recall_timeout,
        )
        try:
            yield service
        finally:
            nursery.cancel_scope.cancel()


async def serve_brick(
    store: Any,
    volume: str,
    host: str,
    port: int,
    *,
    credentials: Credentials | None = None,
    index: HealIndex | None = None,
    localfds: LocalFdServer | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``store`` on host:port until cancelled; reports the bound port.
    With ``localfds`` (serving) clients are offered local reads."""
    async with open_brick_service(
        store, volume, credentials=credentials, index=index, localfds=localfds,
    ) as service:
        await serve_rpc(service, host, port, task_status=task_status)
