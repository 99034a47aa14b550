"""Filesystem benchmark: the same workloads on the local disk, a FUSE passthrough,
pyglfs (replica 2, both bricks on the local disk) and, where installed, GlusterFS.

    python bench/fs_bench.py [--targets local,passthrough,pyglfs] [--workloads ...]
                             [--quick] [--json out.json] [--keep]
                             [--pyglfs-options write-behind=no,kernel-writeback-cache=yes]

Run as root (to drop caches and mount). It prints one table: each figure, its
ratio to the local disk and to the passthrough, and the goals of the FUSE
client issue checked as PASS/MISS. Work happens in a new /var/tmp/pyglfs-bench-*
(a local disk, not tmpfs; ``--workdir`` names another, locked for the run so
two runs never share bricks or a mount point), removed at the end unless ``--keep``. Targets that
cannot run here are skipped with one line saying why.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from targets import (  # noqa: E402
    LocalTarget,
    PassthroughTarget,
    PyglfsTarget,
    Target,
    TargetSkipped,
    say,
)
from workloads import METRICS, WORKLOADS, Config, Dropper, Run  # noqa: E402

ALL_TARGETS = ("local", "passthrough", "pyglfs", "glusterfs")
DEFAULT_TARGETS = "local,passthrough,pyglfs,glusterfs"
WORKDIR_BASE = Path("/var/tmp")


@dataclass(frozen=True)
class Goal:
    """pyglfs's figure must be ``factor`` x the reference's (at least or at most)."""

    metric: str
    factor: float
    ref: str
    at_least: bool

    def text(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.factor:g} x {self.ref}"


GOALS = [
    Goal("seq_write", 0.48, "local", True),
    Goal("seq_read", 0.8, "passthrough", True),
    Goal("randread", 0.8, "passthrough", True),
    Goal("randwrite", 0.5, "passthrough", True),
    Goal("create", 0.75, "passthrough", True),
    Goal("delete", 0.6, "passthrough", True),
    Goal("rename", 0.7, "passthrough", True),
    Goal("stat", 1.4, "passthrough", True),
    Goal("ls_l", 4.0, "local", False),
    Goal("untar", 1.5, "passthrough", False),
]
RSS_LIMIT_MIB = 200.0
RSS_GROWTH_SLACK = 0.02  # "no growth": pass 2 within 2 % (at least 2 MiB) of pass 1


def make_target(name: str, work: Path, pyglfs_options: str = "") -> Target:
    """``pyglfs_options``: more ``-o`` options for the pyglfs mount (A/B runs)."""
    if name == "glusterfs":
        from glusterfs_target import GlusterfsTarget

        return GlusterfsTarget(work)
    if name == "pyglfs":
        return PyglfsTarget(work, pyglfs_options)
    cls: type[Target] = {"local": LocalTarget, "passthrough": PassthroughTarget}[name]
    return cls(work)


def run_target(name: str, args: argparse.Namespace, cfg: Config, work: Path,
               drop: Dropper) -> tuple[dict[str, float], list[str]]:
    """Run the chosen workloads on one target; returns its figures and notes."""
    target = make_target(name, work, pyglfs_options=args.pyglfs_options)
    figures: dict[str, float] = {}
    notes: list[str] = []
    try:
        say(f"[{name}] setting up")
        mnt = target.setup()
        for wl in args.workloads:
            if wl == "rss" and target.pid is None:
                continue
            say(f"[{name}] {wl}")
            run = Run(name, mnt, work / "cache", cfg, target.pid, drop)
            t = time.monotonic()
            try:
                got = WORKLOADS[wl](run)
            except Exception as e:
                notes.append(f"{name}: workload {wl} failed: {e}")
                say(traceback.format_exc())
                continue
            figures |= got
            notes += [f"{name}: {n}" for n in run.notes]
            shown = ", ".join(f"{k}={v:.4g}" for k, v in got.items())
            say(f"[{name}] {wl} done in {time.monotonic() - t:.1f} s: {shown}")
    except TargetSkipped as e:
        notes.append(str(e))
        say(f"[{name}] skipped: {e}")
    except Exception as e:
        notes.append(f"{name}: setup failed: {e}")
        say(traceback.format_exc())
    finally:
        say(f"[{name}] tearing down")
        target.teardown()
    return figures, notes


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def medians(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Each target's figures: the median over the rounds that measured it."""
    out: dict[str, dict[str, float]] = {}
    for name in {t for r in rounds for t in r}:
        keys = {k for r in rounds for k in r.get(name, {})}
        out[name] = {k: statistics.median(r[name][k] for r in rounds if k in r.get(name, {}))
                     for k in keys}
    return out


def check_goals(res: dict[str, dict[str, float]], who: str = "pyglfs",
                rounds: list[dict[str, dict[str, float]]] | None = None,
                ) -> list[tuple[str, str, str]]:
    """(what, goal, PASS/MISS/-) for every goal of the issue, judged on ``who``.

    With several ``rounds``, a goal is judged on the median of the ratios each
    round measured (pyglfs and its reference a few minutes apart), and the
    verdict shows their range: this VM's own rates move 2-3x between runs.
    """
    mine = res.get(who, {})
    out = []
    for g in GOALS:
        ratios = [r[who][g.metric] / r[g.ref][g.metric] for r in (rounds or [res])
                  if r.get(who, {}).get(g.metric) is not None and r.get(g.ref, {}).get(g.metric)]
        verdict = "-"
        if ratios:
            ratio = statistics.median(ratios)
            ok = ratio >= g.factor if g.at_least else ratio <= g.factor
            spread = (f"; rounds {min(ratios):.2f}-{max(ratios):.2f}"
                      if len(ratios) > 1 else "")
            verdict = f"{'PASS' if ok else 'MISS'} ({ratio:.2f} x{spread})"
        out.append((METRICS[g.metric].label, g.text(), verdict))
    p1, p2 = mine.get("rss_pass1"), mine.get("rss_pass2")
    verdict = "-"
    if p1 is not None and p2 is not None:
        ok = p2 <= RSS_LIMIT_MIB and p2 - p1 <= max(2.0, RSS_GROWTH_SLACK * p1)
        verdict = f"{'PASS' if ok else 'MISS'} ({p1:.0f} -> {p2:.0f} MiB)"
    out.append(("client RSS after 2 stat passes", f"<= {RSS_LIMIT_MIB:g} MiB, no growth",
                verdict))
    return out


def table(res: dict[str, dict[str, float]], targets: list[str]) -> str:
    ratios = [(t, "local") for t in targets if t != "local" and "local" in targets]
    ratios += [(t, "passthrough") for t in targets
               if t not in ("local", "passthrough") and "passthrough" in targets]
    if "pyglfs" in targets and "glusterfs" in targets:
        ratios.append(("pyglfs", "glusterfs"))
    head = ["workload", "unit", *targets, *(f"{a}/{b}" for a, b in ratios)]
    rows = [head]
    for key, m in METRICS.items():
        vals = [res.get(t, {}).get(key) for t in targets]
        if all(v is None for v in vals):
            continue
        cells = [m.label, m.unit, *(_fmt(v) for v in vals)]
        for a, b in ratios:
            va, vb = res.get(a, {}).get(key), res.get(b, {}).get(key)
            cells.append(f"{va / vb:.2f}" if va is not None and vb else "-")
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default=DEFAULT_TARGETS,
                    help=f"comma-separated, from {','.join(ALL_TARGETS)} (default: all)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help=f"comma-separated, from {','.join(WORKLOADS)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--size-mb", type=int, help="sequential file size (default 512)")
    ap.add_argument("--files", type=int, help="small files in one directory (default 5000)")
    ap.add_argument("--renames", type=int, help="renames (default 1000)")
    ap.add_argument("--fio-size-mb", type=int, help="fio file size (default 256)")
    ap.add_argument("--fio-runtime", type=int, help="seconds per fio job (default 20)")
    ap.add_argument("--tree-files", type=int, help="files in the untar tree (default 3000)")
    ap.add_argument("--rss-files", type=int, help="files for the memory figure (default 100000)")
    ap.add_argument("--workdir", type=Path,
                    help=f"on the local disk (default: a new pyglfs-bench-* in {WORKDIR_BASE}); "
                         "two runs never share one")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="run every target N times, alternating (local, passthrough, pyglfs, "
                         "local, ...); the table shows medians, goals the median ratio")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--no-drop-caches", action="store_true",
                    help="do not drop caches: 'cold' figures become warm")
    ap.add_argument("--pyglfs-options", default="", metavar="OPTS",
                    help="more mount options for the pyglfs mount (-o), e.g. "
                         "write-behind=no, for A/B runs")
    args = ap.parse_args(argv)
    args.targets = [t for t in args.targets.split(",") if t]
    args.workloads = [w for w in args.workloads.split(",") if w]
    if args.repeat < 1:
        ap.error(f"--repeat must be >= 1, not {args.repeat}")
    for t in args.targets:
        if t not in ALL_TARGETS:
            ap.error(f"unknown target {t!r}; choose from {', '.join(ALL_TARGETS)}")
    for w in args.workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    return args


def config(args: argparse.Namespace) -> Config:
    cfg = Config.quick() if args.quick else Config()
    for f in ("size_mb", "files", "renames", "fio_size_mb", "fio_runtime", "tree_files",
              "rss_files"):
        v = getattr(args, f)
        if v is not None:
            if v <= 0:
                raise SystemExit(f"fs_bench: --{f.replace('_', '-')} must be > 0")
            setattr(cfg, f, v)
    return cfg


def checkout_commit() -> str:
    """The commit of the code under test, so figures can be tied to it."""
    try:
        r = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse",
                            "--short", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return r.stdout.strip() or "unknown"


def remove_workdir(work: Path) -> None:
    """Remove the work dir, unless a mount is still below it (rmtree would go in)."""
    real = os.path.realpath(work) + "/"
    with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
        left = [ln.split()[1] for ln in f if ln.split()[1].startswith(real)]
    if left:
        say(f"warning: still mounted, keeping {work}: {', '.join(left)}")
        return
    shutil.rmtree(work, ignore_errors=True)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(f"fs_bench: stopped by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM/SIGINT unwind through the finally blocks: mounts and daemons go
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    cfg = config(args)
    work: Path = args.workdir or Path(tempfile.mkdtemp(prefix="pyglfs-bench-",
                                                       dir=WORKDIR_BASE))
    work.mkdir(parents=True, exist_ok=True)
    lock = open(work / ".fs_bench.lock", "w")  # noqa: SIM115 (held for the whole run)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"fs_bench: {work} is in use by another fs_bench run: "
              "give this one its own --workdir", file=sys.stderr)
        return 1
    drop = Dropper(enabled=not args.no_drop_caches)
    rounds: list[dict[str, dict[str, float]]] = []
    notes: list[str] = []
    started = time.time()
    commit = checkout_commit()
    load_start = os.getloadavg()
    try:
        for n in range(args.repeat):
            if args.repeat > 1:
                say(f"round {n + 1} of {args.repeat}")
            got: dict[str, dict[str, float]] = {}
            for name in args.targets:
                figures, tnotes = run_target(name, args, cfg, work, drop)
                notes += tnotes
                if figures:
                    got[name] = figures
            rounds.append(got)
    finally:
        if not args.keep:
            remove_workdir(work)
    load_end = os.getloadavg()
    results = medians(rounds)
    shown = [t for t in args.targets if t in results]
    print()
    print(f"pyglfs filesystem benchmark  ({platform.node()}, {os.cpu_count()} CPUs, "
          f"kernel {platform.release()}, commit {commit}, "
          f"{'quick' if args.quick else 'full'} run"
          f"{f', medians of {args.repeat} rounds' if args.repeat > 1 else ''})")
    print(f"config: {json.dumps(asdict(cfg))}")
    print(f"caches dropped before cold phases: {'yes' if drop.enabled else 'NO'}; "
          f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end "
          f"(figures from a busy machine are not comparable)")
    print()
    print(table(results, shown) if shown else "no figures")
    print()
    goals = check_goals(results, rounds=rounds)
    if "pyglfs" in results:
        print("goals of the FUSE client issue, judged on pyglfs:")
        w0 = max(len(g[0]) for g in goals)
        w1 = max(len(g[1]) for g in goals)
        for what, goal, verdict in goals:
            print(f"  {what.ljust(w0)}  {goal.ljust(w1)}  {verdict}")
    else:
        print("goals of the FUSE client issue: not judged (pyglfs was not measured)")
    for n in notes:
        print(f"note: {n}")
    if args.json:
        doc = {"started": started, "commit": commit, "config": asdict(cfg), "targets": args.targets,
               "workloads": args.workloads, "results": results, "rounds": rounds,
               "notes": notes,
               "units": {k: m.unit for k, m in METRICS.items()},
               "goals": [{"what": a, "goal": b, "verdict": c} for a, b, c in goals],
               "host": {"kernel": platform.release(), "cpus": os.cpu_count(),
                        "loadavg_start": load_start, "loadavg_end": load_end}}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
