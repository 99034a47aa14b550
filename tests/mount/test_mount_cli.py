"""``pyglfs-mount`` as a command: refusals, daemon life cycle, signals, options."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time

import pytest
from helpers.mounts import (
    MOUNT_CMD,
    is_mounted,
    mount_argv,
    mount_entry,
    mount_env,
    mount_volume,
    mounted_volume,
    pid_alive,
    start_volume,
    wait_for,
)

from pyglfs.client.mount import default_log_file


def _run(argv, timeout=30.0):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env=mount_env(), stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("opts,named", [
    ("ro,bogus-opt=1", "bogus-opt"),
    ("attribute-timeout=abc", "attribute-timeout"),
    ("entry-timeout=-1", "entry-timeout"),
    ("log-level=LOUD", "log-level"),
    ("ro=yes", "ro"),
    ("negative-timeout", "negative-timeout"),
])
def test_bad_option_is_refused_and_named(single_volume, tmp_path, opts, named):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = _run(mount_argv(single_volume.volfile, mnt, opts))
    assert r.returncode != 0
    assert named in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not is_mounted(mnt)


def test_bad_volfile_and_mountpoint(single_volume, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = _run(mount_argv(tmp_path / "missing.vol", mnt))
    assert r.returncode == 1 and "missing.vol" in r.stderr
    bad = tmp_path / "bad.vol"
    bad.write_text("volume x\n    type protocol/client\n")
    r = _run(mount_argv(bad, mnt))
    assert r.returncode == 1 and "bad.vol" in r.stderr and "Traceback" not in r.stderr
    r = _run(mount_argv(single_volume.volfile, tmp_path / "nodir"))
    assert r.returncode == 1 and "nodir" in r.stderr
    r = _run([*MOUNT_CMD, str(mnt)])  # no volfile at all
    assert r.returncode == 1 and "volfile" in r.stderr
    assert not is_mounted(mnt)


def test_unreachable_volume_mounts_nothing(tmp_path):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens there now
    vf = tmp_path / "dead.vol"
    vf.write_text(f"""volume dead-client-0
    type protocol/client
    option remote-host 127.0.0.1
    option remote-port {port}
    option remote-subvolume /nowhere
end-volume
volume dead
    type debug/io-stats
    subvolumes dead-client-0
end-volume
""")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    t0 = time.monotonic()
    r = _run([*mount_argv(vf, mnt, f"log-file={tmp_path / 'log'}"), "--up-timeout", "1"])
    assert r.returncode == 1
    assert "not reachable" in r.stderr and f"127.0.0.1:{port}" in r.stderr
    assert time.monotonic() - t0 < 15
    assert not is_mounted(mnt)


def test_daemon_mount_sigterm_unmounts(single_volume, tmp_path):
    m = mount_volume(single_volume.volfile, tmp_path / "mnt")
    try:
        entry = mount_entry(m.mountpoint)
        assert entry is not None and entry["fstype"] == "fuse.pyglfs"
        assert "allow_other" in entry["super_options"]
        assert "default_permissions" in entry["super_options"]
        environ = open(f"/proc/{m.pid}/environ", "rb").read().split(b"\0")
        assert b"MALLOC_MMAP_THRESHOLD_=4194304" in environ
        assert b"MALLOC_TRIM_THRESHOLD_=67108864" in environ
        assert os.getsid(m.pid) == m.pid  # its own session: detached from ours
        (m.mountpoint / "f").write_bytes(b"x")
        os.kill(m.pid, signal.SIGTERM)
        assert wait_for(lambda: not is_mounted(m.mountpoint), 10)
        assert wait_for(lambda: not pid_alive(m.pid), 10)
        assert "unmounted" in m.log_text()
    finally:
        m.unmount()
    assert m.unexpected_errors() is None


def test_umount_ends_the_daemon(single_volume, tmp_path):
    m = mount_volume(single_volume.volfile, tmp_path / "mnt")
    try:
        r = subprocess.run(["umount", str(m.mountpoint)], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        assert not is_mounted(m.mountpoint)
        assert wait_for(lambda: not pid_alive(m.pid), 10)
    finally:
        m.unmount()


def test_foreground(single_volume, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = subprocess.Popen([*mount_argv(single_volume.volfile, mnt,
                                      f"log-file={tmp_path / 'fg.log'}"), "--foreground"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=mount_env(), text=True)
    try:
        assert wait_for(lambda: is_mounted(mnt) or p.poll() is not None, 20)
        assert p.poll() is None and is_mounted(mnt)
        os.mkdir(mnt / "made-in-foreground")
        assert "made-in-foreground" in os.listdir(mnt)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=10)
        assert p.returncode == 0, err
        assert not is_mounted(mnt)
        assert "mounted volume single" in err  # foreground logs to stderr too
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], timeout=10)


def test_read_only(single_volume, tmp_path):
    with mounted_volume(single_volume.volfile, tmp_path / "rw") as rw:
        (rw.mountpoint / "ro-test").mkdir()
        (rw.mountpoint / "ro-test" / "f").write_bytes(b"data")
    with mounted_volume(single_volume.volfile, tmp_path / "ro", "ro") as m:
        entry = mount_entry(m.mountpoint)
        assert entry is not None and entry["options"].split(",")[0] == "ro"
        d = m.mountpoint / "ro-test"
        assert (d / "f").read_bytes() == b"data"
        for action in (lambda: (d / "g").write_bytes(b"x"),
                       lambda: open(d / "f", "ab"),
                       lambda: os.mkdir(d / "sub"),
                       lambda: os.unlink(d / "f"),
                       lambda: os.chmod(d / "f", 0o600),
                       lambda: os.setxattr(d / "f", "user.x", b"1"),
                       lambda: os.rename(d / "f", d / "g")):
            with pytest.raises(OSError) as e:
                action()
            assert e.value.errno == errno.EROFS


def test_auto_unmount_after_kill(single_volume, tmp_path):
    m = mount_volume(single_volume.volfile, tmp_path / "mnt", "auto_unmount")
    try:
        os.kill(m.pid, signal.SIGKILL)
        assert wait_for(lambda: not pid_alive(m.pid), 10)
        # fusermount3's watcher unmounts once the dead daemon's socket closes
        if not wait_for(lambda: not is_mounted(m.mountpoint), 30):
            ps = subprocess.run(["ps", "-eo", "pid,ppid,stat,args"], capture_output=True,
                                text=True).stdout
            watchers = [ln for ln in ps.splitlines() if "fusermount" in ln]
            raise AssertionError(f"still mounted 30 s after kill -9; fusermount processes: "
                                 f"{watchers}; mount log tail: {m.log_text()[-2000:]}")
    finally:
        m.unmount()


def test_default_log_file_name():
    assert default_log_file("/mnt/gvol0") == "/var/log/pyglfs/mnt-gvol0.log"
    assert default_log_file("/mnt/a/b/") == "/var/log/pyglfs/mnt-a-b.log"
    assert default_log_file("/") == "/var/log/pyglfs/root.log"


def test_replica_mounts_with_one_brick_down(tmp_path):
    vol = start_volume(tmp_path, "replica2")
    try:
        vol.bricks[1].stop()
        t0 = time.monotonic()
        with mounted_volume(vol.volfile, tmp_path / "mnt") as m:
            assert time.monotonic() - t0 < 10
            (m.mountpoint / "f").write_bytes(b"degraded but writable")
            assert (m.mountpoint / "f").read_bytes() == b"degraded but writable"
        vol.bricks[0].stop()
        mnt2 = tmp_path / "mnt2"
        mnt2.mkdir()
        r = _run([*mount_argv(vol.volfile, mnt2, f"log-file={tmp_path / 'l'}"),
                  "--up-timeout", "1"])
        assert r.returncode == 1 and "not reachable" in r.stderr
        assert not is_mounted(mnt2)
    finally:
        if is_mounted(tmp_path / "mnt2"):
            subprocess.run(["fusermount3", "-u", "-z", str(tmp_path / "mnt2")], timeout=10)
        vol.stop()


def test_mount_raises_kernel_readahead(single_volume, tmp_path):
    with mounted_volume(single_volume.volfile, tmp_path / "mnt") as m:
        dev = os.stat(m.mountpoint).st_dev
        bdi = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"

        def readahead() -> int:
            with open(bdi) as f:
                return int(f.read())

        # set in the background once the kernel has the reply to FUSE_INIT
        assert wait_for(lambda: readahead() == 1024, 5), readahead()
