"""The volume options storage.direct-writes and storage.drop-behind: validated
like every option, written into the brick volfile's storage/posix layer, and
turned into the flags pyglfs-brickd takes (``brick_flags``), which set the
brick store's switches (brickd/main.py, checked through a real mount in
tests/mount/test_mount_write_options.py)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pyglfs.brickd import main as brickd_main
from pyglfs.volfiles.generator import BrickSpec, VolumeSpec, brick_flags, brick_graph
from pyglfs.volfiles.options import VOLUME_OPTIONS, validate_option

VID = "6f1c1a52-0a4e-4b8e-9d7a-3c2b1f0e5d4a"


def spec(**options: str) -> VolumeSpec:
    bricks = [BrickSpec("127.0.0.2", 49750, "/bricks/b0"), BrickSpec("127.0.0.3", 49751, "/b1")]
    return VolumeSpec("gvol0", VID, 2, bricks, options=options)


def test_defaults_and_validation() -> None:
    assert VOLUME_OPTIONS["storage.direct-writes"].default == "off"
    assert VOLUME_OPTIONS["storage.drop-behind"].default == "on"
    for key in ("storage.direct-writes", "storage.drop-behind"):
        assert validate_option(key, "yes") == "on"
        assert validate_option(key, "0") == "off"
        with pytest.raises(ValueError):
            validate_option(key, "sometimes")


def test_brick_volfile_and_flags() -> None:
    s = spec(**{"storage.direct-writes": "on", "storage.drop-behind": "off"})
    opts = s.validate()
    posix = brick_graph(s, 1).xlators["gvol0-posix"]
    assert posix.options["direct-writes"] == "on"
    assert posix.options["drop-behind"] == "off"
    assert brick_flags(opts) == ["--direct-writes", "--no-drop-behind"]
    assert brick_flags(spec().validate()) == ["--no-direct-writes", "--drop-behind"]


def test_brickd_takes_the_flags() -> None:
    got: list[tuple[bool, bool]] = []

    def fake_run(fn: object, *args: object) -> None:
        got.append((bool(args[-2]), bool(args[-1])))

    runner = CliRunner()
    base = ["--brick", "/", "--listen", "127.0.0.1:0", "--volume", "v", "--volume-id", VID]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(brickd_main.trio, "run", fake_run)
        mp.setattr(brickd_main, "setup_logging", lambda *a: None)
        for extra, env in (([], {}), (["--direct-writes", "--no-drop-behind"], {}),
                           ([], {"PYGLFS_BRICK_DIRECT_WRITES": "1",
                                 "PYGLFS_BRICK_DROP_BEHIND": "0"})):
            r = runner.invoke(brickd_main.cli, base + extra, env=env)
            assert r.exit_code == 0, r.output
    assert got == [(False, True), (True, False), (True, False)]
