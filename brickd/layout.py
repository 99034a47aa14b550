"""The brick directory on disk, and the checks a brick passes before it serves.

```
<root>/                      the user's tree, as plain files (trusted.gfid on each inode)
<root>/.pyglfs/handles/ab/cd/<gfid>
                             hard link (non-directories, symlinks included) or, for a
                             directory, a symlink "../../xy/zw/<parent gfid>/<name>"
<root>/.pyglfs/indices/      pending-heal index (brickd/changelog.py owns it)
<root>/.pyglfs/unlink/       reserved for inodes unlinked while open
```

The root carries ``trusted.pyglfs.volume-id`` (the volume's UUID, 16 raw bytes)
so a brick never serves a directory that belongs to another volume, and a
missing directory is refused, never created: an unmounted disk must not be
silently filled through its mount point.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import uuid

from pyglfs.brickd.names import INTERNAL_DIR_NAME, handle_dirs, handle_rel
from pyglfs.rpc.brickops import GFID_XATTR, ROOT_GFID, VOLUME_ID_XATTR

log = logging.getLogger(__name__)

HANDLES_DIR = b"handles"
UNLINK_DIR = b"unlink"
INTERNAL_SUBDIRS = (HANDLES_DIR, b"indices", UNLINK_DIR)
# The root's handle points from handles/00/00/ back up to the brick root.
ROOT_HANDLE_TARGET = b"../../../.."
_PROBE_XATTR = "trusted.pyglfs.probe"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class BrickRefused(Exception):
    """The directory cannot be served as this brick; the message says why."""


def open_root(root: str) -> int:
    """Open the brick root, refusing anything but an existing directory."""
    try:
        return os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        raise BrickRefused(
            f"brick directory {root} does not exist (is its disk mounted?); "
            "a brick never creates its own root") from None
    except NotADirectoryError:
        raise BrickRefused(f"brick path {root} is not a directory") from None
    except OSError as e:
        raise BrickRefused(f"cannot open brick directory {root}: {e.strerror}") from None


def probe_xattrs(root: str, root_fd: int) -> None:
    """Refuse a filesystem (or an unprivileged process) without trusted.* xattrs."""
    try:
        os.setxattr(root_fd, _PROBE_XATTR, b"1")
        ok = os.getxattr(root_fd, _PROBE_XATTR) == b"1"
        os.removexattr(root_fd, _PROBE_XATTR)
    except OSError as e:
        raise BrickRefused(
            f"trusted.* extended attributes do not work on {root}: {e.strerror} "
            "(the brick needs root and a filesystem with xattr support)") from None
    if not ok:
        raise BrickRefused(f"extended attributes on {root} do not read back what was written")


def check_volume_id(root: str, root_fd: int, volume_id: str, *, create: bool) -> None:
    """Bind the root to ``volume_id``, or refuse if it belongs to another volume.

    Without ``create`` the root must already carry the id (an initialised brick).
    """
    try:
        want = uuid.UUID(volume_id)
    except ValueError:
        raise BrickRefused(f"invalid volume id {volume_id!r} for brick {root}") from None
    try:
        have = os.getxattr(root_fd, VOLUME_ID_XATTR)
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise BrickRefused(f"cannot read the volume id of {root}: {e.strerror}") from None
        if not create:
            raise BrickRefused(
                f"{root} is not an initialised brick (no {VOLUME_ID_XATTR})") from None
        os.setxattr(root_fd, VOLUME_ID_XATTR, want.bytes)
        log.info("brick=%s bound to volume %s", root, want)
        return
    if have != want.bytes:
        shown = str(uuid.UUID(bytes=have)) if len(have) == 16 else have.hex()
        raise BrickRefused(
            f"brick directory {root} belongs to volume {shown}, not to volume {want}; "
            f"refusing to serve it")


def prepare_internal(root: str, root_fd: int, *, create: bool) -> tuple[int, int]:
    """Create (or check) ``.pyglfs`` and the root's gfid; return (internal fd, handles fd)."""
    try:
        have = os.getxattr(root_fd, GFID_XATTR)
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise
        os.setxattr(root_fd, GFID_XATTR, ROOT_GFID)
        have = ROOT_GFID
    if have != ROOT_GFID:
        raise BrickRefused(f"{root} carries gfid {have.hex()}: it is not a brick root")
    if create:
        _mkdir_quiet(root_fd, INTERNAL_DIR_NAME)
    try:
        ifd = os.open(INTERNAL_DIR_NAME, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=root_fd)
    except OSError as e:
        raise BrickRefused(f"{root}/.pyglfs is missing or not a directory: {e.strerror}") from None
    try:
        for sub in INTERNAL_SUBDIRS:
            _mkdir_quiet(ifd, sub)
        hfd = os.open(HANDLES_DIR, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=ifd)
    except BaseException:
        os.close(ifd)
        raise
    rel = handle_rel(ROOT_GFID)
    for d in handle_dirs(ROOT_GFID):
        _mkdir_quiet(hfd, d)
    try:
        os.symlink(ROOT_HANDLE_TARGET, rel, dir_fd=hfd)
    except FileExistsError:
        pass
    return ifd, hfd


def _mkdir_quiet(dir_fd: int, name: bytes) -> None:
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    except FileExistsError:
        pass


def remove_orphans(hfd: int) -> int:
    """Remove handles whose inode has no name left (a crash between unlink and release).

    A non-directory handle with one link is an orphan. A symlink with one link is
    a directory's handle unless it carries a gfid (then it was a user's symlink).
    Returns how many handles went.
    """
    removed = 0
    for top in _subdirs(hfd, b""):
        for mid in _subdirs(hfd, top):
            base = top + b"/" + mid
            with os.scandir(b"/proc/self/fd/%d/%s" % (hfd, base)) as it:
                names = [e.name for e in it]
            for name in names:
                rel = base + b"/" + name
                try:
                    st = os.stat(rel, dir_fd=hfd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if st.st_nlink != 1 or stat.S_ISDIR(st.st_mode):
                    continue
                if stat.S_ISLNK(st.st_mode) and not _has_gfid(hfd, rel):
                    continue
                os.unlink(rel, dir_fd=hfd)
                removed += 1
                log.info("removed orphan handle %s", name.decode(errors="replace"))
    return removed


def _subdirs(hfd: int, rel: bytes) -> list[bytes]:
    path = b"/proc/self/fd/%d/%s" % (hfd, rel) if rel else b"/proc/self/fd/%d" % hfd
    with os.scandir(path) as it:
        return [e.name for e in it if e.is_dir(follow_symlinks=False) and len(e.name) == 2]


def _has_gfid(hfd: int, rel: bytes) -> bool:
    try:
        os.getxattr(b"/proc/self/fd/%d/%s" % (hfd, rel), GFID_XATTR, follow_symlinks=False)
    except OSError:
        return False
    return True

