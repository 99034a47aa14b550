"""The Linux calls the os module lacks: renameat2, fallocate, utimensat with OMIT.

Each wrapper raises OSError with the kernel's errno, like the os module does.
"""

from __future__ import annotations

import ctypes
import errno
import os

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2

AT_SYMLINK_NOFOLLOW = 0x100
_AT_FDCWD = -100
_SYS_RENAMEAT2 = 316  # x86_64; used only when glibc lacks the wrapper

_libc = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_utimensat = _libc.utimensat
_utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
_utimensat.restype = ctypes.c_int
_futimens = _libc.futimens
_futimens.argtypes = [ctypes.c_int, ctypes.POINTER(_Timespec)]
_futimens.restype = ctypes.c_int

_fallocate = _libc.fallocate64 if hasattr(_libc, "fallocate64") else _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int

_renameat2 = getattr(_libc, "renameat2", None)
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
    _renameat2.restype = ctypes.c_int

_OFF_MAX = (1 << 63) - 1


def _raise(what: str) -> None:
    code = ctypes.get_errno()
    raise OSError(code, f"{what}: {os.strerror(code)}")


def renameat2(src_dir_fd: int, src: bytes, dst_dir_fd: int, dst: bytes, flags: int) -> None:
    """rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE; never follows symlinks."""
    if _renameat2 is not None:
        rc = _renameat2(src_dir_fd, src, dst_dir_fd, dst, flags)
    else:
        rc = _libc.syscall(_SYS_RENAMEAT2, src_dir_fd, ctypes.c_char_p(src), dst_dir_fd,
                           ctypes.c_char_p(dst), ctypes.c_uint(flags))
    if rc != 0:
        _raise("renameat2")


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with any mode (KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE ...)."""
    if offset > _OFF_MAX or length > _OFF_MAX or mode > 0x7FFFFFFF:
        raise OSError(errno.EFBIG if mode <= 0x7FFFFFFF else errno.EINVAL, "out of range")
    if _fallocate(fd, mode, offset, length) != 0:
        _raise("fallocate")


def _spec(ns: int | None, now: bool) -> _Timespec:
    if now:
        return _Timespec(0, _UTIME_NOW)
    if ns is None:
        return _Timespec(0, _UTIME_OMIT)
    sec, nsec = divmod(ns, 1_000_000_000)
    if not -(1 << 62) < sec < (1 << 62):
        raise OSError(errno.EINVAL, "time out of range")
    return _Timespec(sec, nsec)


def utimens(dir_fd: int, path: bytes | None, atime: int | None, mtime: int | None, *,
            atime_now: bool = False, mtime_now: bool = False) -> None:
    """Set times in ns of ``path`` in ``dir_fd`` (or of ``dir_fd`` itself when ``path``
    is None). A time that is None is left alone; ``*_now`` sets the current time.
    A symlink's own times change: it is never followed."""
    times = (_Timespec * 2)(_spec(atime, atime_now), _spec(mtime, mtime_now))
    if path is None:
        rc = _futimens(dir_fd, times)
    else:
        rc = _utimensat(dir_fd, path, times, AT_SYMLINK_NOFOLLOW)
    if rc != 0:
        _raise("utimensat")
