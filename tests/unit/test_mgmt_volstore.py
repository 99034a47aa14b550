"""Volume records and store, brick checks, CLI parsing and layouts, brick supervision
(against a stand-in brick program, so restarts take milliseconds)."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sys
import uuid
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from pyglfs.mgmt.bricksup import BrickStartError, BrickSupervisor, pid_alive
from pyglfs.mgmt.cli import cli
from pyglfs.mgmt.cli.output import format_volume_info, format_volume_status
from pyglfs.mgmt.cli.volume import parse_create
from pyglfs.mgmt.statestore import StateError
from pyglfs.mgmt.transaction import TxnError
from pyglfs.mgmt.volservice import volume_info
from pyglfs.mgmt.volstore import BrickRef, VolumeRecord, VolumeStore
from pyglfs.mgmt.volumes import check_local_brick, option_error
from pyglfs.rpc.brickops import VOLUME_ID_XATTR

N1, N2 = str(uuid.uuid4()), str(uuid.uuid4())


def record(name: str = "gv", replica: int = 2, n: int = 2, root: str = "/data") -> VolumeRecord:
    bricks = [BrickRef(f"10.0.0.{i % 2 + 1}", f"{root}/b{i}", N1 if i % 2 == 0 else N2)
              for i in range(n)]
    return VolumeRecord(name, str(uuid.uuid4()), replica, bricks, username="u", password="p")


def test_record_round_trip_types_and_bad_records() -> None:
    r = record()
    assert VolumeRecord.from_json(json.loads(json.dumps(r.to_json()))) == r
    assert r.type == "Replicate"
    assert record(replica=2, n=4).type == "Distributed-Replicate"
    assert record(replica=1, n=3).type == "Distribute"
    assert [i for i, _ in record(n=4).local(N2)] == [1, 3]
    for bad in ({**r.to_json(), "status": "Running"}, {**r.to_json(), "bricks": []},
                {**r.to_json(), "name": "-x"}, {**r.to_json(), "id": "nope"},
                {**r.to_json(), "options": {"a": 1}}, []):
        with pytest.raises(ValueError):
            VolumeRecord.from_json(bad)


def test_store_writes_record_auth_and_volfiles_and_names_a_corrupt_file(
        tmp_path: Path) -> None:
    store = VolumeStore(tmp_path)
    assert store.load() == {}
    r = record()
    r.bricks[0].port = 50001
    store.save(r)
    assert store.load() == {"gv": r}
    auth = store.auth_file("gv")
    assert json.loads(auth.read_text()) == {"username": "u", "password": "p"}
    assert auth.stat().st_mode & 0o077 == 0
    vf = store.client_volfile("gv")
    assert "option remote-port 50001" in vf and "type cluster/replicate" in vf
    assert (tmp_path / "vols/gv/bricks/1.vol").read_text().count("storage/posix") == 1
    store.save_run("gv", 0, 123, 50001)
    assert store.load_run("gv", 0) == (123, 50001)
    store.clear_run("gv", 0)
    assert store.load_run("gv", 0) is None
    info = tmp_path / "vols/gv/info"
    info.write_text('{"name": "gv"')
    with pytest.raises(StateError) as exc:
        store.load()
    assert exc.value.path == str(info) and "corrupt" in str(exc.value)
    info.write_text(json.dumps(record("other").to_json()))
    with pytest.raises(StateError, match="holds volume other"):
        store.load()
    store.delete("gv")
    assert store.load() == {}


def test_brick_checks(tmp_path: Path) -> None:
    vid = str(uuid.uuid4())

    def check(path: str, force: bool = True, others: list[tuple[str, BrickRef]] | None = None
              ) -> None:
        check_local_brick(BrickRef("h", path, N1), vid, force, others or [])

    check(str(tmp_path / "new" / "deeper"))
    with pytest.raises(TxnError, match="being created in the root partition"):
        check(str(tmp_path / "b"), force=False)
    used = [("v1", BrickRef("h", str(tmp_path / "b"), N1))]
    with pytest.raises(TxnError, match="already part of a volume"):
        check(str(tmp_path / "b"), others=used)
    with pytest.raises(TxnError, match="overlaps brick h:.* of volume v1"):
        check(str(tmp_path / "b" / "inner"), others=used)
    check(str(tmp_path / "b"), others=[("v1", BrickRef("h", str(tmp_path / "b"), N2))])
    (tmp_path / "file").write_text("x")
    with pytest.raises(TxnError, match="not a directory"):
        check(str(tmp_path / "file"))
    with pytest.raises(TxnError) as exc:
        check(str(tmp_path / "file" / "sub"))
    assert exc.value.code == errno.EACCES
    claimed = tmp_path / "claimed"
    claimed.mkdir()
    try:
        os.setxattr(claimed, VOLUME_ID_XATTR, uuid.uuid4().bytes)
    except OSError:
        pytest.skip("trusted xattrs need root")
    with pytest.raises(TxnError, match="already part of a volume"):
        check(str(claimed))
    os.setxattr(claimed, VOLUME_ID_XATTR, uuid.UUID(vid).bytes)
    check(str(claimed))


def test_option_errors_list_the_valid_keys() -> None:
    assert option_error("cluster.quorum-type", "fixed") is None
    msg = option_error("cluster.quorum-tipe", "auto")
    assert msg is not None and "did you mean cluster.quorum-type" in msg
    assert "Valid options: " in msg and "network.ping-timeout" in msg
    msg = option_error("network.ping-timeout", "soon")
    assert msg is not None and "expected a number" in msg and "Valid options" not in msg


def test_parse_create() -> None:
    assert parse_create(("replica", "2", "h1:/a", "h2:/b", "force")) == (2, ["h1:/a", "h2:/b"],
                                                                         True)
    assert parse_create(("h1:/a",)) == (1, ["h1:/a"], False)
    for bad in (("replica",), ("replica", "x", "h:/a"), ("replica", "0", "h:/a"), ("force",),
                ("nohost",), ("h:",)):
        with pytest.raises(ValueError):
            parse_create(bad)


def test_create_usage_error_needs_no_daemon() -> None:
    r = CliRunner().invoke(cli, ["--mgmt", "127.0.0.1:1", "volume", "create", "gv", "replica",
                                 "two", "h:/a"])
    assert r.exit_code == 1
    assert r.stderr.startswith("replica count should be a positive integer\n\nUsage: volume "
                               "create NAME [replica COUNT] HOST:/PATH ... [force]")


def test_info_and_status_layouts_read_like_gluster() -> None:
    r = record(root="/data/glusterfs")
    r.options["network.ping-timeout"] = "5"
    text = format_volume_info({"volumes": [volume_info(r)]})
    assert text.splitlines() == [
        " ", "Volume Name: gv", "Type: Replicate", f"Volume ID: {r.id}", "Status: Created",
        "Snapshot Count: 0", "Number of Bricks: 1 x 2 = 2", "Transport-type: tcp", "Bricks:",
        "Brick1: 10.0.0.1:/data/glusterfs/b0", "Brick2: 10.0.0.2:/data/glusterfs/b1",
        "Options Reconfigured:", "network.ping-timeout: 5"]
    assert format_volume_info({"volumes": []}) == "No volumes present"
    status = {"volumes": [{"name": "gvol0", "bricks": [
        {"host": "127.0.0.2", "path": "/data/glusterfs/b1", "online": True, "port": 52492,
         "pid": 14962},
        {"host": "127.0.0.2", "path": "/data/glusterfs/b2", "online": False, "port": None,
         "pid": None}]}]}
    lines = format_volume_status(status).splitlines()
    assert lines[:5] == [
        "Status of volume: gvol0",
        "Gluster process                             TCP Port  RDMA Port  Online  Pid",
        "-" * 78,
        "Brick 127.0.0.2:/data/glusterfs/b1              52492     0          Y       14962",
        "Brick 127.0.0.2:/data/glusterfs/b2              N/A       N/A        N       N/A"]
    assert lines[6:9] == ["Task Status of Volume gvol0", "-" * 78,
                          "There are no active volume tasks"]


# A stand-in for pyglfs-brickd: refuses a brick path containing "bad", else binds
# --listen, prints the ready line and serves until killed.
FAKE_BRICKD = r"""
import socket, sys, time
a = sys.argv[1:]
brick, listen = a[a.index("--brick") + 1], a[a.index("--listen") + 1]
if "bad" in brick:
    print("Error: brick directory " + brick + " does not exist", file=sys.stderr)
    sys.exit(1)
host, port = listen.rsplit(":", 1)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, int(port)))
s.listen()
print("listening on %s:%d" % s.getsockname(), flush=True)
time.sleep(60)
"""


async def test_supervisor_starts_restarts_and_stops(tmp_path: Path) -> None:
    store = VolumeStore(tmp_path)
    r = VolumeRecord("gv", str(uuid.uuid4()), 1,
                     [BrickRef("127.0.0.2", str(tmp_path / "b0"), N1),
                      BrickRef("127.0.0.2", str(tmp_path / "bad"), N1)])
    store.save(r)
    sup = BrickSupervisor(store, tmp_path / "logs", base_port=0,
                          command=lambda: [sys.executable, "-c", FAKE_BRICKD])
    sup.base_port = 20000 + os.getpid() % 20000
    pids: list[int] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.serve)
            bp = await sup.start(r, 0)
            pids.append(bp.pid)
            assert bp.online and pid_alive(bp.pid) and bp.port >= sup.base_port
            assert store.load_run("gv", 0) == (bp.pid, bp.port)
            assert await sup.start(r, 0) is bp
            first, port = bp.pid, bp.port
            os.kill(first, signal.SIGKILL)
            with trio.fail_after(10):
                while not (bp.online and bp.pid != first):
                    await trio.sleep(0.02)
            pids.append(bp.pid)
            assert bp.port == port and bp.restarts == 1
            # Its port taken while it is down: it moves, and the move is reported.
            moved: list[tuple[str, int, int]] = []

            async def on_move(vol: str, index: int, new_port: int) -> None:
                moved.append((vol, index, new_port))

            sup.on_port_change = on_move
            second = bp.pid
            with socket.socket() as blocker:
                os.kill(second, signal.SIGKILL)
                with trio.fail_after(5):
                    while pid_alive(second):
                        await trio.sleep(0.01)
                blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                blocker.bind(("127.0.0.2", port))
                blocker.listen()
                with trio.fail_after(10):
                    while not moved:
                        await trio.sleep(0.02)
            pids.append(bp.pid)
            assert moved == [("gv", 0, bp.port)] and bp.port != port and bp.online
            with pytest.raises(BrickStartError, match="bad does not exist"):
                await sup.start(r, 1)
            assert sup.get("gv", 1) is None
            await sup.stop("gv", 0)
            assert not pid_alive(bp.pid) and sup.get("gv", 0) is None
            assert store.load_run("gv", 0) is None
            nursery.cancel_scope.cancel()
    finally:
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("command", ["delete", "stop"])
def test_delete_and_stop_ask_first_when_interactive(monkeypatch: pytest.MonkeyPatch,
                                                    command: str) -> None:
    monkeypatch.setattr("pyglfs.mgmt.cli.common.CliContext.interactive", lambda self: True)
    # Answering no never reaches the (absent) daemon.
    r = CliRunner().invoke(cli, ["--mgmt", "127.0.0.1:1", "volume", command, "gv"], input="n\n")
    assert r.exit_code == 1
    assert "Do you want to continue? [y/N]" in r.stdout
    assert r.stderr == f"volume {command}: gv: cancelled\n"
    r = CliRunner().invoke(cli, ["--mgmt", "127.0.0.1:1", "volume", command, "gv"], input="y\n")
    assert r.exit_code == 1 and "Connection failed" in r.stderr
