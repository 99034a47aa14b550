"""Differential POSIX checks: one scripted sequence on a local directory and on a mount.

A script is a list of steps ``(op, *args)`` on paths relative to a root
directory. ``run_steps`` runs it and returns one outcome per step: ``("ok",
value)`` or ``("err", "ENOENT")``. ``assert_same`` runs the script on the local
filesystem and on the mount (optionally as another user, with a umask, in a
forked child that drops privileges) and fails with a step-by-step report when
any outcome differs, so the mount must give the same results and the same
errnos as the kernel's own filesystem.

Values are normalized so that they compare across filesystems: ``stat`` gives
type, permission bits, nlink, uid, gid, and size for non-directories; times only
where a step sets them. Open file descriptors live in slots named by the script.
"""

from __future__ import annotations

import ast
import ctypes
import errno
import os
import selectors
import signal
import stat
import time
from collections.abc import Sequence
from typing import Any

Step = tuple[Any, ...]
Outcome = tuple[str, Any]

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100


def renameat2(src: str, dst: str, flags: int) -> None:
    r = _libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags)
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), src)


def norm_stat(st: os.stat_result, times: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": stat.S_IFMT(st.st_mode), "perm": oct(stat.S_IMODE(st.st_mode)),
        "nlink": st.st_nlink, "uid": st.st_uid, "gid": st.st_gid,
    }
    if not stat.S_ISDIR(st.st_mode):
        out["size"] = st.st_size
    if times:
        out["atime_ns"] = st.st_atime_ns
        out["mtime_ns"] = st.st_mtime_ns
    return out


class Runner:
    """Runs steps relative to the current directory (the script's root)."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}

    def close_all(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()

    def run(self, step: Step) -> Any:
        op, *args = step
        return getattr(self, "op_" + op)(*args)

    # -- names ----------------------------------------------------------
    def op_mkdir(self, p: str, mode: int = 0o777) -> None:
        os.mkdir(p, mode)

    def op_rmdir(self, p: str) -> None:
        os.rmdir(p)

    def op_unlink(self, p: str) -> None:
        os.unlink(p)

    def op_rename(self, a: str, b: str, flags: int = 0) -> None:
        if flags:
            renameat2(a, b, flags)
        else:
            os.rename(a, b)

    def op_link(self, a: str, b: str) -> None:
        os.link(a, b)

    def op_symlink(self, target: str, p: str) -> None:
        os.symlink(target, p)

    def op_readlink(self, p: str) -> str:
        return os.readlink(p)

    def op_mkfifo(self, p: str, mode: int = 0o666) -> None:
        os.mkfifo(p, mode)

    def op_mknod(self, p: str, mode: int, dev: int = 0) -> None:
        os.mknod(p, mode, dev)

    def op_listdir(self, p: str = ".") -> list[str]:
        return sorted(os.listdir(p))

    def op_scandir(self, p: str = ".") -> list[tuple[str, bool, bool, bool]]:
        with os.scandir(p) as it:
            return sorted((e.name, e.is_dir(follow_symlinks=False),
                           e.is_file(follow_symlinks=False), e.is_symlink()) for e in it)

    def op_exists(self, p: str) -> bool:
        return os.path.lexists(p)

    # -- attributes -------------------------------------------------------
    def op_stat(self, p: str, times: bool = False) -> dict[str, Any]:
        return norm_stat(os.stat(p), times)

    def op_lstat(self, p: str, times: bool = False) -> dict[str, Any]:
        return norm_stat(os.lstat(p), times)

    def op_fstat(self, slot: str, times: bool = False) -> dict[str, Any]:
        return norm_stat(os.fstat(self.fds[slot]), times)

    def op_chmod(self, p: str, mode: int) -> None:
        os.chmod(p, mode)

    def op_chown(self, p: str, uid: int, gid: int) -> None:
        os.chown(p, uid, gid)

    def op_lchown(self, p: str, uid: int, gid: int) -> None:
        os.lchown(p, uid, gid)

    def op_truncate(self, p: str, size: int) -> None:
        os.truncate(p, size)

    def op_utime(self, p: str, ns: tuple[int, int] | None = None) -> None:
        os.utime(p, ns=ns) if ns is not None else os.utime(p)

    def op_access(self, p: str, mode: int) -> bool:
        return os.access(p, mode)

    # -- xattrs -------------------------------------------------------------
    def op_setxattr(self, p: str, name: str, value: bytes, flags: int = 0) -> None:
        os.setxattr(p, name, value, flags)

    def op_getxattr(self, p: str, name: str) -> bytes:
        return os.getxattr(p, name)

    def op_listxattr(self, p: str) -> list[str]:
        return sorted(n for n in os.listxattr(p) if n.startswith("user."))

    def op_removexattr(self, p: str, name: str) -> None:
        os.removexattr(p, name)

    # -- file descriptors -----------------------------------------------------
    def op_open(self, slot: str, p: str, flags: int, mode: int = 0o666) -> None:
        self.fds[slot] = os.open(p, flags, mode)

    def op_close(self, slot: str) -> None:
        os.close(self.fds.pop(slot))

    def op_write(self, slot: str, data: bytes) -> int:
        return os.write(self.fds[slot], data)

    def op_pwrite(self, slot: str, data: bytes, off: int) -> int:
        return os.pwrite(self.fds[slot], data, off)

    def op_read(self, slot: str, n: int) -> bytes:
        return os.read(self.fds[slot], n)

    def op_pread(self, slot: str, n: int, off: int) -> bytes:
        return os.pread(self.fds[slot], n, off)

    def op_lseek(self, slot: str, off: int, how: int) -> int:
        return os.lseek(self.fds[slot], off, how)

    def op_ftruncate(self, slot: str, size: int) -> None:
        os.ftruncate(self.fds[slot], size)

    def op_fsync(self, slot: str) -> None:
        os.fsync(self.fds[slot])

    def op_fchmod(self, slot: str, mode: int) -> None:
        os.fchmod(self.fds[slot], mode)

    def op_read_file(self, p: str) -> bytes:
        with open(p, "rb") as f:
            return f.read()

    def op_write_file(self, p: str, data: bytes) -> None:
        with open(p, "wb") as f:
            f.write(data)


def run_steps(root: str, steps: Sequence[Step]) -> list[Outcome]:
    """Run ``steps`` with ``root`` as the current directory; one outcome per step."""
    old = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    os.chdir(root)
    r = Runner()
    out: list[Outcome] = []
    try:
        for step in steps:
            try:
                out.append(("ok", r.run(step)))
            except OSError as e:
                out.append(("err", errno.errorcode.get(e.errno or 0, str(e.errno))))
    finally:
        r.close_all()
        os.fchdir(old)
        os.close(old)
    return out


def run_steps_as(root: str, steps: Sequence[Step], *, uid: int = 0, gid: int = 0,
                 groups: Sequence[int] = (), umask: int = 0o022,
                 timeout: float = 30.0) -> list[Outcome]:
    """``run_steps`` in a forked child with these credentials and umask.

    The child enters ``root`` before dropping privileges, so ``root``'s
    ancestors need not be searchable by ``uid``.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 1
        try:
            os.close(r)
            os.chdir(root)
            os.setgroups(list(groups))
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            os.umask(umask)
            data = repr(run_steps(".", steps)).encode()
            with os.fdopen(w, "wb") as f:
                f.write(data)
            code = 0
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    deadline = time.monotonic() + timeout
    with os.fdopen(r, "rb", buffering=0) as f, selectors.DefaultSelector() as sel:
        sel.register(f, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise TimeoutError(f"step runner did not finish in {timeout} s")
            if not sel.select(left):
                continue
            chunk = f.read(65536)
            if not chunk:
                break
            data += chunk
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"step runner exited with status {status}")
    result: list[Outcome] = ast.literal_eval(data.decode())
    return result


def diff_report(steps: Sequence[Step], a: list[Outcome], b: list[Outcome],
                names: tuple[str, str] = ("local", "mount")) -> str:
    lines = []
    for i, (step, x, y) in enumerate(zip(steps, a, b, strict=True)):
        mark = "  " if x == y else "!!"
        lines.append(f"{mark} {i:3d} {step!r}")
        if x != y:
            lines.append(f"        {names[0]}: {x!r}")
            lines.append(f"        {names[1]}: {y!r}")
    return "\n".join(lines)


def assert_same(local_root: str, mount_root: str, steps: Sequence[Step],
                **cred: Any) -> list[Outcome]:
    """Run ``steps`` on both roots (as ``cred``, see ``run_steps_as``); equal outcomes."""
    if cred:
        a = run_steps_as(local_root, steps, **cred)
        b = run_steps_as(mount_root, steps, **cred)
    else:
        a = run_steps(local_root, steps)
        b = run_steps(mount_root, steps)
    if a != b:
        raise AssertionError("outcomes differ:\n" + diff_report(steps, a, b))
    return a
