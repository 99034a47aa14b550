"""What replicate knows per inode, and which brick serves its reads.

The table remembers, per gfid, which bricks must not serve reads of each kind
(blamed by another brick's changelog, missing the inode, or having just failed
a change) and the brick chosen to serve them. It is bounded (least recently
used entries go first): a forgotten gfid costs one lookup on all bricks the
next time it is read, never a read from a stale copy.

Knowledge comes from two places: a lookup (the changelog as the bricks hold
it) and this client's own failed changes (known before the bricks record
them). ``learn`` replaces what a lookup saw; ``blame`` only adds.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from pyglfs.client.replicate.changelog import Masks
from pyglfs.rpc.tuning import TABLE_LIMIT


class InodeInfo:
    """Read-side state of one gfid."""

    __slots__ = ("bad", "read_child", "pending")

    def __init__(self, bad: Masks, pending: bool) -> None:
        self.bad = bad
        self.read_child = -1
        self.pending = pending

    def __repr__(self) -> str:
        return f"<InodeInfo bad={self.bad} read={self.read_child} pending={self.pending}>"


class InodeTable:
    """Bounded map gfid -> ``InodeInfo`` for a replica set of ``n`` bricks.

    ``prefer`` is ``read-subvolume-index``: the brick to read from when it is a
    good source (-1: spread reads over the good bricks by gfid). Without it,
    ``choose_local`` (``cluster.choose-local``) spreads them over the good
    bricks on this host when there are any (their reads skip the network:
    ``client/localfds.py``), else over all good bricks.
    """

    def __init__(self, n: int, limit: int = TABLE_LIMIT, prefer: int = -1,
                 choose_local: bool = True) -> None:
        self.n = n
        self.limit = max(limit, 16)
        self.prefer = prefer if 0 <= prefer < n else -1
        self.choose_local = choose_local
        self._map: OrderedDict[bytes, InodeInfo] = OrderedDict()

    def __len__(self) -> int:
        return len(self._map)

    def get(self, gfid: bytes) -> InodeInfo | None:
        info = self._map.get(gfid)
        if info is not None:
            self._map.move_to_end(gfid)
        return info

    def _put(self, gfid: bytes, info: InodeInfo) -> InodeInfo:
        self._map[gfid] = info
        self._map.move_to_end(gfid)
        while len(self._map) > self.limit:
            self._map.popitem(last=False)
        return info

    def learn(self, gfid: bytes, bad: Masks, pending: bool) -> InodeInfo:
        """Record what a lookup found; the read brick stays if still good."""
        info = self._map.get(gfid)
        if info is None:
            return self._put(gfid, InodeInfo(bad, pending))
        info.bad = bad
        info.pending = pending
        self._map.move_to_end(gfid)
        return info

    def blame(self, gfid: bytes, kinds: int, bricks: int) -> None:
        """Bricks in ``bricks`` missed changes of ``kinds`` (bitmask of kinds)."""
        if not bricks or not kinds:
            return
        info = self._map.get(gfid)
        if info is None:
            info = self._put(gfid, InodeInfo([0, 0, 0], True))
        for k in range(3):
            if kinds >> k & 1:
                info.bad[k] |= bricks
        info.pending = True
        if info.read_child >= 0 and bricks >> info.read_child & 1:
            info.read_child = -1

    def forget(self, gfid: bytes) -> None:
        self._map.pop(gfid, None)

    def order(self, gfid: bytes, info: InodeInfo, kind: int, up: int,
              also: int = -1, local: Callable[[], int] | None = None) -> list[int]:
        """Bricks to try for a read of ``kind``, best first; empty when none is good.

        With ``also``, bricks good for both kinds come first if there are any
        (a stat wants size and mode from one good copy). The first choice
        sticks (``read_child``) while it stays good, so a directory listing
        keeps to one brick and its cookies stay valid. ``local`` gives the
        mask of bricks on this host, asked only when a first choice is made.
        """
        good = up & ~info.bad[kind]
        if also >= 0 and good & ~info.bad[also]:
            good &= ~info.bad[also]
        if not good:
            return []
        first = info.read_child
        if first < 0 or not good >> first & 1:
            if self.prefer >= 0 and good >> self.prefer & 1:
                first = self.prefer
            else:
                pool = good
                if self.choose_local and local is not None:
                    pool = good & local() or good
                cands = [i for i in range(self.n) if pool >> i & 1]
                first = cands[int.from_bytes(gfid[-4:], "big") % len(cands)]
            info.read_child = first
        rest = [i for i in range(self.n) if good >> i & 1 and i != first]
        return [first, *rest]
