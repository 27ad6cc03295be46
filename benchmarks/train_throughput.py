"""Training throughput: the course's CLI against upstream's train_controlnet.py, same flags, same data.

    python benchmarks/train_throughput.py --upstream /path/to/train_controlnet.py

Both run as child processes on the tiny model and generated fill data (64 px, batch 4), on one thread.
Start-up (imports, loading, caching) is excluded by timing two step counts and taking the difference;
the runs alternate between the two scripts, after an untimed warm-up run of each (``--warmup``). Prints s/step
for each, their ratio, and each one's peak RSS.
CPU seconds per step (user + system, from the kernel) are printed too: on a shared machine they vary
much less than wall time.
Without ``--upstream`` only the course's loop is timed. Keep upstream's script outside the repository.

``--variant NAME="FLAGS"`` adds a row: the course's CLI with FLAGS added to the shared ones, e.g.
``--variant 'compiled=--torch_compile --channels_last'``. Such a row runs other flags than upstream's, and says so;
a compiled run's start-up (its first step) cancels out of the difference only if it takes as long in both runs:
the warm-up fills torch.compile's cache first, a long second step count (``--steps 20 1020``) shrinks what is
left, and the table's run total shows what compiling cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(script: list[str], flags: list[str], steps: int, output_dir: Path,
             threads: int) -> tuple[float, float, int]:
    """Run a training script to ``steps`` steps; return (wall seconds, CPU seconds, peak RSS in bytes)."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                        "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    command = [sys.executable, *script, *flags, "--max_train_steps", str(steps), "--output_dir", str(output_dir)]
    # stderr goes to a file, not a pipe: a long run's log would fill a pipe's buffer and block the child
    with tempfile.TemporaryFile(mode="w+") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        log.seek(0)
        stderr = log.read()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(script)} failed ({process.returncode}):\n{stderr[-3000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, default=None, help="path of diffusers' train_controlnet.py")
    parser.add_argument("--steps", type=int, nargs=2, default=(20, 320),
                        help="the two step counts (a long second run keeps the slope steady)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--examples", type=int, default=512, help="size of the generated data set")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed short runs of each script first: they fill the file cache and torch.compile's "
                             "cache, whose cold first fill (tens of seconds) would otherwise land in one timed run")
    parser.add_argument("--variant", action="append", default=[], metavar='NAME="FLAGS"',
                        help="also time the course with these flags added (other flags than upstream's)")
    parser.add_argument("--floor", action="store_true",
                        help="also time the models' own arithmetic alone (step_floor.py: forward, backward and AdamW "
                             "update, with each row's --torch_compile and --channels_last): upstream's s/step over it "
                             "is the most any script can gain over upstream")
    args = parser.parse_args(argv)
    variants = {}
    for variant in args.variant:
        name, sep, extra = variant.partition("=")
        if not sep or not name or name in ("course", "upstream") or name in variants:
            parser.error(f"--variant {variant!r}: give NAME=FLAGS with a new name, e.g. 'compiled=--torch_compile'")
        variants[name] = extra.split()

    from cnhelpers.course.fill import ensure_fill_dataset
    from cnhelpers.course.tiny_bases import ensure_tiny_base

    base, data = ensure_tiny_base(), ensure_fill_dataset(args.examples, 64)
    flags = ["--pretrained_model_name_or_path", str(base), "--train_data_dir", str(data), "--resolution", "64",
             "--train_batch_size", "4", "--learning_rate", "1e-5", "--seed", "0", "--checkpointing_steps", "1000000",
             "--mixed_precision", "no", "--report_to", "tensorboard"]
    scripts = {"course": ["-m", "cnhelpers.train"]}
    extra_flags = {name: [] for name in scripts} | variants
    scripts |= {name: ["-m", "cnhelpers.train"] for name in variants}
    if args.upstream is not None:
        if not args.upstream.is_file():
            parser.error(f"--upstream {args.upstream} is not a file")
        scripts["upstream"] = [str(args.upstream)]

    short, long = args.steps
    per_step: dict[str, list[float]] = {name: [] for name in scripts}  # wall seconds per step
    cpu_per_step: dict[str, list[float]] = {name: [] for name in scripts}  # CPU seconds per step
    peak: dict[str, int] = {name: 0 for name in scripts}
    total: dict[str, list[float]] = {name: [] for name in scripts}
    # --floor: the models alone, once per set of model flags in each repeat, so that a floor is timed within
    # minutes of the runs it is compared with, not after all of them (this machine's speed drifts by tens of percent)
    floor_rows: dict[tuple[str, ...], list[str]] = {}
    for name in scripts:
        if args.floor and name != "upstream":
            floor_rows.setdefault(floor_flags(extra_flags.get(name, [])), []).append(name)
    floors: dict[tuple[str, ...], list[dict]] = {flags: [] for flags in floor_rows}
    with tempfile.TemporaryDirectory() as tmp:
        for warmup in range(args.warmup):
            for name, script in scripts.items():
                run_once(script, flags + extra_flags.get(name, []), short, Path(tmp) / f"{name}-warmup-{warmup}",
                         args.threads)
        for repeat in range(args.repeats):
            for name, script in scripts.items():  # alternate the scripts within each repeat
                wall, cpu = {}, {}
                for steps in (short, long):
                    wall[steps], cpu[steps], rss = run_once(
                        script, flags + extra_flags.get(name, []), steps, Path(tmp) / f"{name}-{repeat}-{steps}",
                        args.threads)
                    peak[name] = max(peak[name], rss)
                per_step[name].append((wall[long] - wall[short]) / (long - short))
                cpu_per_step[name].append((cpu[long] - cpu[short]) / (long - short))
                total[name].append(wall[long])
                print(f"repeat {repeat + 1}: {name:<8} {per_step[name][-1]:.4f} s/step, "
                      f"{cpu_per_step[name][-1]:.4f} CPU s/step ({short} steps {wall[short]:.1f} s, "
                      f"{long} steps {wall[long]:.1f} s)", flush=True)
            for model_flags in floor_rows:
                floors[model_flags].append(run_floor(args.threads, model_flags))
                print(f"repeat {repeat + 1}: floor    {floors[model_flags][-1]['floor_s_per_step']:.4f} s/step "
                      f"({' '.join(model_flags) or 'default flags'})", flush=True)

    print(f"\n{args.threads} thread(s), 64 px, batch 4, steps {short} vs {long}, {args.repeats} repeats (median), "
          f"after {args.warmup} untimed warm-up run(s) of each")
    print(f"{'script':<10} {'s/step':>8} {'steps/s':>8} {'CPU s/step':>11} {'run of ' + str(long) + ' steps':>16} "
          f"{'peak RSS':>10}")
    for name in scripts:
        step = statistics.median(per_step[name])
        print(f"{name:<10} {step:>8.4f} {1 / step:>8.2f} {statistics.median(cpu_per_step[name]):>11.4f} "
              f"{statistics.median(total[name]):>14.1f} s {peak[name] / 2**30:>8.3f} GiB")
    if "upstream" in scripts:
        ratio = statistics.median(per_step["upstream"]) / statistics.median(per_step["course"])
        cpu_ratio = statistics.median(cpu_per_step["upstream"]) / statistics.median(cpu_per_step["course"])
        rss_ratio = peak["course"] / peak["upstream"]
        print(f"\ncourse / upstream: {ratio:.2f}x the steps per second ({cpu_ratio:.2f}x per CPU second), "
              f"{rss_ratio:.3f}x the peak RSS")
        for name, extra in variants.items():
            ratio = statistics.median(per_step["upstream"]) / statistics.median(per_step[name])
            print(f"{name} / upstream: {ratio:.2f}x the steps per second, {peak[name] / peak['upstream']:.3f}x the "
                  f"peak RSS (the course with {' '.join(extra)}: other flags than upstream's)")
    for name, extra in variants.items():
        ratio = statistics.median(per_step["course"]) / statistics.median(per_step[name])
        print(f"{name} / course: {ratio:.2f}x the steps per second ({' '.join(extra)})")
    if args.floor:
        print_floors(floor_rows, floors, per_step)
    return 0


def floor_flags(extra: list[str]) -> tuple[str, ...]:
    """The flags of a row that change the models' own arithmetic or kernels, as step_floor.py takes them."""
    flags = []
    for index, flag in enumerate(extra):
        if flag == "--channels_last":
            flags.append(flag)
        elif flag == "--torch_compile":
            backend = extra[index + 1] if index + 1 < len(extra) and not extra[index + 1].startswith("-") else None
            flags += [flag, backend or "inductor"]
    return tuple(flags)


def run_floor(threads: int, model_flags: tuple[str, ...]) -> dict:
    """step_floor.py's figures, from a child process of ``threads`` threads (its stderr kept unless it fails)."""
    command = [sys.executable, str(Path(__file__).with_name("step_floor.py")), "--threads", str(threads), *model_flags]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "floor.json"
        done = subprocess.run([*command, "--json", str(out)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"step_floor.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def print_floors(rows: dict[tuple[str, ...], list[str]], floors: dict[tuple[str, ...], list[dict]],
                 per_step: dict[str, list[float]]) -> None:
    """Print each floor (the median over repeats) beside the s/step of the rows run with its model flags: how much of
    a step is the models' arithmetic, and, repeat by repeat, upstream's s/step over the floor, the most any script
    could gain over upstream with these kernels."""
    print("\nthe models alone (benchmarks/step_floor.py: forward, backward and the AdamW update on fixed inputs; "
          "no data, VAE, text encoder or logging), timed in each repeat")
    for model_flags, names in rows.items():
        runs = floors[model_flags]
        floor = statistics.median(run["floor_s_per_step"] for run in runs)
        print(f"  {' '.join(model_flags) or 'default flags'}: floor {floor:.4f} s/step (medians of their own: "
              f"forward + backward {statistics.median(run['models_s_per_step'] for run in runs):.4f}, AdamW "
              f"{statistics.median(run['adamw_s_per_step'] for run in runs):.4f})")
        for name in names:
            shares = [run["floor_s_per_step"] / step for run, step in zip(runs, per_step[name])]
            print(f"    {name}: the floor is {statistics.median(shares):.0%} of its step (repeats: "
                  f"{', '.join(f'{share:.0%}' for share in shares)})")
        if "upstream" in per_step:
            ceilings = [step / run["floor_s_per_step"] for run, step in zip(runs, per_step["upstream"])]
            print(f"    upstream / floor: {statistics.median(ceilings):.2f}x at most (repeats: "
                  f"{', '.join(f'{ceiling:.2f}x' for ceiling in ceilings)})")

if __name__ == "__main__":
    sys.exit(main())
