"""RPC benchmark: client and server in separate processes over loopback TCP.

    python bench/rpc_bench.py [--seconds 2] [--repeat 3] [--server brick|echo|both]
                              [--workloads null,write] [--no-floor] [--busy-poll-us 100]
                              [--json out.json]

Measures, against a real ``pyglfs-brickd`` serving a brick on a tmpfs directory
(under /dev/shm, removed at the end) and/or the protocol's own echo server
(``python -m pyglfs.rpc.testing``):

- null round trips/s with 1 and with 64 calls in flight on one connection;
- MB/s of 128 KiB and 1 MiB writes with 1 and 4 in flight: on the brick each
  write goes to one file through its normal write path; the echo server only
  counts the bytes, which gives the protocol's share of the cost.

It first measures the floor for a round trip on this machine (``--no-floor`` skips it):
two Python processes doing plain blocking ``send``/``recv`` ping-pong of 16 bytes
over loopback TCP, no event loop, no framing; null round trips with 1 in flight
are then also shown as a fraction of it.

Each figure is the median of ``--repeat`` runs of ``--seconds`` each, with the best
run beside it; the CPU time both processes used per operation (from
``/proc/PID/schedstat``, in ns) shows whether a figure is bound by CPU or by
wake-up latency. The machine's load average and its CPU idle settings are
printed too: other processes on the same cores, and how fast an idle vCPU wakes,
move these numbers a lot. With 1 in flight it also prints how often the client
busy-polled for a reply and how often that got it (rpc/busypoll.py; polling
stops while the machine has more runnable tasks than CPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from pyglfs.rpc.brickops import ROOT_GFID
from pyglfs.rpc.connection import RpcConnection, open_rpc_connection

try:
    from pyglfs.rpc.busypoll import DEFAULT_BUDGET
except ImportError:  # an older tree (A/B runs with PYTHONPATH=old/src): no busy-polling
    DEFAULT_BUDGET = 0.0

HOST = "127.0.0.1"
VOLUME = "benchvol"
START_TIMEOUT = 30.0
TARGETS = {
    ("null", 1): 10_000,
    ("null", 64): 20_000,
    ("write 1 MiB", 1): 600,
    ("write 1 MiB", 4): 600,
}
FLOOR_MESSAGE = b"x" * 16


def cpu_seconds(pid: int | str = "self") -> float:
    """CPU time a process has run, exact to the ns (the tick-sampled times of
    /proc/PID/stat are too coarse for per-op figures of tens of us)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


@dataclass
class Result:
    server: str
    workload: str
    in_flight: int
    unit: str
    median: float
    best: float
    runs: list[float] = field(default_factory=list)
    client_cpu_us: float = 0.0
    server_cpu_us: float = 0.0


class Server:
    """A server process printing ``listening on [HOST:]PORT``; stopped by PID."""

    def __init__(self, name: str, argv: list[str], cleanup: Callable[[], None] | None = None):
        self.name = name
        self.cleanup = cleanup
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        try:
            self.port = self._read_port()
        except BaseException:
            self.stop()
            raise

    def _read_port(self) -> int:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(START_TIMEOUT):
                raise RuntimeError(f"{self.name} server did not start")
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening on "):
            raise RuntimeError(f"{self.name} server said {line!r}")
        return int(line.rsplit(":", 1)[-1]) if ":" in line else int(line.split()[-1])

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.cleanup is not None:
            self.cleanup()


def start_brick() -> Server:
    root = tempfile.mkdtemp(prefix="pyglfs-rpc-bench-", dir="/dev/shm")
    brick = os.path.join(root, "brick")
    os.mkdir(brick)
    argv = [sys.executable, "-m", "pyglfs.brickd.main", "--brick", brick,
            "--listen", f"{HOST}:0", "--volume", VOLUME, "--volume-id", str(uuid.uuid4()),
            "--log-level", "WARNING", "--log-file", os.path.join(root, "brickd.log")]
    try:
        return Server("brick", argv, cleanup=lambda: shutil.rmtree(root, ignore_errors=True))
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def start_echo() -> Server:
    return Server("echo", [sys.executable, "-m", "pyglfs.rpc.testing", HOST, "0"])


def start_floor() -> Server:
    return Server("floor", [sys.executable, os.path.abspath(__file__), "--floor-echo"])


def serve_floor_echo() -> None:
    """The floor's server: one connection, blocking recv/send until EOF."""
    with socket.create_server((HOST, 0)) as listener:
        print(f"listening on {listener.getsockname()[1]}", flush=True)
        conn, _ = listener.accept()
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(65536):
            conn.sendall(data)


def measure_floor(server: Server, args: argparse.Namespace) -> Result:
    """Blocking ping-pong against ``serve_floor_echo``: what a round trip costs
    here with nothing but two Python processes and the kernel involved."""
    with socket.create_connection((HOST, server.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        size = len(FLOOR_MESSAGE)

        def run(seconds: float) -> tuple[int, float, float, float]:
            c0, s0, t0 = cpu_seconds(), server.cpu_seconds(), time.perf_counter()
            stop_at = t0 + seconds
            n = 0
            while time.perf_counter() < stop_at:
                for _ in range(100):
                    sock.sendall(FLOOR_MESSAGE)
                    got = 0
                    while got < size:
                        chunk = sock.recv(size - got)
                        if not chunk:
                            raise RuntimeError("floor server went away")
                        got += len(chunk)
                n += 100
            return n, time.perf_counter() - t0, cpu_seconds() - c0, server.cpu_seconds() - s0

        run(0.2)
        runs, ccpu, scpu = [], [], []
        for _ in range(args.repeat):
            n, wall, cc, sc = run(args.seconds)
            runs.append(n / wall)
            ccpu.append(cc / n * 1e6)
            scpu.append(sc / n * 1e6)
    r = Result("floor", "ping-pong", 1, "ops/s", statistics.median(runs), max(runs), runs,
               statistics.median(ccpu), statistics.median(scpu))
    _print_result(r)
    return r


def cpu_idle_settings() -> str:
    """How this machine's idle CPUs wait for work (read only; never changed here)."""
    def read(path: str) -> str:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return "?"

    base = "/sys/devices/system/cpu/cpuidle/"
    text = f"cpuidle driver {read(base + 'current_driver')}, governor " \
           f"{read(base + 'current_governor_ro')}"
    poll = read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
    if poll != "?":
        text += f", guest_halt_poll_ns {poll}"
    return text


async def _timed(
    server: Server, seconds: float, in_flight: int, op: Callable[[int], Awaitable[Any]],
) -> tuple[int, float, float, float]:
    """Runs ``op`` from ``in_flight`` tasks for ``seconds``; (ops, wall, client cpu,
    server cpu)."""
    count = 0
    stop_at = trio.current_time() + seconds

    async def worker(w: int) -> None:
        nonlocal count
        i = w
        while trio.current_time() < stop_at:
            await op(i)
            i += in_flight
            count += 1

    c0, s0, t0 = cpu_seconds(), server.cpu_seconds(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        for w in range(in_flight):
            nursery.start_soon(worker, w)
    return count, time.perf_counter() - t0, cpu_seconds() - c0, server.cpu_seconds() - s0


async def _measure(
    conn: RpcConnection, server: Server, args: argparse.Namespace, workload: str,
    in_flight: int, op: Callable[[int], Awaitable[Any]], bytes_per_op: int = 0,
) -> Result:
    await _timed(server, 0.2, in_flight, op)  # warm up
    runs, ccpu, scpu = [], [], []
    for _ in range(args.repeat):
        n, wall, cc, sc = await _timed(server, args.seconds, in_flight, op)
        runs.append(n * bytes_per_op / wall / 1e6 if bytes_per_op else n / wall)
        ccpu.append(cc / n * 1e6)
        scpu.append(sc / n * 1e6)
    unit = "MB/s" if bytes_per_op else "ops/s"
    r = Result(server.name, workload, in_flight, unit, statistics.median(runs), max(runs),
               runs, statistics.median(ccpu), statistics.median(scpu))
    _print_result(r)
    return r


def _print_result(r: Result) -> None:
    target = TARGETS.get((r.workload, r.in_flight))
    verdict = ""
    if target is not None and (r.server == "brick" or r.workload == "null"):
        verdict = "PASS" if r.median >= target else f"MISS (target {target})"
    print(f"{r.server:6s} {r.workload:13s} {r.in_flight:3d} in flight  "
          f"{r.median:9.0f} {r.unit:5s} (best {r.best:9.0f})  "
          f"cpu/op: client {r.client_cpu_us:6.1f} us, server {r.server_cpu_us:6.1f} us  "
          f"{verdict}", flush=True)


async def bench_server(server: Server, args: argparse.Namespace) -> list[Result]:
    results = []
    poll_arg = {"busy_poll": args.busy_poll_us * 1e-6} if DEFAULT_BUDGET else {}
    async with open_rpc_connection(HOST, server.port, volume=VOLUME, client_id="rpc-bench",
                                   role="bench", **poll_arg) as conn:

        async def null(_: int) -> None:
            await conn.call("null", {})

        if "null" in args.workloads:
            for in_flight in (1, 64):
                poll = getattr(conn, "busy_poll", None)
                polls, hits = (poll.polls, poll.hits) if poll else (0, 0)
                results.append(await _measure(conn, server, args, "null", in_flight, null))
                if poll and in_flight == 1:
                    n = poll.polls - polls
                    print(f"       busy polls: {n}, "
                          f"{(poll.hits - hits) / max(n, 1):.0%} of them got the reply",
                          flush=True)
        if "write" not in args.workloads:
            return results
        gfid = uuid.uuid4().bytes
        if server.name == "brick":
            await conn.call("create", {
                "pgfid": ROOT_GFID, "name": b"rpc-bench.dat", "gfid": gfid, "mode": 0o644,
                "uid": os.getuid(), "gid": os.getgid()})
        for size, label in ((128 * 1024, "write 128 KiB"), (1024 * 1024, "write 1 MiB")):
            data = os.urandom(size)
            slots = (64 * 1024 * 1024) // size  # keep the file at 64 MiB of tmpfs

            # The echo server's "write" only counts the bytes: the cost of the
            # protocol alone, to set against the brick's figure.
            async def write(i: int, data: bytes = data, slots: int = slots) -> None:
                await conn.call("write", {"gfid": gfid, "offset": (i % slots) * len(data),
                                          "data": data})

            for in_flight in (1, 4):
                results.append(await _measure(conn, server, args, label, in_flight, write,
                                              bytes_per_op=size))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--server", choices=("brick", "echo", "both"), default="both")
    parser.add_argument("--workloads", default="null,write",
                        help="comma-separated subset of null,write")
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                        help="first measure blocking ping-pong between two plain processes "
                             "(default: yes)")
    parser.add_argument("--busy-poll-us", type=float, default=DEFAULT_BUDGET * 1e6,
                        help="how long a lone call polls for its reply (0: never)")
    parser.add_argument("--floor-echo", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.floor_echo:
        serve_floor_echo()
        return
    args.workloads = set(args.workloads.split(","))
    if not args.workloads <= {"null", "write"}:
        parser.error("--workloads takes null and/or write")

    print(f"load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; "
          f"{os.cpu_count()} cpus; python {sys.version.split()[0]}; {cpu_idle_settings()}",
          flush=True)
    results: list[Result] = []
    if args.floor:
        server = start_floor()
        try:
            results.append(measure_floor(server, args))
        finally:
            server.stop()
    starters = {"brick": start_brick, "echo": start_echo}
    names = ["brick", "echo"] if args.server == "both" else [args.server]
    for name in names:
        try:
            server = starters[name]()
        except (OSError, RuntimeError) as exc:
            print(f"{name}: skipped: {exc}", flush=True)
            continue
        try:
            results += trio.run(bench_server, server, args)
        finally:
            server.stop()
    floor = next((r for r in results if r.server == "floor"), None)
    if floor is not None:
        for r in results:
            if r.workload == "null" and r.in_flight == 1:
                print(f"{r.server} null with 1 in flight: {r.median / floor.median:.2f} of the "
                      f"floor (best {r.best / floor.best:.2f})", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)


if __name__ == "__main__":
    main()
