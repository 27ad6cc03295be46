"""make test's scheduler: every leg (a make target), at most --jobs at a time, each after the legs it needs.

    python3 .ci/schedule.py [--jobs 2] [--times FILE] LEG[:NEEDS,NEEDS...] ...

A leg starts as soon as the legs it needs have passed and a slot is free; among the ready legs the one listed first
starts first, so list the longest chains first. Each leg runs `make LEG` with its output in build/legs/LEG.log,
printed whole when it ends, so two legs' lines never interleave. With more than one job each leg's torch, OpenMP
and MKL get one thread (OMP_NUM_THREADS=1, unless already set): two legs of one thread each keep 2 cores busy,
while two legs of two threads each oversubscribe them (OpenMP's threads spin at their barriers). A leg whose
needs failed is skipped, and says so; every other leg still runs, and the exit status is non-zero if any leg
failed or was skipped.

Each leg's wall seconds, exit status and CPU seconds (user + system of `make` and every process it waited for,
Jupyter kernels and pytest workers among them: os.wait4's resource usage) are appended to --times (default
$CI_TIMES) as "LEG WALL STATUS CPU", the lines .ci/report reads. Standard library only: it runs before any venv.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def parse_legs(specs: list[str]) -> dict[str, list[str]]:
    """``LEG:NEED,NEED`` specs -> {leg: needs}, in the order given; every need must be a leg listed."""
    legs: dict[str, list[str]] = {}
    for spec in specs:
        name, _, needs = spec.partition(":")
        if name in legs:
            raise SystemExit(f"schedule: {name} is listed twice; list each leg once")
        legs[name] = [need for need in needs.split(",") if need]
    for name, needs in legs.items():
        unknown = [need for need in needs if need not in legs]
        if unknown:
            raise SystemExit(f"schedule: {name} needs {', '.join(unknown)}, which is not a leg; list it too")
    return legs


def leg_environment(jobs: int) -> dict[str, str]:
    """The environment of each leg: one thread per leg when legs run side by side."""
    env = dict(os.environ)
    if jobs > 1:
        for variable in THREAD_VARIABLES:
            env.setdefault(variable, "1")
    return env


def run(legs: dict[str, list[str]], jobs: int, log_dir: Path, times: Path | None, make: str = "make") -> int:
    """Run every leg; print each one's log when it ends; return 0 when every leg passed."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = leg_environment(jobs)
    status: dict[str, int | None] = {}  # a finished leg's exit status; None: skipped
    running: dict[int, tuple[str, subprocess.Popen, float, object]] = {}
    waiting = list(legs)
    while waiting or running:
        for name in list(waiting):
            needs = legs[name]
            if any(status.get(need, 0) != 0 for need in needs if need in status):
                waiting.remove(name)
                status[name] = None
                failed = [need for need in needs if need in status and status[need] != 0]
                print(f"=== {name}: skipped, it needs {', '.join(failed)}, which did not pass", flush=True)
                continue
            if len(running) < jobs and all(status.get(need) == 0 for need in needs):
                waiting.remove(name)
                log = open(log_dir / f"{name}.log", "w")
                process = subprocess.Popen([make, "--no-print-directory", name], stdout=log,
                                           stderr=subprocess.STDOUT, env=env)
                running[process.pid] = (name, process, time.monotonic(), log)
                print(f"=== {name}: started", flush=True)
        if not running:
            continue  # every waiting leg was just skipped
        pid, code, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        name, process, start, log = running.pop(pid)
        process.returncode = os.waitstatus_to_exitcode(code)
        log.close()
        wall = time.monotonic() - start
        cpu = usage.ru_utime + usage.ru_stime
        status[name] = process.returncode
        if times:
            with open(times, "a") as out:
                out.write(f"{name} {round(wall)} {process.returncode} {round(cpu)}\n")
        verdict = "ok" if process.returncode == 0 else f"FAILED ({process.returncode})"
        print(f"=== {name}: {verdict}, {wall:.0f} s wall, {cpu:.0f} s CPU; its output:", flush=True)
        sys.stdout.write((log_dir / f"{name}.log").read_text(errors="replace"))
        sys.stdout.flush()
    return 0 if all(code == 0 for code in status.values()) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="legs at a time (default 2)")
    parser.add_argument("--times", type=Path, default=os.environ.get("CI_TIMES") or None,
                        help="append 'LEG WALL STATUS CPU' per leg here (default $CI_TIMES)")
    parser.add_argument("--logs", type=Path, default=Path("build/legs"), help="each leg's output (build/legs)")
    parser.add_argument("--make", default=os.environ.get("MAKE", "make"))
    parser.add_argument("legs", nargs="+", metavar="LEG[:NEEDS]")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be 1 or more")
    return run(parse_legs(args.legs), args.jobs, args.logs, args.times, args.make)


if __name__ == "__main__":
    sys.exit(main())
