"""Send one operation to several bricks at once and collect every outcome.

When every brick is a protocol client (``via``), everything runs in the
caller's task: each call runs until its request is on the wire (see
``pyglfs.rpc.connection.split_point``), then the replies are awaited in brick
order; no nursery, no spawn. Otherwise the first brick's call runs in the
caller's task and only the others get a task of their own.

Outcomes are ``OSError`` instances for failed bricks: a failure on one brick
is data for replicate (blame it, fail over), not an exception. Anything else
(a bug, ``Cancelled``) propagates.
"""

from __future__ import annotations

import errno
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Sequence
from typing import Any, TypeVar

import trio

from pyglfs.rpc.connection import SENT as _SENT
from pyglfs.rpc.connection import SPLIT as _SPLIT

T = TypeVar("T")

TRANSPORT_ERRNOS = frozenset({errno.ENOTCONN, errno.ETIMEDOUT})


def is_transport(exc: BaseException) -> bool:
    """Whether a brick's failure means "not reachable" rather than an answer."""
    return isinstance(exc, OSError) and exc.errno in TRANSPORT_ERRNOS


async def _one(out: list[Any], i: int, call: Callable[[int], Awaitable[Any]]) -> None:
    try:
        out[i] = await call(i)
    except OSError as e:
        out[i] = e


async def fanout(n: int, targets: list[int], call: Callable[[int], Awaitable[T]],
                 via: Sequence[Any] = ()) -> list[T | OSError | None]:
    """Run ``call(i)`` for every brick index in ``targets`` concurrently.

    Returns a list of length ``n``: the result or ``OSError`` of each target,
    None for bricks not called. ``via`` are the layers ``call`` talks to, by
    brick index: when each target's has ``split_phase`` set, the calls run in
    this task without spawning (``call(i)`` must then be a coroutine).
    """
    out: list[Any] = [None] * n
    if len(targets) == 1:
        await _one(out, targets[0], call)
        return out
    if targets:
        if via and all(getattr(via[i], "split_phase", False) for i in targets):
            await _split(out, targets, call)
            return out
        async with trio.open_nursery() as nursery:
            for i in targets[1:]:
                nursery.start_soon(_one, out, i, call)
            await _one(out, targets[0], call)
    return out


@types.coroutine
def _advance(coro: Coroutine[Any, Any, Any]) -> Generator[Any, Any, tuple[bool, Any]]:
    """Run ``coro`` on until its next request is sent, returning (False, None), or
    to its end, returning (True, value); trio's traps pass through both ways."""
    token = _SPLIT.set(True)
    try:
        send: Any = coro.send
        arg: Any = None
        while True:
            try:
                y = send(arg)
            except StopIteration as stop:
                return True, stop.value
            if y is _SENT:
                return False, None
            try:
                arg = yield y
                send = coro.send
            except BaseException as exc:
                arg = exc
                send = coro.throw
    finally:
        _SPLIT.reset(token)


async def _split(out: list[Any], targets: list[int],
                 call: Callable[[int], Awaitable[Any]]) -> None:
    """Rounds over the calls: each is run until its next request is sent or it
    ends, so a call of several requests keeps them in parallel with the others'."""
    live: list[tuple[int, Any]] = [(i, call(i)) for i in targets]
    nxt: list[tuple[int, Any]] = []
    try:
        while live:
            nxt = []
            for i, coro in live:
                try:
                    done, value = await _advance(coro)
                except OSError as e:
                    out[i] = e
                    continue
                if done:
                    out[i] = value
                else:
                    nxt.append((i, coro))
            live = nxt
    finally:
        # Closing a call stopped at sent() gives its request up (the protocol
        # client abandons it); finished ones ignore close().
        for _, coro in live + nxt:
            coro.close()


def pick_error(errors: dict[int, OSError]) -> OSError:
    """The error to give the caller when every brick failed.

    An answer from a brick (EEXIST, ENOSPC) wins over "not reachable"; among
    answers the lowest brick's wins, so both bricks failing with the same errno
    give that errno.
    """
    for i in sorted(errors):
        if not is_transport(errors[i]):
            return errors[i]
    return errors[min(errors)]


def mask(indices: Iterable[int]) -> int:
    m = 0
    for i in indices:
        m |= 1 << i
    return m


def bits(m: int) -> list[int]:
    return [i for i in range(m.bit_length()) if m >> i & 1]
