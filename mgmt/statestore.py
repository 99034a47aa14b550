"""pyglfsd's state directory: node identity, peers, the listen record.

Layout (GlusterFS keeps the same ideas under /var/lib/glusterd)::

    <state>/pyglfsd.info    {"uuid": ..., "version": 1}   created once, never rewritten
    <state>/peers/<uuid>    one JSON file per peer
    <state>/listen          where the daemon listens, for the CLI to find it
    <state>/lock            flock'ed by the running daemon

Every write is atomic: a temporary file in the same directory, fsync, rename,
fsync of the directory, so a crash leaves the old or the new file, never a torn
one. A file that cannot be read or parsed raises ``StateError`` naming it; the
store never replaces state it could not read, because a fresh UUID or an empty
peer list would silently split the node from its pool.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import uuid as uuidlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = "/var/lib/pyglfs"
INFO_FILE = "pyglfsd.info"
LISTEN_FILE = "listen"
PEERS_DIR = "peers"
STATE_VERSION = 1


class StateError(Exception):
    """A state file is unreadable or corrupt; ``path`` names it for the operator."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class PeerRecord:
    """What a node keeps about one peer: identity and how to reach it."""

    uuid: str
    hostname: str
    port: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Any) -> PeerRecord:
        if (
            type(d) is not dict
            or type(d.get("uuid")) is not str
            or type(d.get("hostname")) is not str
            or type(d.get("port")) is not int
        ):
            raise ValueError("not a peer record (uuid, hostname, port)")
        _check_uuid(d["uuid"])
        return cls(uuid=d["uuid"], hostname=d["hostname"], port=d["port"])


def _check_uuid(text: str) -> str:
    if str(uuidlib.UUID(text)) != text:
        raise ValueError(f"not a canonical UUID: {text!r}")
    return text


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file only."""
    directory = path.parent
    tmp = directory / f".{path.name}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    """The parsed content of ``path``; StateError if it cannot be read or parsed."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StateError(path, f"cannot read: {exc.strerror}") from None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateError(path, f"corrupt state file (not valid JSON: {exc})") from None


class StateStore:
    """The on-disk state of one pyglfsd. All methods are synchronous and blocking;
    the daemon calls the writing ones through a worker thread."""

    def __init__(self, state_dir: Path | str) -> None:
        self.dir = Path(state_dir)
        self.peers_dir = self.dir / PEERS_DIR
        self._lock_fd: int | None = None

    # -- lifetime ---------------------------------------------------------
    def open(self, *, lock: bool = True) -> None:
        """Create the directory layout if missing and, with ``lock``, take the
        daemon lock (StateError if another pyglfsd holds it)."""
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.peers_dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StateError(exc.filename or self.dir, f"cannot create: {exc.strerror}") from None
        if lock:
            self._take_lock()

    def _take_lock(self) -> None:
        path = self.dir / "lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(path, f"cannot open: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StateError(path, "another pyglfsd is using this state directory") from None
            raise StateError(path, f"cannot lock: {exc.strerror}") from None
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- node identity ----------------------------------------------------
    def load_or_create_uuid(self) -> str:
        """This node's UUID: read from pyglfsd.info, or created on the very first start.

        A missing info file next to existing peers is refused: it means the
        identity was lost, and a new one would make the pool see a stranger.
        """
        path = self.dir / INFO_FILE
        if path.exists() or path.is_symlink():
            d = read_json(path)
            try:
                if type(d) is not dict or type(d.get("uuid")) is not str:
                    raise ValueError("no uuid")
                node = _check_uuid(d["uuid"])
            except ValueError as exc:
                raise StateError(path, f"corrupt state file ({exc})") from None
            version = d.get("version", STATE_VERSION)
            if type(version) is not int or version > STATE_VERSION:
                raise StateError(path, f"state version {version!r} is newer than this "
                                       f"pyglfsd understands ({STATE_VERSION})")
            return node
        if self.peer_files():
            raise StateError(path, "missing, but peers are recorded: refusing to create "
                                   "a new node UUID")
        node = str(uuidlib.uuid4())
        try:
            write_json(path, {"uuid": node, "version": STATE_VERSION})
        except OSError as exc:
            raise StateError(path, f"cannot write: {exc.strerror or exc}") from None
        return node

    # -- peers ------------------------------------------------------------
    def peer_files(self) -> list[Path]:
        try:
            names = os.listdir(self.peers_dir)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StateError(self.peers_dir, f"cannot list: {exc.strerror}") from None
        return sorted(self.peers_dir / n for n in names if not n.startswith("."))

    def load_peers(self) -> dict[str, PeerRecord]:
        """Every recorded peer by UUID; StateError names the first bad file."""
        peers: dict[str, PeerRecord] = {}
        for path in self.peer_files():
            d = read_json(path)
            try:
                rec = PeerRecord.from_json(d)
            except ValueError as exc:
                raise StateError(path, f"corrupt state file ({exc})") from None
            if rec.uuid != path.name:
                raise StateError(path, f"corrupt state file (holds uuid {rec.uuid})")
            peers[rec.uuid] = rec
        return peers

    def save_peer(self, rec: PeerRecord) -> None:
        _check_uuid(rec.uuid)
        write_json(self.peers_dir / rec.uuid, rec.to_json())

    def delete_peer(self, peer_uuid: str) -> None:
        _check_uuid(peer_uuid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.peers_dir / peer_uuid)
        fsync_dir(self.peers_dir)

    # -- listen record ----------------------------------------------------
    def save_listen(self, host: str, port: int) -> None:
        write_json(self.dir / LISTEN_FILE, {"host": host, "port": port, "pid": os.getpid()})

    def clear_listen(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.dir / LISTEN_FILE)


def read_listen_record(state_dir: Path | str) -> tuple[str, int] | None:
    """Where the daemon of ``state_dir`` said it listens, or None if it did not say
    (or the record is unreadable: the CLI then falls back to the default address)."""
    try:
        d = json.loads((Path(state_dir) / LISTEN_FILE).read_bytes())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if type(d) is not dict or type(d.get("host")) is not str or type(d.get("port")) is not int:
        return None
    return d["host"], d["port"]
