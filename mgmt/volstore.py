"""Volume definitions as every node keeps them, and the files generated from them.

Layout under the state directory (GlusterFS keeps the same under /var/lib/glusterd/vols)::

    vols/<name>/info            the VolumeRecord (JSON)
    vols/<name>/auth.json       {"username", "password"} for the bricks (mode 0600)
    vols/<name>/<name>.vol      the client volfile (what ``getspec`` serves)
    vols/<name>/bricks/<i>.vol  brick i's volfile
    vols/<name>/run/<i>.json    {"pid", "port"} of a local brick this node started

Every node holds the same ``info`` for a volume (a cluster transaction writes it
everywhere); ``run/`` is this node's own. A record is written before memory
changes, so what the daemon reports is on disk; an unreadable record stops the
daemon with the file's name, as the peer store does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyglfs.mgmt.statestore import StateError, read_json, write_atomic, write_json
from pyglfs.volfiles.generator import (
    VOLUME_NAME_RE,
    BrickSpec,
    VolumeSpec,
    brick_volfile,
    client_volfile,
)

VOLS_DIR = "vols"
CREATED, STARTED, STOPPED = "Created", "Started", "Stopped"
STATUSES = (CREATED, STARTED, STOPPED)
# A brick whose port is not known yet still needs a valid port in the volfile;
# clients re-fetch the volfile once the volume is started.
UNKNOWN_PORT = 49750


@dataclass
class BrickRef:
    """One brick: ``host:path``, served by the node ``node`` (its UUID)."""

    host: str
    path: str
    node: str
    port: int = 0

    @property
    def name(self) -> str:
        return f"{self.host}:{self.path}"


@dataclass
class VolumeRecord:
    """A volume's definition. Bricks ``k*replica .. (k+1)*replica-1`` are replica set k."""

    name: str
    id: str
    replica: int
    bricks: list[BrickRef]
    status: str = CREATED
    options: dict[str, str] = field(default_factory=dict)
    username: str = ""
    password: str = ""
    version: int = 1

    @property
    def type(self) -> str:
        if self.replica == 1:
            return "Distribute"
        return "Replicate" if len(self.bricks) == self.replica else "Distributed-Replicate"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Any) -> VolumeRecord:
        """Parse a record; ValueError saying what is wrong."""
        if type(d) is not dict:
            raise ValueError("not a map")
        name, vid, replica = d.get("name"), d.get("id"), d.get("replica")
        if type(name) is not str or not VOLUME_NAME_RE.fullmatch(name):
            raise ValueError("bad name")
        if type(vid) is not str or str(uuidlib.UUID(vid)) != vid:
            raise ValueError("bad id")
        if type(replica) is not int or replica < 1:
            raise ValueError("bad replica count")
        raw = d.get("bricks")
        if type(raw) is not list or not raw:
            raise ValueError("bad bricks")
        bricks = []
        for b in raw:
            if (type(b) is not dict or any(type(b.get(k)) is not str
                                           for k in ("host", "path", "node"))
                    or type(b.get("port", 0)) is not int):
                raise ValueError("bad brick")
            bricks.append(BrickRef(b["host"], b["path"], b["node"], b.get("port", 0)))
        status, options = d.get("status"), d.get("options", {})
        if status not in STATUSES:
            raise ValueError("bad status")
        if type(options) is not dict or not all(type(k) is str and type(v) is str
                                                for k, v in options.items()):
            raise ValueError("bad options")
        user, pw, version = d.get("username", ""), d.get("password", ""), d.get("version", 1)
        if type(user) is not str or type(pw) is not str or type(version) is not int:
            raise ValueError("bad credentials or version")
        return cls(name, vid, replica, bricks, status, dict(options), user, pw, version)

    def spec(self) -> VolumeSpec:
        return VolumeSpec(self.name, self.id, self.replica,
                          [BrickSpec(b.host, b.port or UNKNOWN_PORT, b.path)
                           for b in self.bricks],
                          dict(self.options), self.username, self.password)

    def local(self, node: str) -> list[tuple[int, BrickRef]]:
        return [(i, b) for i, b in enumerate(self.bricks) if b.node == node]


class VolumeStore:
    """The ``vols/`` directory of one node. Synchronous and blocking: the daemon
    calls the writing methods through a worker thread."""

    def __init__(self, state_dir: Path | str) -> None:
        self.dir = Path(state_dir) / VOLS_DIR
        # Called with the volume name when what getspec serves a mount changed
        # (see ``save``) or the volume went away (mgmt/volwatch.py); from the
        # writing thread.
        self.on_client_volfile: Callable[[str], None] | None = None

    def vol_dir(self, name: str) -> Path:
        return self.dir / name

    def load(self) -> dict[str, VolumeRecord]:
        """Every volume by name; StateError names the first bad file."""
        if not self.dir.exists():
            return {}
        vols: dict[str, VolumeRecord] = {}
        for entry in sorted(os.listdir(self.dir)):
            if entry.startswith("."):
                continue
            path = self.dir / entry / "info"
            d = read_json(path)
            try:
                rec = VolumeRecord.from_json(d)
            except ValueError as exc:
                raise StateError(path, f"corrupt state file ({exc})") from None
            if rec.name != entry:
                raise StateError(path, f"corrupt state file (holds volume {rec.name})")
            vols[rec.name] = rec
        return vols

    def save(self, rec: VolumeRecord) -> None:
        """Write the record, its auth file and its volfiles.

        ``on_client_volfile`` hears of every change in what a mount's ``getspec``
        gets: the client volfile's text, and the volume entering or leaving the
        started state (a mount is served the volfile only while started).
        """
        d = self.vol_dir(rec.name)
        was_started = self._started_on_disk(d)
        (d / "bricks").mkdir(mode=0o700, parents=True, exist_ok=True)
        write_json(d / "auth.json", {"username": rec.username, "password": rec.password})
        write_json(d / "info", rec.to_json())
        spec = rec.spec()
        text = client_volfile(spec)
        path = d / f"{rec.name}.vol"
        try:
            changed = path.read_text() != text
        except OSError:
            changed = True
        write_text(path, text)
        for i in range(len(rec.bricks)):
            write_text(d / "bricks" / f"{i}.vol", brick_volfile(spec, i))
        changed = changed or was_started != (rec.status == STARTED)
        if changed and self.on_client_volfile is not None:
            self.on_client_volfile(rec.name)

    @staticmethod
    def _started_on_disk(d: Path) -> bool:
        try:
            old = read_json(d / "info")
        except StateError:
            return False
        return type(old) is dict and old.get("status") == STARTED

    def delete(self, name: str) -> None:
        d = self.vol_dir(name)
        if d.exists():
            tomb = self.dir / f".deleted.{name}.{os.getpid()}"
            os.replace(d, tomb)
            shutil.rmtree(tomb, ignore_errors=True)
            if self.on_client_volfile is not None:
                self.on_client_volfile(name)

    def client_volfile(self, name: str) -> str:
        return (self.vol_dir(name) / f"{name}.vol").read_text()

    def auth_file(self, name: str) -> Path:
        return self.vol_dir(name) / "auth.json"

    # -- run records of local bricks -----------------------------------------
    def save_run(self, name: str, index: int, pid: int, port: int) -> None:
        run = self.vol_dir(name) / "run"
        run.mkdir(mode=0o700, exist_ok=True)
        write_json(run / f"{index}.json", {"pid": pid, "port": port})

    def load_run(self, name: str, index: int) -> tuple[int, int] | None:
        try:
            d = read_json(self.vol_dir(name) / "run" / f"{index}.json")
        except StateError:
            return None
        if type(d) is not dict or type(d.get("pid")) is not int or type(d.get("port")) is not int:
            return None
        return d["pid"], d["port"]

    def clear_run(self, name: str, index: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.vol_dir(name) / "run" / f"{index}.json")


def write_text(path: Path, text: str) -> None:
    write_atomic(path, text.encode())
