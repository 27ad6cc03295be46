"""Which condition type controls the circle best? The tiny base trained at one budget on each fill condition type.

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/condition_types.py [--steps 400] [--every 100] [-n 16] \
        [--out benchmarks/results/condition-types-tiny-cpu-DATE]

Each condition type of ``cnhelpers.course.fill.FILL_CONDITIONS`` (outline, filled mask, a depth-like dome, a partial
jittered scribble, two key points, canny of the target picture) gets the tiny profile's recipe at a constant lr of
2e-3 (the recipe's peak; constant, so that checkpoint N is what an N-step run makes) on 2,048 generated examples of
that type, batch 16, for ``--steps`` steps, a checkpoint every ``--every``. Each checkpoint draws ``n`` held-out
circles from their pictures of that type and is scored against the circle's outline disc (``fill_curves``). Prints
the IoU by step of each type, writes OUT.json (every figure) and OUT.png (the curves on one plot).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from cnhelpers.course.fill import FILL_CONDITIONS
from fill_curves import Variant, base_alone_iou, markdown_table, plot_curves, run_curve, write_json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("-n", type=int, default=16, help="held-out circles per checkpoint")
    parser.add_argument("--conditions", nargs="+", default=list(FILL_CONDITIONS), choices=FILL_CONDITIONS)
    parser.add_argument("--out", type=Path, default=None, help="OUT.json and OUT.png are written")
    parser.add_argument("--cached_only", action="store_true",
                        help="report only the conditions already trained and scored (their folders' figures)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    wall, cpu = time.perf_counter(), time.process_time()
    rows = [run_curve(Variant(condition, {"lr_scheduler": "constant", "learning_rate": 2e-3}, args.steps, args.every,
                              condition), args.n, cached_only=args.cached_only) for condition in args.conditions]
    rows = [row for row in rows if row is not None]
    baseline = base_alone_iou(args.n)
    print(f"base alone (no ControlNet): {baseline:.3f}")
    print(markdown_table(rows))
    total = {"wall_seconds": round(time.perf_counter() - wall, 1), "cpu_seconds": round(time.process_time() - cpu, 1)}
    print(f"this process: {total['cpu_seconds']:.0f} CPU s, {total['wall_seconds']:.0f} s wall")
    if args.out:
        write_json(args.out.with_suffix(".json"), {"rows": rows, "base_alone": baseline, "n": args.n,
                                                   "process": total})
        plot_curves([(f"condition types: lr 2e-3 constant, batch 16, {args.n} held-out circles", rows, "steps",
                      None)], args.out.with_suffix(".png"), baseline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
