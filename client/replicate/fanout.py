"""Send one operation to several bricks at once and collect every outcome.

The first brick's call runs in the caller's task and only the others get a
task of their own, so the common replica-2 case costs one spawn per operation.
Outcomes are ``OSError`` instances for failed bricks: a failure on one brick is
data for replicate (blame it, fail over), not an exception. Anything else (a
bug, ``Cancelled``) propagates.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import trio

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


async def fanout(n: int, targets: list[int],
                 call: Callable[[int], Awaitable[T]]) -> list[T | OSError | None]:
    """Run ``call(i)`` for every brick index in ``targets`` concurrently.

    Returns a list of length ``n``: the result or ``OSError`` of each target,
    None for bricks not called.
    """
    out: list[Any] = [None] * n
    if len(targets) == 1:
        await _one(out, targets[0], call)
        return out
    if targets:
        async with trio.open_nursery() as nursery:
            for i in targets[1:]:
                nursery.start_soon(_one, out, i, call)
            await _one(out, targets[0], call)
    return out


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
