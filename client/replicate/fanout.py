"""Send one operation to several bricks at once and collect every outcome.

With ``split`` (children whose calls are protocol clients' brick requests)
no task is spawned: the caller's task sends the request of every brick
(``rpc.connection.start_split``), then awaits the replies in turn. Otherwise
the first brick's call runs in the caller's task and only the others get a
task of their own. Outcomes are ``OSError`` instances for failed bricks: a
failure on one brick is data for replicate (blame it, fail over), not an
exception. Anything else (a bug, ``Cancelled``) propagates.
"""

from __future__ import annotations

import errno
import types
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

import trio

from pyglfs.client.protocol import ProtocolClient
from pyglfs.rpc.connection import finish_split, start_split

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


async def _await(aw: Awaitable[T]) -> T:
    return await aw


async def _split(out: list[Any], targets: list[int],
                 call: Callable[[int], Awaitable[Any]]) -> None:
    paused: list[tuple[int, Coroutine[Any, Any, Any]]] = []
    try:
        for i in targets:
            aw = call(i)
            coro = aw if type(aw) is types.CoroutineType else _await(aw)
            try:
                sent, value = await start_split(coro)
            except OSError as e:
                out[i] = e
                continue
            if sent:
                paused.append((i, coro))
            else:
                out[i] = value
        while paused:
            i, coro = paused[0]
            try:
                out[i] = await finish_split(coro)
            except OSError as e:
                out[i] = e
            del paused[0]
    finally:
        # Cancelled (or a bug): the requests not awaited yet are given up.
        for _, coro in paused:
            coro.close()


async def fanout(n: int, targets: list[int], call: Callable[[int], Awaitable[T]],
                 split: bool = False) -> list[T | OSError | None]:
    """Run ``call(i)`` for every brick index in ``targets`` concurrently.

    Returns a list of length ``n``: the result or ``OSError`` of each target,
    None for bricks not called. ``split``: every ``call(i)`` sends its brick
    request (``RpcConnection.call``) before it awaits anything else, and holds
    no cancel scope of its own at that moment (the calls pause there, one
    after another, in this task's scope stack); a call that awaits something
    first still works, but holds up the others' sends until it has sent its
    own.
    """
    out: list[Any] = [None] * n
    if len(targets) == 1:
        await _one(out, targets[0], call)
        return out
    if split:
        await _split(out, targets, call)
        return out
    if targets:
        async with trio.open_nursery() as nursery:
            for i in targets[1:]:
                nursery.start_soon(_one, out, i, call)
            await _one(out, targets[0], call)
    return out


def splittable(children: list[Any]) -> bool:
    """Whether a fan-out over ``children`` may be ``split``: protocol clients,
    whose every op sends its brick request before it awaits anything else."""
    return all(isinstance(c, ProtocolClient) for c in children)


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
