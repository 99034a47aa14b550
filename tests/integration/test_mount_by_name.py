"""Mounting by name: ``pyglfs-mount HOST:/VOLUME[/SUBDIR] MNT`` and ``mount -t
fuse.pyglfs`` fetch the volfile from real pyglfsd processes (127.0.0.2/3).

One pool for the module: two daemons on the same (free) port of their own
address, a started replica-2 volume ``gvol0`` and a volume ``gstop`` that is
created but not started. Every mount is unmounted and every process (daemons,
bricks, mounts) is stopped by its PID, whatever the test got to.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import trio
from helpers.mounts import Mount, files_hold, fuse_skip_reason, is_mounted, mount_entry, mount_env
from helpers.net import free_port
from helpers.procs import stop_pids
from test_mgmt_volumes import VolNode

from pyglfs.client.mount import source_name, volfile_servers
from pyglfs.client.options import parse_mount_options, parse_source
from pyglfs.client.volfetch import VolfetchError, fetch_volfile
from pyglfs.rpc.connection import open_rpc_connection

MOUNT_CMD = [sys.executable, "-m", "pyglfs.client.mount"]
DOWN = "127.0.0.9"  # no daemon listens there in these tests

_skip = fuse_skip_reason()
needs_fuse = pytest.mark.skipif(_skip is not None, reason=_skip or "")


@dataclass
class Pool:
    a: VolNode
    b: VolNode
    port: int
    bricks: list[Path]


@contextmanager
def replica_pool(root: Path) -> Iterator[Pool]:
    """pyglfsd on 127.0.0.2 and .3 in one pool, with replica-2 ``gvol0`` started;
    every daemon and brick stopped by PID at the end."""
    pids: list[int] = []
    a, b = VolNode(root, "127.0.0.2", pids), VolNode(root, "127.0.0.3", pids)
    try:
        port = free_port(a.ip)
        a.start(port)
        b.start(port)
        assert a.cli("peer", "probe", b.addr).returncode == 0
        bricks = [root / "data" / "b1", root / "data" / "b2"]
        r = a.cli("volume", "create", "gvol0", "replica", "2", f"{a.ip}:{bricks[0]}",
                  f"{b.ip}:{bricks[1]}", "force")
        assert r.returncode == 0, r.stderr
        assert a.cli("volume", "start", "gvol0").returncode == 0
        yield Pool(a, b, port, bricks)
    finally:
        stop_pids(pids)
        stop_pids([p for n in (a, b) for p in n.brick_pids()])


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    """``replica_pool`` plus ``gstop``, a volume created and never started."""
    root = tmp_path_factory.mktemp("byname")
    with replica_pool(root) as p:
        r = p.a.cli("volume", "create", "gstop", f"{p.a.ip}:{root}/data/s1", "force")
        assert r.returncode == 0, r.stderr
        yield p


# -- mounting -----------------------------------------------------------------
def _run_mount(args: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MOUNT_CMD, *args], capture_output=True, text=True,
                          timeout=timeout, env=mount_env(), stdin=subprocess.DEVNULL)


def mount_by_name(source: str, mnt: Path, options: str = "") -> Mount:
    """``pyglfs-mount SOURCE MNT``; returns once mounted (fails the test otherwise)."""
    mnt.mkdir(parents=True, exist_ok=True)
    log, pid_file = mnt.parent / f"{mnt.name}.log", mnt.parent / f"{mnt.name}.pid"
    opts = ",".join(o for o in (f"log-file={log}", options) if o)
    r = _run_mount([source, str(mnt), "-o", opts, "--pid-file", str(pid_file)])
    if r.returncode != 0:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], timeout=10)
        pytest.fail(f"pyglfs-mount {source} exited {r.returncode}: {r.stderr}")
    return Mount(mnt, int(pid_file.read_text()), log)


@pytest.fixture
def mounts() -> Iterator[list[Mount]]:
    """Mounts a test made; unmounted (and their processes stopped) at the end."""
    made: list[Mount] = []
    try:
        yield made
    finally:
        for m in made:
            m.unmount()
    for m in made:
        bad = m.unexpected_errors()
        assert bad is None, f"the mount logged an unexpected exception:\n{bad}"


def _port_opt(pool: Pool) -> str:
    return f"volfile-server-port={pool.port}"


@pytest.mark.mount
@needs_fuse
def test_mount_by_name_writes_to_both_bricks(pool: Pool, mounts: list[Mount],
                                            tmp_path: Path) -> None:
    m = mount_by_name("127.0.0.2:/gvol0", tmp_path / "mnt", _port_opt(pool))
    mounts.append(m)
    entry = mount_entry(m.mountpoint)
    assert entry is not None and entry["fstype"] == "fuse.pyglfs"
    assert entry["source"] == "127.0.0.2:/gvol0"
    (m.mountpoint / "hello.txt").write_bytes(b"by name\n")
    assert files_hold([brick / "hello.txt" for brick in pool.bricks], b"by name\n")
    assert f"getspec from 127.0.0.2:{pool.port}" in m.log_text()


@pytest.mark.mount
@needs_fuse
def test_backup_volfile_server_when_the_first_is_down(pool: Pool, mounts: list[Mount],
                                                      tmp_path: Path) -> None:
    m = mount_by_name(f"{DOWN}:/gvol0", tmp_path / "mnt",
                      f"{_port_opt(pool)},backup-volfile-servers=127.0.0.3")
    mounts.append(m)
    assert mount_entry(m.mountpoint)["source"] == f"{DOWN}:/gvol0"  # type: ignore[index]
    assert f"getspec from 127.0.0.3:{pool.port}" in m.log_text()
    (m.mountpoint / "via-backup").write_bytes(b"b")
    assert files_hold([b / "via-backup" for b in pool.bricks], b"b")


def _refused(args: list[str], mnt: Path) -> str:
    """Run a mount expected to fail: exit 1, one message, nothing mounted."""
    mnt.mkdir(exist_ok=True)
    r = _run_mount([*args, "-o", f"log-file={mnt.parent / 'refused.log'}"])
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert not is_mounted(mnt)
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("pyglfs-mount: ") and r.stderr.count("\n") == 1, r.stderr
    return r.stderr


def test_refusals_mount_nothing(pool: Pool, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    port = _port_opt(pool)
    err = _refused(["127.0.0.2:/nosuch", str(mnt), "-o", port], mnt)
    assert "Volume nosuch does not exist" in err
    err = _refused(["127.0.0.2:/gstop", str(mnt), "-o", port], mnt)
    assert "Volume gstop is not started" in err
    err = _refused([f"{DOWN}:/gvol0", str(mnt), "-o",
                    f"{port},backup-volfile-servers=127.0.0.10"], mnt)
    assert f"{DOWN}:{pool.port}: " in err and f"127.0.0.10:{pool.port}: " in err
    assert "nothing mounted" in err
    for bad, why in (("127.0.0.2:/", "has no volume name"), (":/gvol0", "has no host"),
                     ("gvol0", "expected HOST:/VOLUME[/SUBDIR]")):
        assert why in _refused([bad, str(mnt), "-o", port], mnt)


def test_client_role_gets_getspec_only(pool: Pool) -> None:
    async def go() -> None:
        async with open_rpc_connection(pool.a.ip, pool.port, volume="gvol0", role="client",
                                       client_id="t") as conn:
            spec = await conn.call("getspec", {"volume": "gvol0"}, timeout=10)
            assert "type cluster/replicate" in spec["volfile"]
            for op in ("volume_list", "peer_probe", "txn_lock"):
                with pytest.raises(OSError) as ei:
                    await conn.call(op, {}, timeout=10)
                assert ei.value.errno == errno.EPERM and "not served to clients" in str(ei.value)
            with pytest.raises(OSError) as ei:
                await conn.call("getspec", {"volume": "gstop"}, timeout=10)
            assert ei.value.errno == errno.ENXIO
        # The CLI's role still gets a volume's volfile whatever its state.
        async with open_rpc_connection(pool.a.ip, pool.port, volume="", role="mgmt",
                                       client_id="t") as conn:
            assert "gstop" in (await conn.call("getspec", {"volume": "gstop"}))["volume"]

    trio.run(go)


def test_fetch_volfile_names_every_server_tried(pool: Pool) -> None:
    down = [(DOWN, pool.port), ("127.0.0.10", pool.port)]
    got = trio.run(fetch_volfile, [*down, ("127.0.0.3", pool.port)], "gvol0")
    assert got.server == ("127.0.0.3", pool.port) and got.graph.name == "gvol0"
    assert "type cluster/replicate" in got.text
    with pytest.raises(VolfetchError) as ei:
        trio.run(fetch_volfile, down, "gvol0")
    assert [s for s, _ in ei.value.attempts] == down and ei.value.errno == errno.ENOTCONN
    assert [why for _, why in ei.value.attempts] == ["Connection refused"] * 2
    with pytest.raises(VolfetchError) as ei:
        trio.run(partial(fetch_volfile, connect_timeout=3), [("no-such-host.invalid", 1)], "v")
    assert "no-such-host.invalid:1: " in str(ei.value)
    # A refusal is the pool's answer: the next server is not asked.
    with pytest.raises(VolfetchError) as ei:
        trio.run(fetch_volfile, [("127.0.0.2", pool.port), ("127.0.0.3", pool.port)], "nosuch")
    assert len(ei.value.attempts) == 1 and ei.value.errno == errno.ENOENT


def test_servers_and_source_name_without_daemons() -> None:
    opts = parse_mount_options("backup-volfile-servers=h2:h1:h3")
    assert volfile_servers(parse_source("h1:/v"), opts) == [
        ("h1", 24750), ("h2", 24750), ("h3", 24750)]
    opts = parse_mount_options("volfile-server-port=7000")
    assert volfile_servers(parse_source("h1:/v"), opts) == [("h1", 7000)]
    assert source_name(parse_source("h1:v//a/b/")) == "h1:/v/a/b"
    assert source_name(parse_source("[::1]:/v")) == "[::1]:/v"


@pytest.mark.mount
@needs_fuse
def test_subdirectory_mount(pool: Pool, mounts: list[Mount], tmp_path: Path) -> None:
    top = mount_by_name("127.0.0.2:/gvol0", tmp_path / "top", _port_opt(pool))
    mounts.append(top)
    (top.mountpoint / "app" / "data").mkdir(parents=True)
    (top.mountpoint / "app" / "data" / "before").write_bytes(b"1")
    (top.mountpoint / "app" / "plain").write_bytes(b"")
    (top.mountpoint / "outside").write_bytes(b"secret")

    m = mount_by_name("127.0.0.3:/gvol0/app/data", tmp_path / "sub", _port_opt(pool))
    mounts.append(m)
    mnt = m.mountpoint
    assert mount_entry(mnt)["source"] == "127.0.0.3:/gvol0/app/data"  # type: ignore[index]
    assert sorted(os.listdir(mnt)) == ["before"]
    assert os.stat(mnt).st_ino == 1
    (mnt / "made-inside").write_bytes(b"in")
    (mnt / "d").mkdir()
    (mnt / "d" / "f").write_bytes(b"deep")
    assert files_hold([brick / "app" / "data" / "made-inside" for brick in pool.bricks], b"in")
    assert files_hold([brick / "app" / "data" / "d" / "f" for brick in pool.bricks], b"deep")
    for brick in pool.bricks:
        assert not (brick / "made-inside").exists()
    assert not (mnt / "outside").exists() and not (mnt / "app").exists()
    # ".." of the mount's root is the directory the mount sits in, not /app.
    parent = os.stat(mnt / "..")
    assert (parent.st_dev, parent.st_ino) == (os.stat(tmp_path).st_dev, os.stat(tmp_path).st_ino)
    r = subprocess.run(["sh", "-c", 'cd "$1" && cd .. && pwd -P', "sh", str(mnt)],
                       capture_output=True, text=True, timeout=10)
    assert r.stdout.strip() == str(tmp_path.resolve())
    assert sorted(os.listdir(top.mountpoint / "app" / "data")) == ["before", "d", "made-inside"]

    bad = tmp_path / "bad"
    err = _refused(["127.0.0.2:/gvol0/app/nope", str(bad), "-o", _port_opt(pool)], bad)
    assert "subdirectory /app/nope of volume gvol0 does not exist" in err
    err = _refused(["127.0.0.2:/gvol0/app/plain/x", str(bad), "-o", _port_opt(pool)], bad)
    assert "/app/plain of volume gvol0 is not a directory" in err


def test_inode_table_with_a_subdirectory_root() -> None:
    from pyglfs.client.fuse.inodes import ROOT_INODE, InodeTable, ino_of, new_gfid
    from pyglfs.rpc.brickops import ROOT_GFID

    sub, child = new_gfid(), new_gfid()
    t = InodeTable(sub)
    assert t.gfid(ROOT_INODE) == sub and t.ino(sub) == ROOT_INODE
    assert t.ino(child) == ino_of(child)
    with pytest.raises(OSError) as ei:
        t.ino(ROOT_GFID)  # the volume's root is outside the mount
    assert ei.value.errno == errno.EIO
    t.add(ROOT_INODE, sub)
    t.forget(ROOT_INODE, 5)
    assert t.gfid(ROOT_INODE) == sub and len(t) == 1


# -- mount(8) and fstab, through /sbin/mount.fuse.pyglfs -----------------------
HELPER = Path("/sbin/mount.fuse.pyglfs")
HELPER_SRC = Path(__file__).resolve().parents[2] / "deploy" / "mount.fuse.pyglfs"
_helper_skip = (None if HELPER.exists() and HELPER.read_bytes() == HELPER_SRC.read_bytes()
                else f"{HELPER} is missing or not this checkout's: run make install")
needs_helper = pytest.mark.skipif(_helper_skip is not None, reason=_helper_skip or "")


def _mount8(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = mount_env({"PYGLFS_MOUNT": str(Path(sys.executable).parent / "pyglfs-mount")})
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env,
                          stdin=subprocess.DEVNULL)


def _helper_mount(mnt: Path, log: Path, mounts: list[Mount]) -> Mount:
    """The Mount that mount(8) made, found by the PID its log names."""
    match = re.search(r"mounted volume \S+ on .* pid (\d+)\)", log.read_text())
    assert match, log.read_text()
    m = Mount(mnt, int(match.group(1)), log)
    mounts.append(m)
    return m


@pytest.mark.mount
@needs_fuse
@needs_helper
def test_mount_t_by_name_and_umount(pool: Pool, mounts: list[Mount], tmp_path: Path) -> None:
    mnt, log = tmp_path / "mnt", tmp_path / "helper.log"
    mnt.mkdir()
    r = _mount8(["mount", "-t", "fuse.pyglfs", "127.0.0.2:/gvol0/", str(mnt), "-o",
                 f"{_port_opt(pool)},log-file={log}"])
    assert r.returncode == 0, r.stderr
    m = _helper_mount(mnt, log, mounts)
    entry = mount_entry(mnt)
    assert entry is not None and (entry["fstype"], entry["source"]) == (
        "fuse.pyglfs", "127.0.0.2:/gvol0")
    (mnt / "via-mount-t").write_bytes(b"t")
    assert files_hold([b / "via-mount-t" for b in pool.bricks], b"t")
    r = _mount8(["umount", str(mnt)])
    assert r.returncode == 0, r.stderr
    assert not is_mounted(mnt)
    m.stop_process()
    r = _mount8(["mount", "-t", "fuse.pyglfs", "127.0.0.2:/nosuch", str(mnt), "-o",
                 f"{_port_opt(pool)},log-file={log}"])
    assert r.returncode != 0 and "Volume nosuch does not exist" in r.stderr
    assert not is_mounted(mnt)


@pytest.mark.mount
@needs_fuse
@needs_helper
def test_fstab_line_with_backup_server(pool: Pool, mounts: list[Mount], tmp_path: Path) -> None:
    mnt, log = tmp_path / "mnt", tmp_path / "fstab.log"
    mnt.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{DOWN}:/gvol0 {mnt} fuse.pyglfs defaults,_netdev,"
                     f"backup-volfile-servers=127.0.0.3,{_port_opt(pool)},log-file={log} 0 0\n")
    r = _mount8(["mount", "-a", "-T", str(fstab)])
    assert r.returncode == 0, r.stderr
    _helper_mount(mnt, log, mounts)
    assert mount_entry(mnt)["source"] == f"{DOWN}:/gvol0"  # type: ignore[index]
    assert f"getspec from 127.0.0.3:{pool.port}" in log.read_text()
    (mnt / "via-fstab").write_bytes(b"f")
    assert files_hold([b / "via-fstab" for b in pool.bricks], b"f")
