"""Changelog counters (xattrop) and the pending-heal index.

Replicate records what a brick may have missed in ``trusted.afr.*`` xattrs on
the inode: each value is three big-endian signed 32-bit counters (data,
metadata, entry). ``trusted.afr.<vol>-client-N`` on brick M means "brick M has
changes that brick N may lack"; ``trusted.afr.dirty`` means "an operation was
in flight here". Counters only change through :func:`apply_xattrop`, which adds
deltas without awaiting, so within one brick process each update is atomic.

The heal index lists the gfids whose counters are not all zero, so the heal
daemon's work follows what changed during an outage, not the size of the
volume. As in GlusterFS, an index entry is a hard link, named by the gfid in
hex, to one empty base file under ``.pyglfs/indices/xattrop/``: adding and
removing one is a single metadata operation and survives a crash.
"""

from __future__ import annotations

import builtins
import errno
import logging
import os
import struct
from collections.abc import Iterable

from sortedcontainers import SortedList

from pyglfs.rpc.brickops import AFR_PREFIX, GFID_LEN

log = logging.getLogger(__name__)

_COUNTERS = struct.Struct(">iii")
COUNTERS_LEN = _COUNTERS.size
ZERO = b"\x00" * COUNTERS_LEN
_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1

INDEX_DIR = "indices"
XATTROP_DIR = "xattrop"
_BASE_PREFIX = "base-"


_unpack = _COUNTERS.unpack
_pack = _COUNTERS.pack
_AFR_PREFIX_LEN = len(AFR_PREFIX)


def _decode(name: str, value: bytes) -> tuple[int, int, int]:
    if len(value) != COUNTERS_LEN:
        raise OSError(errno.EINVAL, f"{name}: changelog value must be {COUNTERS_LEN} bytes")
    data, meta, entry = _unpack(value)
    return data, meta, entry


def apply_xattrop(fd: int, deltas: dict[str, bytes],
                  current: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """Add each 12-byte delta to the counters stored in xattr ``name`` of ``fd``.

    A missing xattr counts as zeros. ``current``, when given, is what the
    inode's changelog xattrs hold (a name it lacks holds zeros): they are not
    read back from the disk then. Returns the new value of every name in
    ``deltas``. All names and values are checked before anything is written:
    a name outside ``trusted.afr.`` is EPERM, a value of the wrong size (or a
    sum outside int32) is EINVAL, and then nothing changes. A result of all
    zeros is stored as zeros, as GlusterFS does, so a brick that was blamed
    and healed keeps a visible, clean changelog.

    Contains no await: callers in the brick's event loop get atomicity for
    free. An OSError from the filesystem part-way leaves earlier names updated.
    """
    updates: dict[str, bytes] = {}
    for name, delta in deltas.items():
        if not name.startswith(AFR_PREFIX) or len(name) <= _AFR_PREFIX_LEN:
            raise OSError(errno.EPERM, f"{name}: not a changelog xattr")
        if len(delta) != COUNTERS_LEN:
            _decode(name, delta)
        if current is not None:
            now = current.get(name)
        else:
            try:
                now = os.getxattr(fd, name)
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise
                now = None
        if now is None or now == ZERO:
            # Zeros plus the delta is the delta (its size checked above).
            updates[name] = delta
            continue
        x, y, z = _unpack(delta)
        a, b, c = _decode(name, now)
        a += x
        b += y
        c += z
        if not (_INT32_MIN <= a <= _INT32_MAX and _INT32_MIN <= b <= _INT32_MAX
                and _INT32_MIN <= c <= _INT32_MAX):
            raise OSError(errno.EINVAL, f"{name}: changelog counter out of range")
        updates[name] = _pack(a, b, c)
    for name, value in updates.items():
        os.setxattr(fd, name, value)
    return updates


def negate(deltas: dict[str, bytes]) -> dict[str, bytes]:
    """The deltas that take ``deltas`` back (EINVAL for a value of the wrong size)."""
    return {name: _COUNTERS.pack(*(-v for v in _decode(name, value)))
            for name, value in deltas.items()}


def read_changelog(fd: int) -> dict[str, bytes]:
    """Every ``trusted.afr.*`` xattr of ``fd``: what :meth:`HealIndex.note` needs."""
    out: dict[str, bytes] = {}
    for name in os.listxattr(fd):
        if name.startswith(AFR_PREFIX):
            try:
                out[name] = os.getxattr(fd, name)
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise
    return out


def is_pending(xattrs: dict[str, bytes]) -> bool:
    """True when any changelog counter in ``xattrs`` is non-zero.

    Only ``trusted.afr.`` names count; values of another length are treated as
    pending, so a damaged changelog gets looked at rather than forgotten.
    """
    for name, value in xattrs.items():
        if value != ZERO and name.startswith(AFR_PREFIX):
            return True
    return False


def any_nonzero(values: Iterable[bytes]) -> bool:
    """``is_pending`` for values known to be changelog xattrs' (their names
    checked already, as ``apply_xattrop`` does)."""
    for value in values:
        if value != ZERO:
            return True
    return False


class HealIndex:
    """The set of gfids with pending changelog counters on this brick.

    Owned by the brick process: the on-disk directory is read once at start and
    then mirrored in memory, so :meth:`list` pages through a sorted snapshot with
    stable cookies. Only this object writes under ``indices/xattrop``.

    Cookies are 64-bit (msgpack's limit), so a cookie names the first 8 bytes of
    a gfid: a page never ends inside a run of gfids sharing those bytes, and a
    listing neither skips nor repeats an entry that stays indexed meanwhile.
    """

    def __init__(self, internal_dir_fd: int) -> None:
        self._dir_fd = internal_dir_fd
        for part in (INDEX_DIR, f"{INDEX_DIR}/{XATTROP_DIR}"):
            try:
                os.mkdir(part, 0o700, dir_fd=internal_dir_fd)
            except FileExistsError:
                pass
        self._fd = os.open(
            f"{INDEX_DIR}/{XATTROP_DIR}",
            os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
            dir_fd=internal_dir_fd,
        )
        # The indexed gfids. ``_gfids`` is their sorted view for :meth:`list`, as of
        # the last listing: changes since then wait in ``_added`` / ``_removed``
        # (disjoint), so a gfid indexed and unindexed between two listings (a new
        # file's first write cycle) never touches the sorted view.
        self._members: set[bytes] = set()
        self._gfids: SortedList = SortedList()
        self._added: set[bytes] = set()
        self._removed: set[bytes] = set()
        self._base = ""
        for name in os.listdir(self._fd):
            if name.startswith(_BASE_PREFIX):
                self._base = self._base or name
                continue
            try:
                gfid = bytes.fromhex(name)
            except ValueError:
                gfid = b""
            if len(gfid) == GFID_LEN:
                self._members.add(gfid)
            else:
                log.warning("heal index: ignoring stray entry %r", name)
        self._gfids.update(self._members)
        if not self._base:
            self._new_base()

    def close(self) -> None:
        """Close the index directory; the index must not be used afterwards."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, gfid: object) -> bool:
        return gfid in self._members

    def _new_base(self) -> None:
        name = f"{_BASE_PREFIX}{os.urandom(8).hex()}"
        fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600,
                     dir_fd=self._fd)
        os.close(fd)
        old, self._base = self._base, name
        if old:
            # Entries keep the old base's inode alive; only its name goes.
            try:
                os.unlink(old, dir_fd=self._fd)
            except FileNotFoundError:
                pass

    def note(self, gfid: bytes, xattrs: dict[str, bytes]) -> None:
        """Index ``gfid`` when ``xattrs`` holds a non-zero counter, else unindex it.

        ``xattrs`` must be all of the inode's changelog xattrs (see
        :func:`read_changelog`), since a zero in one does not clear another.
        """
        if is_pending(xattrs):
            self.add(gfid)
        else:
            self.discard(gfid)

    def add(self, gfid: bytes) -> None:
        """Index ``gfid`` (idempotent)."""
        if len(gfid) != GFID_LEN:
            raise OSError(errno.EINVAL, "gfid must be 16 bytes")
        if gfid in self._members:
            return
        name = gfid.hex()
        for _ in range(3):
            try:
                os.link(self._base, name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
                break
            except FileExistsError:
                break
            except FileNotFoundError:
                self._base = ""
                self._new_base()
            except OSError as e:
                if e.errno != errno.EMLINK:
                    raise
                self._new_base()
        else:
            raise OSError(errno.EIO, "heal index: cannot link an entry")
        self._members.add(gfid)
        if gfid in self._removed:
            self._removed.discard(gfid)
        else:
            self._added.add(gfid)

    def discard(self, gfid: bytes) -> None:
        """Unindex ``gfid`` (idempotent); for clean counters or a deleted inode."""
        if gfid not in self._members:
            return
        try:
            os.unlink(gfid.hex(), dir_fd=self._fd)
        except FileNotFoundError:
            pass
        self._members.discard(gfid)
        if gfid in self._added:
            self._added.discard(gfid)
        else:
            self._removed.add(gfid)

    def list(self, cookie: int, count: int) -> tuple[builtins.list[bytes], int, bool]:
        """Up to about ``count`` indexed gfids from ``cookie`` on (0 = start).

        Returns the gfids, the cookie that resumes after them, and whether the
        listing reached the end. A page may exceed ``count`` to finish a run of
        gfids sharing their first 8 bytes. ``count`` 0 is taken as 1.
        """
        if cookie < 0 or cookie >= 1 << 64:
            raise OSError(errno.EINVAL, "bad index cookie")
        count = max(count, 1)
        if self._added or self._removed:
            for gfid in self._removed:
                self._gfids.remove(gfid)
            self._gfids.update(self._added)
            self._removed.clear()
            self._added.clear()
        start = self._gfids.bisect_left(cookie.to_bytes(8, "big"))
        page: builtins.list[bytes] = builtins.list(self._gfids.islice(start, start + count))
        end = start + len(page)
        total = len(self._gfids)
        if page:
            prefix = page[-1][:8]
            while end < total and self._gfids[end][:8] == prefix:
                page.append(self._gfids[end])
                end += 1
        if end >= total:
            return page, 0, True
        next_cookie = int.from_bytes(page[-1][:8], "big") + 1
        return page, next_cookie, False
