"""The wire format of the local-read fd channel (rpc/PROTOCOL.md, "Handshake"),
shared by its server (brickd/localfds.py) and its client (client/localfds.py).

SOCK_SEQPACKET, one request per message: ``token (16) + gfid (16)``; the reply
is the errno as a 4-byte big-endian int, with the fd attached (SCM_RIGHTS)
when it is 0. Who is at the other end is judged by SO_PEERCRED.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from pyglfs.rpc.brickops import GFID_LEN

TOKEN_LEN = 16
REQUEST_LEN = TOKEN_LEN + GFID_LEN
REPLY = struct.Struct("!i")
FD = struct.Struct("i")
_UCRED = struct.Struct("3i")


def peer_uid(sock: Any) -> int:
    """The uid of a connected Unix socket's peer; ``sock`` is a stdlib or a trio socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return int(_UCRED.unpack(raw)[1])


def fd_rights(fd: int) -> list[tuple[int, int, bytes]]:
    """The ancillary data that sends ``fd`` along with a reply."""
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, FD.pack(fd))]


def received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """Every fd in a received message's ancillary data (the caller owns them all)."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % FD.size
            fds.extend(x[0] for x in FD.iter_unpack(data[:usable]))
    return fds
