"""``pyglfs-brickd`` as a process: start-up checks, readiness line, clean stops."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.brickd import BrickdProcess, brickd_process, run_brickd, start_brickd


def args(brick: Path, volume_id: str, *extra: str, volume: str = "vol0") -> list[str]:
    return ["--brick", str(brick), "--listen", "127.0.0.1:0", "--volume", volume,
            "--volume-id", volume_id, *extra]


def assert_refused(result: object, *needles: str) -> None:
    rc = result.returncode  # type: ignore[attr-defined]
    err = result.stderr  # type: ignore[attr-defined]
    assert rc != 0, err
    assert "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    assert "listening on" not in result.stdout  # type: ignore[attr-defined]


def test_refuses_a_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    r = run_brickd(args(missing, str(uuid.uuid4())))
    assert_refused(r, str(missing), "does not exist")
    assert not missing.exists()


def test_refuses_a_file_as_brick(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    assert_refused(run_brickd(args(f, str(uuid.uuid4()))), "not a directory")


def test_refuses_another_volumes_brick(tmp_path: Path) -> None:
    brick = tmp_path / "b"
    brick.mkdir()
    first = str(uuid.uuid4())
    with brickd_process(tmp_path, brick=brick, volume_id=first) as b:
        assert b.alive()
    other = str(uuid.uuid4())
    r = run_brickd(args(brick, other))
    assert_refused(r, "volume")
    assert first in r.stderr or other in r.stderr
    # the rightful volume still starts on it
    with brickd_process(tmp_path, brick=brick, volume_id=first) as b:
        assert b.alive()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--listen", "127.0.0.1"], "HOST:PORT"),
        (["--listen", "127.0.0.1:99999"], "out of range"),
        (["--listen", "127.0.0.1:http"], "not a number"),
        (["--log-level", "LOUD"], "LOUD"),
    ],
)
def test_bad_arguments_are_one_clear_error(tmp_path: Path, extra: list[str], needle: str) -> None:
    assert_refused(run_brickd(args(tmp_path, str(uuid.uuid4()), *extra)), needle)


def test_bad_volume_id_is_refused(tmp_path: Path) -> None:
    assert_refused(run_brickd(args(tmp_path, "not-a-uuid")), "not a UUID")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "does not exist"),
        ("{not json", "not valid JSON"),
        ('["a"]', "JSON object"),
        ('{"username": "u"}', "password"),
        ('{"username": "", "password": "p"}', "username"),
    ],
)
def test_bad_auth_file_is_refused(tmp_path: Path, content: str | None, needle: str) -> None:
    auth = tmp_path / "auth.json"
    if content is not None:
        auth.write_text(content)
    brick = tmp_path / "b"
    brick.mkdir()
    r = run_brickd(args(brick, str(uuid.uuid4()), "--auth-file", str(auth)))
    assert_refused(r, needle, str(auth))
    assert os.listdir(brick) == []  # refused before touching the brick


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with brickd_process(tmp_path) as b:
        brick = tmp_path / "b2"
        brick.mkdir()
        r = run_brickd(["--brick", str(brick), "--listen", f"127.0.0.1:{b.port}", "--volume",
                        "vol0", "--volume-id", str(uuid.uuid4())])
        assert_refused(r)
        assert "address" in r.stderr.lower() or "in use" in r.stderr.lower(), r.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    b = start_brickd(tmp_path, host="127.0.0.2", log_level="DEBUG")
    try:
        assert b.host == "127.0.0.2" and b.port > 0
        os.kill(b.pid, sig)
        rc = b.proc.wait(15)
    finally:
        b.kill()
    assert rc == 0
    log = b.log_text()
    assert "Traceback" not in log, log
    assert sig.name in log


def test_logs_go_to_the_log_file(tmp_path: Path) -> None:
    with brickd_process(tmp_path, auth={"username": "u", "password": "p"}) as b:
        assert b.alive()
        assert "listening on" in b.log_text()
    assert (tmp_path / f"brickd-{b.brick.name}.stderr").read_text() == ""


def test_brickd_factory_stops_what_it_started(
    brickd_factory: Callable[..., BrickdProcess],
) -> None:
    a = brickd_factory(host="127.0.0.2")
    b = brickd_factory(host="127.0.0.3", volume="other")
    assert a.alive() and b.alive() and a.pid != b.pid
    assert (a.host, b.host) == ("127.0.0.2", "127.0.0.3")
