"""The bridge's pieces that need no mount: the inode table and the error mapping."""

from __future__ import annotations

import errno
import logging

import pyfuse3
import pytest
import trio

from pyglfs.client.fuse import errors
from pyglfs.client.fuse.errors import fuse_handler
from pyglfs.client.fuse.inodes import ROOT_INODE, InodeTable, ino_of, new_gfid
from pyglfs.rpc.brickops import ROOT_GFID


def test_inode_numbers_come_from_gfids():
    assert ino_of(ROOT_GFID) == ROOT_INODE == 1
    g = bytes(range(16))
    assert ino_of(g) == int.from_bytes(bytes(range(8, 16)), "big")
    a = new_gfid()
    assert len(a) == 16 and a[6] >> 4 == 4 and a[8] >> 6 == 2  # a version-4 UUID


def test_lookup_counts():
    t = InodeTable()
    g = new_gfid()
    ino = t.ino(g)
    with pytest.raises(OSError) as e:
        t.gfid(ino)  # not referenced yet
    assert e.value.errno == errno.ESTALE
    t.add(ino, g)
    t.add(ino, g)
    t.add(ino, g)
    assert t.gfid(ino) == g and t.lookup_count(ino) == 3 and len(t) == 2
    t.forget(ino, 2)
    assert t.lookup_count(ino) == 1
    t.forget(ino, 1)
    assert len(t) == 1 and t.lookup_count(ino) == 0
    with pytest.raises(OSError):
        t.gfid(ino)
    t.forget(ino, 5)  # unknown: ignored, never raises
    t.forget(ROOT_INODE, 10)
    t.add(ROOT_INODE, ROOT_GFID)
    assert t.gfid(ROOT_INODE) == ROOT_GFID and len(t) == 1


def test_directory_attrs_go_with_the_inode():
    t = InodeTable()
    g = new_gfid()
    ino = t.ino(g)
    t.note_attrs(ino, 0o42775, 77)  # not referenced: not kept
    assert t.dir_attrs(ino) is None
    t.add(ino, g)
    t.note_attrs(ino, 0o100644, 77)  # not a directory: not kept
    assert t.dir_attrs(ino) is None
    t.note_attrs(ino, 0o42775, 77)
    assert t.dir_attrs(ino) == (0o42775, 77)
    t.forget(ino, 1)
    assert t.dir_attrs(ino) is None


def test_inode_number_collision_is_refused():
    t = InodeTable()
    a = new_gfid()
    b = bytes(8) + a[8:]  # same last 8 bytes, another gfid
    t.add(t.ino(a), a)
    with pytest.raises(OSError) as e:
        t.ino(b)
    assert e.value.errno == errno.EIO


async def test_handler_maps_errors(caplog):
    @fuse_handler
    async def fails(exc: BaseException) -> None:
        await trio.lowlevel.checkpoint()
        raise exc

    with pytest.raises(pyfuse3.FUSEError) as e:
        await fails(FileNotFoundError(errno.ENOENT, "gone"))
    assert e.value.errno == errno.ENOENT
    with pytest.raises(pyfuse3.FUSEError) as e:
        await fails(pyfuse3.FUSEError(errno.EXDEV))
    assert e.value.errno == errno.EXDEV
    before = errors.unexpected_errors
    with caplog.at_level(logging.ERROR, logger="pyglfs.client.fuse.errors"):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await fails(KeyError("bug"))
    assert e.value.errno == errno.EIO
    assert errors.unexpected_errors == before + 1
    assert "KeyError" in caplog.text and "Traceback" in caplog.text
    with pytest.raises(pyfuse3.FUSEError) as e:
        await fails(OSError("no errno"))
    assert e.value.errno == errno.EIO


class _Stop(BaseException):
    pass


async def test_handler_lets_base_exceptions_through():
    """Cancellation (a BaseException) must never become an errno."""
    @fuse_handler
    async def stops() -> None:
        raise _Stop()

    with pytest.raises(_Stop):
        await stops()
    with trio.move_on_after(0.01) as scope:
        await fuse_handler(trio.sleep_forever)()
    assert scope.cancelled_caught


def _volfile(tmp_path):
    vf = tmp_path / "v.vol"
    vf.write_text("volume v-client-0\n    type protocol/client\n"
                  "    option remote-host 127.0.0.1\n    option remote-subvolume /b\n"
                  "end-volume\nvolume v\n    type debug/io-stats\n"
                  "    subvolumes v-client-0\nend-volume\n")
    return vf


def test_prepare_checks_before_forking(tmp_path):
    from pyglfs.client.mount import MountError, prepare

    vf = _volfile(tmp_path)
    log = tmp_path / "logs" / "m.log"
    plan = prepare(str(tmp_path), None, (f"volfile={vf},log-file={log}", "ro"), None)
    assert plan.graph.name == "v" and plan.fsname == "v" and plan.options.read_only
    assert plan.mountpoint == str(tmp_path) and log.exists()
    assert "allow_other" in plan.options.fuse_options(plan.fsname)
    for args, named in [
        ((str(tmp_path), str(vf), ("bogus=1",), None), "bogus"),
        ((str(tmp_path), None, (), None), "volfile"),
        ((str(tmp_path), str(tmp_path / "none.vol"), (), None), "none.vol"),
        ((str(vf), str(vf), (f"log-file={log}",), None), "not a directory"),
        ((str(tmp_path / "nodir"), str(vf), (f"log-file={log}",), None), "nodir"),
        ((str(tmp_path), str(vf), (f"log-file={tmp_path}",), None), "log file"),
    ]:
        with pytest.raises(MountError) as e:
            prepare(*args)
        assert named in str(e.value)
    plan = prepare(str(tmp_path), str(vf), ("log-level=NONE",), "none")
    assert plan.log_file is None and plan.fsname == "none"
