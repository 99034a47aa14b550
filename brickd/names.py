"""Names and gfids as the brick's disk sees them.

Confinement starts here: every name a client sends is one path component that
the brick can pass to an ``*at()`` call without it ever meaning anything but an
entry of the given directory. Handle paths are the only multi-component paths
the brick builds, and it builds them from gfids alone.
"""

from __future__ import annotations

import errno

from pyglfs.rpc.brickops import GFID_LEN, INTERNAL_XATTR_PREFIXES, NAME_MAX, ROOT_GFID

INTERNAL_DIR_NAME = b".pyglfs"
NULL_GFID = b"\x00" * GFID_LEN
_ID_LIMIT = (1 << 32) - 1

# A directory's handle is a symlink "../../ab/cd/<parent uuid>/<name>": relative to
# handles/xy/zw/ it names the parent's handle and then the entry, as in GlusterFS.
_DIR_PREFIX = b"../../"
_UUID_PATH_LEN = len(b"ab/cd/") + 36
_NAME_AT = len(_DIR_PREFIX) + _UUID_PATH_LEN + 1


def check_name(name: bytes, *, at_root: bool, hidden_errno: int = errno.EPERM) -> None:
    """Raise OSError unless ``name`` is one ordinary path component.

    ``.``, ``..``, ``/``, NUL and empty names are EINVAL, names over NAME_MAX
    bytes ENAMETOOLONG. The brick's internal directory is refused in the root
    with ``hidden_errno`` (lookups pass ENOENT so it stays invisible).
    """
    if len(name) > NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, "name too long")
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise OSError(errno.EINVAL, f"invalid name {name!r}")
    if at_root and name == INTERNAL_DIR_NAME:
        raise OSError(hidden_errno, "reserved name")


def check_gfid(gfid: bytes) -> None:
    """A gfid a client may give a new inode: not null, not the root's."""
    if len(gfid) != GFID_LEN or gfid == NULL_GFID or gfid == ROOT_GFID:
        raise OSError(errno.EINVAL, "invalid gfid for a new inode")


def check_owner(uid: int | None, gid: int | None) -> None:
    """EINVAL for ids the kernel cannot store (-1, i.e. 2**32 - 1, means "unchanged")."""
    for v in (uid, gid):
        if v is not None and not 0 <= v < _ID_LIMIT:
            raise OSError(errno.EINVAL, "uid or gid out of range")


def is_internal_xattr(name: str) -> bool:
    """True for xattrs that only the brick itself may change or reveal."""
    return name.startswith(INTERNAL_XATTR_PREFIXES)


def check_xattr_name(name: str) -> None:
    """EINVAL/ERANGE for names the kernel would choke on (NUL, empty, too long)."""
    if not name or "\0" in name:
        raise OSError(errno.EINVAL, "invalid xattr name")
    if len(name.encode("utf-8", "surrogateescape")) > 255:
        raise OSError(errno.ERANGE, "xattr name too long")


def gfid_str(gfid: bytes) -> str:
    """The canonical UUID text of a gfid, for handle names and log lines."""
    h = gfid.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def handle_rel(gfid: bytes) -> bytes:
    """The handle's path relative to ``.pyglfs/handles``: ``ab/cd/<uuid>``."""
    h = gfid.hex()
    return f"{h[:2]}/{h[2:4]}/{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()


def handle_dirs(gfid: bytes) -> tuple[bytes, bytes]:
    """The two fan-out directories that hold a gfid's handle."""
    h = gfid.hex().encode()
    return h[:2], h[:2] + b"/" + h[2:4]


def dir_handle_target(pgfid: bytes, name: bytes) -> bytes:
    """The symlink target of a directory's handle: its parent's handle, then its name."""
    return _DIR_PREFIX + handle_rel(pgfid) + b"/" + name


def parse_dir_handle(target: bytes) -> tuple[bytes, bytes] | None:
    """Split a directory handle's target into (parent gfid, name); None if malformed."""
    if not target.startswith(_DIR_PREFIX) or target[_NAME_AT - 1:_NAME_AT] != b"/":
        return None
    name = target[_NAME_AT:]
    if not name or b"/" in name or name in (b".", b".."):
        return None
    uuid_part = target[len(_DIR_PREFIX) + 6:_NAME_AT - 1]
    try:
        pgfid = bytes.fromhex(uuid_part.replace(b"-", b"").decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    if len(pgfid) != GFID_LEN or dir_handle_target(pgfid, name) != target:
        return None
    return pgfid, name


def proc_path(fd: int, name: bytes = b"") -> bytes:
    """A path reaching ``name`` in the directory open as ``fd`` (or ``fd`` itself).

    Used for xattr calls, which have no ``*at()`` form: with ``follow_symlinks``
    off it reaches exactly the entry, however deep the directory is.
    """
    if name:
        return b"/proc/self/fd/%d/%s" % (fd, name)
    return b"/proc/self/fd/%d" % fd

