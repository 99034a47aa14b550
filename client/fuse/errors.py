"""The one place where errors become ``FUSEError``.

pyfuse3 ends the whole FUSE session when a handler lets anything other than
``FUSEError`` escape, so every handler is wrapped by ``fuse_handler``:

- ``OSError`` from the layers below carries the errno the application sees;
- ``FUSEError`` passes through unchanged;
- anything else is a bug: it is logged with its traceback and the application
  gets EIO, and the mount keeps serving. Under ``PYGLFS_TEST_STRICT=1`` the
  error is also counted in ``unexpected_errors`` and logged with a marker the
  mount-test fixture looks for, so a test that triggered one fails.

Cancellation (a ``BaseException``) is never caught.

``fuse_handler`` also tells ``workers`` when a handler first waits, so that
another worker reads the next request meanwhile. It drives the handler's
coroutine itself instead of wrapping it in a second one: a request answered
from the caches then runs one coroutine less.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Callable, Coroutine, Generator
from typing import Any, ParamSpec, TypeVar, cast

import pyfuse3

from pyglfs.client.fuse.workers import handler_blocks

log = logging.getLogger(__name__)

STRICT = os.environ.get("PYGLFS_TEST_STRICT") == "1"
STRICT_MARKER = "PYGLFS-UNEXPECTED-EXCEPTION"

unexpected_errors = 0

P = ParamSpec("P")
R = TypeVar("R")


def to_fuse_error(exc: BaseException, what: str) -> pyfuse3.FUSEError:
    """The ``FUSEError`` that ``exc`` (raised while handling ``what``) stands for."""
    global unexpected_errors
    if isinstance(exc, pyfuse3.FUSEError):
        return exc
    if isinstance(exc, OSError) and exc.errno:
        return pyfuse3.FUSEError(exc.errno)
    unexpected_errors += 1
    if STRICT:
        log.error("%s: %s in %s", STRICT_MARKER, type(exc).__name__, what, exc_info=exc)
    else:
        log.error("unexpected error in %s, returning EIO", what, exc_info=exc)
    return pyfuse3.FUSEError(errno.EIO)


class _Handling:
    """One run of a handler: its coroutine's steps, with errors mapped."""

    __slots__ = ("coro", "what")

    def __init__(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        self.coro = coro
        self.what = what

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self.coro
        step: Callable[[Any], Any] = coro.send
        value: Any = None
        first = True
        while True:
            try:
                msg = step(value)
            except StopIteration as stop:
                return stop.value
            except pyfuse3.FUSEError:
                raise
            except Exception as exc:
                raise to_fuse_error(exc, self.what) from None
            if first:
                first = False
                handler_blocks()
            try:
                value = yield msg
                step = coro.send
            except BaseException as exc:  # trio's cancellation, or a close
                value = exc
                step = coro.throw


def fuse_handler(
    fn: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Wrap a pyfuse3 request handler so that only ``FUSEError`` leaves it, and
    so that another worker reads the next request once it waits."""
    what = fn.__name__

    @functools.wraps(fn)
    def handler(*args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        # awaited by pyfuse3 (or a test), never sent to by hand
        return cast("Coroutine[Any, Any, R]", _Handling(fn(*args, **kwargs), what))

    return handler


def log_unexpected(exc: BaseException, what: str) -> None:
    """Record an unexpected error where no reply can carry it (``forget``, ``release``)."""
    to_fuse_error(exc, what)
