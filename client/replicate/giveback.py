"""Giving an eager lock back on one brick: post-op, unlock and a closed file's
release as the parts of as few requests as the brick takes.

``EagerLocks`` decides when locks go back and which go together; this module
says what each part is and how the parts survive a failure: a part that fails
is left out and the rest sent again, so a brick ends up as separate requests
would have left it.
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, Any

from pyglfs.client.layer import Layer, run_each
from pyglfs.client.replicate.changelog import encode
from pyglfs.rpc.brickops import AFR_DIRTY, COMPOUND_MAX

if TYPE_CHECKING:
    from pyglfs.client.replicate.eagerlock import LockState

log = logging.getLogger(__name__)

Ops = list[tuple[str, dict[str, Any]]]


def take_marks(st: LockState, i: int) -> dict[str, bytes] | None:
    """The post-op ``xattrop`` taking back the dirty marks brick i applied under
    ``st``'s hold (and forgetting them), or None when it applied none."""
    m = st.marks[i]
    if not any(m):
        return None
    st.marks[i] = [0, 0, 0]
    return {AFR_DIRTY: encode(-m[0], -m[1], -m[2])}


def give_back_ops(st: LockState, i: int, locked: int, closed: int, domain: str,
                  owner: bytes) -> Ops:
    """On brick i: the post-op and unlock of ``st`` (when ``locked``), then the
    release of its inode (when ``closed``)."""
    ops: Ops = []
    if locked:
        xop = take_marks(st, i)
        if xop is not None:
            ops.append(("xattrop", {"gfid": st.key, "xattrop": xop}))
        if st.entry:
            ops.append(("entrylk", {"pgfid": st.key, "domain": domain, "type": "un",
                                    "owner": owner, "block": False}))
        else:
            ops.append(("inodelk", {"gfid": st.key, "domain": domain, "type": "un",
                                    "start": 0, "len": 0, "owner": owner, "block": False}))
    if closed:
        ops.append(("release", {"gfid": st.key}))
    return ops


async def send_ops(child: Layer, i: int, ops: Ops) -> None:
    """``ops`` to brick i (``child``) in as few requests as the brick takes. A
    part that fails is logged and left out, the rest sent again. When the
    brick's answer is lost, only the unlocks are sent again (twice does no
    harm); a post-op twice would take the marks back twice, a release twice
    could drop another open of this client (a missed one stays counted until
    this connection ends)."""
    while ops:
        chunk, ops = ops[:COMPOUND_MAX], ops[COMPOUND_MAX:]
        try:
            if len(chunk) == 1:
                _, failed = await run_each(child, chunk)
            else:
                _, failed = await child.compound(chunk)
        except OSError as e:
            if e.errno == errno.ENOTCONN:
                # The brick drops this connection's locks and opens by itself.
                log.debug("give-back on brick %s: %s", i, e)
                return
            log.debug("give-back on brick %s: %s; unlocking anyway", i, e)
            for op in chunk:
                if op[0] in ("inodelk", "entrylk"):
                    _, again = await run_each(child, [op])
                    if again is not None:
                        log.debug("%s of %s on brick %s: %s", op[0],
                                  _key_of(op).hex(), i, again[1])
            continue
        if failed is not None:
            at, err = failed
            log.debug("%s of %s on brick %s: %s", chunk[at][0], _key_of(chunk[at]).hex(),
                      i, err)
            ops = chunk[at + 1:] + ops


def _key_of(op: tuple[str, dict[str, Any]]) -> bytes:
    key: bytes = op[1].get("gfid") or op[1]["pgfid"]
    return key
