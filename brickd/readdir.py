"""readdir(plus) with cookies that stay valid while the directory changes.

An entry's cookie is a 63-bit xxh3 hash of its name (never 0, which means
"from the start"). The brick lists the directory, sorts it by cookie and returns
the entries whose cookie is greater than the one the client resumes from. The
order depends only on the names, so however entries come and go between pages,
an entry present during the whole listing is returned exactly once. Names
sharing a cookie are never split across pages.

Listings are cached per directory so paging through a big directory is not
quadratic: a listing from cookie 0 is always read fresh; a continuation may use
a cached listing up to ``listing_ttl`` seconds old, and an older one while the
directory has not changed since (mtime/ctime, and no entry op of this brick).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from bisect import bisect_right
from typing import Any

import xxhash

from pyglfs.brickd.names import INTERNAL_DIR_NAME, proc_path
from pyglfs.brickd.resolve import StoreCore
from pyglfs.rpc.brickops import GFID_LEN, ROOT_GFID

MAX_PAGE = 4096
DT_DIR = stat.S_IFDIR >> 12
DT_REG = stat.S_IFREG >> 12
DT_LNK = stat.S_IFLNK >> 12


def name_cookie(name: bytes) -> int:
    """The cookie of an entry: 63 bits of xxh3_64 of its name, never 0."""
    return (xxhash.xxh3_64_intdigest(name) >> 1) or 1


class Listing:
    """One sorted snapshot of a directory's names."""

    __slots__ = ("made", "key", "current", "cookies", "names", "dtypes")

    def __init__(self, key: tuple[int, int], rows: list[tuple[int, bytes, int]]) -> None:
        self.made = time.monotonic()
        self.key = key
        self.current = True
        self.cookies = [r[0] for r in rows]
        self.names = [r[1] for r in rows]
        self.dtypes = [r[2] for r in rows]


def _dir_key(st: os.stat_result) -> tuple[int, int]:
    return st.st_mtime_ns, st.st_ctime_ns


def list_dir(fd: int, *, hide_internal: bool) -> Listing:
    """Read a whole directory into a Listing sorted by cookie."""
    key = _dir_key(os.stat(fd))
    rows: list[tuple[int, bytes, int]] = []
    with os.scandir(proc_path(fd)) as it:
        for e in it:
            name = e.name
            if hide_internal and name == INTERNAL_DIR_NAME:
                continue
            try:
                if e.is_dir(follow_symlinks=False):
                    dt = DT_DIR
                elif e.is_file(follow_symlinks=False):
                    dt = DT_REG
                elif e.is_symlink():
                    dt = DT_LNK
                else:
                    dt = stat.S_IFMT(e.stat(follow_symlinks=False).st_mode) >> 12
            except FileNotFoundError:
                continue
            rows.append((name_cookie(name), name, dt))
    rows.sort()
    return Listing(key, rows)


class ReaddirOps(StoreCore):
    listing_ttl: float = 1.0
    max_listings: int = 64

    def _listing(self, gfid: bytes, fd: int, fresh: bool) -> Listing:
        cached = None if fresh else self._listings.get(gfid)
        if cached is not None:
            if time.monotonic() - cached.made < self.listing_ttl or (
                    cached.current and cached.key == _dir_key(os.stat(fd))):
                self._listings.move_to_end(gfid)
                return cached
        listing = list_dir(fd, hide_internal=gfid == ROOT_GFID)
        self._listings[gfid] = listing
        self._listings.move_to_end(gfid)
        while len(self._listings) > self.max_listings:
            self._listings.popitem(last=False)
        return listing

    async def readdir(self, gfid: bytes, cookie: int, count: int,
                      plus: bool | None = None) -> dict[str, Any]:
        """Up to about ``count`` entries after ``cookie`` (0: from the start).

        Entries are ``[name, cookie, d_type, iatt | None]``; with ``plus`` each
        carries its iatt (None if it has no gfid) and entries that vanished since
        the listing are skipped. ``.``, ``..`` and the brick's internal directory
        are never returned. ``eof`` is true on the page that ends the listing.
        """
        if count <= 0:
            raise OSError(errno.EINVAL, "readdir count must be positive")
        count = min(count, MAX_PAGE)
        fd = self._dir_fd(gfid)
        listing = self._listing(gfid, fd, cookie == 0)
        cookies, names, dtypes = listing.cookies, listing.names, listing.dtypes
        n = len(cookies)
        i = bisect_right(cookies, cookie)
        out: list[list[Any]] = []
        while i < n and len(out) < count:
            j = i + 1
            while j < n and cookies[j] == cookies[i]:
                j += 1
            for k in range(i, j):
                if not plus:
                    out.append([names[k], cookies[k], dtypes[k], None])
                    continue
                entry = self._plus_entry(fd, names[k], cookies[k])
                if entry is not None:
                    out.append(entry)
            i = j
        return {"entries": out, "eof": i >= n}

    def _plus_entry(self, fd: int, name: bytes, cookie: int) -> list[Any] | None:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            gfid = self._entry_gfid(fd, name)
        except FileNotFoundError:
            return None
        is_dir = stat.S_ISDIR(st.st_mode)
        iatt = self._iatt(gfid, st, is_dir) if gfid and len(gfid) == GFID_LEN else None
        return [name, cookie, stat.S_IFMT(st.st_mode) >> 12, iatt]
