"""Time to control: how many seconds notebook 03's main run takes to reach a held-out circle IoU, per recipe.

Each variant runs exactly what notebook 03's main cell runs (``notebook_run_args``: its checkpoints, validation rounds
and TensorBoard logs, and a ``CheckpointIoU`` that scores each checkpoint on the 8 held-out outlines as it is
saved), with the flags it changes, as JSON. The clock starts where the cell starts training (before the models
load and the latent cache is built) and is read when each checkpoint's score is known, so the printed seconds are
what a learner waits for the curve to reach the dashed line. The notebook also redraws its live plot every 50
steps, which this script does not.

    python benchmarks/time_to_control.py --variant 'now={}' \
        --variant 'warmup-2.5e-3-600={"learning_rate": 2.5e-3, "lr_warmup_steps": 50, "max_train_steps": 600}'

A variant's ``max_train_steps`` sets the run's length (the checkpoints are a tenth of it apart, as in the notebook).
One variant at a time, on torch's default threads (the notebook kernel's). The first variant is the baseline: each
other one's seconds to the target are printed as a ratio of its.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from cnhelpers.course.evaluation import CheckpointIoU
from cnhelpers.course.profiles import get_profile
from cnhelpers.course.recipes import notebook_run_args
from cnhelpers.paths import build_dir
from cnhelpers.training import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from controlnet_recipes import parse_variant  # noqa: E402  (a script beside this one)


def apply_overrides(args, name: str, overrides: dict):
    """``args`` with a variant's flags set; a flag the training does not have stops with one line."""
    for flag, value in overrides.items():
        if not hasattr(args, flag):
            raise SystemExit(f"--variant {name}: --{flag} is not a training flag; check its spelling "
                             "(python -m cnhelpers.train --help lists them)")
        setattr(args, flag, value)
    return args


def time_variant(profile, base, name: str, overrides: dict, target: float) -> dict:
    """Train one variant as notebook 03 does; the wall seconds at which each checkpoint's IoU was known."""
    overrides = dict(overrides)
    steps = overrides.pop("max_train_steps", profile.course_train_steps)
    output_dir = build_dir() / "time-to-control" / name
    shutil.rmtree(output_dir, ignore_errors=True)
    torch.manual_seed(0)
    start, cpu_start = time.perf_counter(), time.process_time()
    args = apply_overrides(notebook_run_args(profile, base, output_dir, steps=steps, seed=overrides.pop("seed", 0)),
                           name, overrides)
    seconds = []
    scorer = CheckpointIoU(base, output_dir, n=8, guidance_scale=profile.guidance_scale,
                           on_score=lambda step, iou: seconds.append(time.perf_counter() - start))
    train(args, callback=scorer)
    reached = next(((s, t) for s, iou, t in zip(scorer.steps, scorer.ious, seconds) if iou >= target), None)
    return {"steps": steps, "overrides": overrides, "checkpoints": scorer.steps, "ious": scorer.ious,
            "seconds": seconds, "wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu_start,
            "reached": reached}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True, metavar="NAME={JSON}")
    parser.add_argument("--base", type=Path, default=Path("cnhelpers/assets/tiny-sd"))
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--out", type=Path, default=None, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    variants = [parse_variant(text) for text in args.variant]
    profile = get_profile("tiny")
    results = {}
    for name, overrides in variants:
        row = results[name] = time_variant(profile, args.base, name, overrides, args.target)
        curve = ", ".join(f"{s}: {iou:.3f} at {t:.0f} s" for s, iou, t in zip(row["checkpoints"], row["ious"],
                                                                             row["seconds"]))
        print(f"{name} {json.dumps(overrides)}: {curve}", flush=True)
    print(f"\n| variant | steps | IoU >= {args.target} first at | final IoU | run wall s | run CPU s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, row in results.items():
        reached = f"step {row['reached'][0]}, {row['reached'][1]:.0f} s" if row["reached"] else "not reached"
        print(f"| {name} | {row['steps']} | {reached} | {row['ious'][-1]:.3f} | {row['wall_s']:.0f} | "
              f"{row['cpu_s']:.0f} |")
    first, baseline = next(iter(results.items()))
    for name, row in list(results.items())[1:]:  # each against the first variant, the baseline
        if row["reached"] and baseline["reached"]:
            print(f"{name} / {first}: IoU >= {args.target} in {row['reached'][1] / baseline['reached'][1]:.2f}x the "
                  f"seconds ({row['reached'][1]:.0f} s against {baseline['reached'][1]:.0f} s); final IoU "
                  f"{row['ious'][-1] - baseline['ious'][-1]:+.3f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
