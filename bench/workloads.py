"""The filesystem workloads, each run in a directory of one target.

A workload is a function ``(ctx: Run) -> dict[metric, value]``; ``METRICS``
names every figure with its unit and whether more is better. The same code
runs on every target, from this process, so Python's own per-call overhead is
the same everywhere and cancels in the ratios.

"Cold" means: ``sync`` and ``echo 3 > /proc/sys/vm/drop_caches`` right before
the phase. That empties the page cache (of the FUSE mount and of the disk
below it) and the dentry and inode caches, so a FUSE filesystem gets every
lookup, getattr and read again. Without root the caches cannot be dropped; the
run says so once and the figures are warm.

Creating phases (``small``'s create, ``tree``'s untar) start with the same drop,
and every target's directories sit in block groups of their own
(``targets.own_block_groups``): on ext4 without a journal (this project's VMs)
the inode allocator skips, one by one and at every allocation, each free inode
of the group freed within the last minute (up to six when its table block is
dirty) whose table block is cached. A create right after another target deleted 5,000
files in the same group cost 140-800 us of kernel time per inode instead of
~25 (measured with plain system calls in a fresh directory), so a target's
create figure depended on which target ran before it, and a replica-2 volume,
which makes two inodes per file, paid it twice.
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024


@dataclass(frozen=True)
class Metric:
    label: str
    unit: str
    higher_is_better: bool


METRICS: dict[str, Metric] = {
    "seq_write": Metric("seq write 1M + fsync", "MiB/s", True),
    "seq_read": Metric("cold seq read 1M", "MiB/s", True),
    "randwrite": Metric("4K rand write (fio)", "IOPS", True),
    "randread": Metric("cold 4K rand read (fio)", "IOPS", True),
    "create": Metric("create 4K files", "files/s", True),
    "stat": Metric("cold stat", "stats/s", True),
    "ls_l": Metric("cold ls -l", "s", False),
    "rename": Metric("rename", "renames/s", True),
    "delete": Metric("delete", "files/s", True),
    "untar": Metric("untar", "s", False),
    "find": Metric("cold find", "s", False),
    "rm_rf": Metric("rm -rf", "s", False),
    "rss_pass1": Metric("client RSS, stat pass 1", "MiB", False),
    "rss_pass2": Metric("client RSS, stat pass 2", "MiB", False),
}


@dataclass
class Config:
    size_mb: int = 512
    files: int = 5000
    renames: int = 1000
    fio_size_mb: int = 256
    fio_runtime: int = 20
    tree_files: int = 3000
    rss_files: int = 100_000

    @classmethod
    def quick(cls) -> Config:
        return cls(size_mb=32, files=500, renames=100, fio_size_mb=16, fio_runtime=2,
                   tree_files=300, rss_files=2000)


@dataclass
class Run:
    """What a workload gets: where to work and what to measure with."""

    target: str
    dir: Path
    cache: Path
    cfg: Config
    pid: int | None
    drop: Callable[[], None]
    notes: list[str] = field(default_factory=list)


class Dropper:
    """Drops the kernel caches, or says once that it cannot."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and os.access("/proc/sys/vm/drop_caches", os.W_OK)
        self.warned = False

    def __call__(self) -> None:
        os.sync()
        if not self.enabled:
            if not self.warned:
                print("warning: cannot drop caches (not root?): 'cold' figures are warm",
                      flush=True)
                self.warned = True
            return
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# -- sequential -----------------------------------------------------------------


def seq(r: Run) -> dict[str, float]:
    path = r.dir / "seq.dat"
    block = bytes(random.Random(1).randbytes(MiB))
    n = r.cfg.size_mb

    def write() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for _ in range(n):
                os.write(fd, block)
            os.fsync(fd)
        finally:
            os.close(fd)

    t_write = _timed(write)
    r.drop()
    buf = bytearray(MiB)
    total = 0

    def read() -> None:
        nonlocal total
        with open(path, "rb", buffering=0) as f:
            while got := f.readinto(buf):
                total += got

    t_read = _timed(read)
    if total != n * MiB:
        raise RuntimeError(f"seq read got {total} bytes, wrote {n * MiB}")
    os.unlink(path)
    return {"seq_write": n / t_write, "seq_read": n / t_read}


# -- fio ------------------------------------------------------------------------


def ensure_fio() -> str | None:
    """fio's path; installs Debian's fio with apt-get when missing (and says so)."""
    found = shutil.which("fio")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("fio is missing: running apt-get install -y fio", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "install", "-y", "-qq", "fio"], ["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "fio"]):
        subprocess.run(cmd, env=env, capture_output=True, timeout=600)
        if shutil.which("fio"):
            break
    return shutil.which("fio")


def _fio(fio: str, path: Path, rw: str, r: Run) -> float:
    argv = [fio, f"--name={rw}", f"--filename={path}", f"--size={r.cfg.fio_size_mb}M",
            "--bs=4k", f"--rw={rw}", "--ioengine=psync", "--direct=0", "--time_based",
            f"--runtime={r.cfg.fio_runtime}", "--randrepeat=1", "--output-format=json"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True,
                         timeout=r.cfg.fio_runtime + 600, cwd=r.dir)
    job = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
    side = "write" if "write" in rw else "read"
    return float(job[side]["iops"])


def rand(r: Run) -> dict[str, float]:
    fio = ensure_fio()
    if fio is None:
        r.notes.append("fio not available: random I/O skipped")
        return {}
    path = r.dir / "fio.dat"
    # fio lays the file out first (not timed) and reuses it for the read
    write_iops = _fio(fio, path, "randwrite", r)
    r.drop()
    read_iops = _fio(fio, path, "randread", r)
    os.unlink(path)
    return {"randwrite": write_iops, "randread": read_iops}


# -- small files ------------------------------------------------------------------


def small(r: Run) -> dict[str, float]:
    d = r.dir / "small"
    d.mkdir()
    n = r.cfg.files
    names = [str(d / f"f{i:06d}") for i in range(n)]
    data = b"x" * 4096
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL

    def create() -> None:
        for p in names:
            fd = os.open(p, flags, 0o644)
            os.write(fd, data)
            os.close(fd)

    r.drop()
    t_create = _timed(create)
    r.drop()

    def stat_all() -> None:
        for p in names:
            if os.stat(p).st_size != 4096:
                raise RuntimeError(f"{p} has the wrong size")

    t_stat = _timed(stat_all)
    r.drop()
    t_ls = _timed(lambda: subprocess.run(["ls", "-l", str(d)], stdout=subprocess.DEVNULL,
                                         check=True))
    k = min(r.cfg.renames, n)
    renamed = [str(d / f"r{i:06d}") for i in range(k)]

    def rename() -> None:
        for a, b in zip(names[:k], renamed, strict=True):
            os.rename(a, b)

    t_rename = _timed(rename)
    final = renamed + names[k:]

    def delete() -> None:
        for p in final:
            os.unlink(p)

    t_delete = _timed(delete)
    left = os.listdir(d)
    if left:
        raise RuntimeError(f"{len(left)} files left after delete")
    d.rmdir()
    return {"create": n / t_create, "stat": n / t_stat, "ls_l": t_ls,
            "rename": k / t_rename, "delete": n / t_delete}


# -- source tree --------------------------------------------------------------------


def make_tarball(cache: Path, files: int) -> tuple[Path, int]:
    """A deterministic source-like tree as a tar (cached); returns (path, entries)."""
    path = cache / f"tree-{files}.tar"
    dirs = max(1, files // 25)
    entries = files + dirs + 1
    if path.exists():
        return path, entries
    cache.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(20240601)
    words = [bytes(rnd.choices(b"abcdefghijklmnopqrstuvwxyz_", k=rnd.randint(2, 10)))
             for _ in range(500)]
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
        def add(name: str, data: bytes | None) -> None:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_700_000_000
            ti.uname = ti.gname = "root"
            if data is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(ti)
            else:
                ti.mode, ti.size = 0o644, len(data)
                tar.addfile(ti, io.BytesIO(data))

        add("tree", None)
        dir_names = ["tree"]
        for i in range(dirs):
            parent = dir_names[rnd.randrange(len(dir_names))] if i else "tree"
            if parent.count("/") >= 4:
                parent = "tree"
            name = f"{parent}/d{i:04d}"
            dir_names.append(name)
            add(name, None)
        for i in range(files):
            size = min(int(rnd.lognormvariate(8.3, 1.0)), 256 * 1024)  # median ~4 KiB
            text = b" ".join(rnd.choices(words, k=size // 6 + 1))[:size]
            add(f"{dir_names[1 + i % dirs]}/f{i:05d}.py", text)
    tmp.rename(path)
    return path, entries


def tree(r: Run) -> dict[str, float]:
    tarball, entries = make_tarball(r.cache, r.cfg.tree_files)
    dest = r.dir / "tree"
    r.drop()
    t_untar = _timed(lambda: subprocess.run(["tar", "-xf", str(tarball), "-C", str(r.dir)],
                                            check=True))
    r.drop()
    found = 0

    def find() -> None:
        nonlocal found
        out = subprocess.run(["find", str(dest)], capture_output=True, check=True)
        found = out.stdout.count(b"\n")

    t_find = _timed(find)
    if found != entries:
        raise RuntimeError(f"find saw {found} entries, the tar has {entries}")
    t_rm = _timed(lambda: subprocess.run(["rm", "-rf", str(dest)], check=True))
    if dest.exists():
        raise RuntimeError("rm -rf left the tree behind")
    return {"untar": t_untar, "find": t_find, "rm_rf": t_rm}


# -- client memory ----------------------------------------------------------------------


def _make_empty(path: str) -> None:
    """An empty file in one FUSE request (mknod) where the filesystem allows it."""
    try:
        os.mknod(path, 0o644 | stat.S_IFREG)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))


def rss(r: Run) -> dict[str, float]:
    """RSS of the FUSE client after each of two cold stat passes over many files.

    The files sit in directories of 1,000. Caches are dropped before each pass,
    so the second pass makes the client forget and look up every inode again:
    memory that grows there is memory the client does not give back. Run it
    last: it leaves its files for the target's teardown.
    """
    if r.pid is None:
        return {}
    from targets import rss_kib

    root = r.dir / "many"
    root.mkdir()
    per_dir = 1000
    paths: list[str] = []
    for i in range(r.cfg.rss_files):
        if i % per_dir == 0:
            sub = root / f"d{i // per_dir:04d}"
            sub.mkdir()
        paths.append(str(sub / f"f{i % per_dir:04d}"))
    for p in paths:
        _make_empty(p)
    out: dict[str, float] = {}
    for key in ("rss_pass1", "rss_pass2"):
        r.drop()
        for p in paths:
            os.stat(p)
        out[key] = rss_kib(r.pid) / 1024
    # no clean-up here: removing 100,000 files through FUSE takes minutes, and
    # every target's teardown deletes its backing directories directly
    return out


WORKLOADS: dict[str, Callable[[Run], dict[str, float]]] = {
    "seq": seq,
    "rand": rand,
    "small": small,
    "tree": tree,
    "rss": rss,
}
