"""The knobs by experiment: learning rate, and batch size at an equal number of samples, on the tiny base.

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/knob_sweep.py [--steps 400] [--every 100] [-n 16] \
        [--out benchmarks/results/knob-sweep-tiny-cpu-DATE]

Learning rate: the tiny profile's recipe (batch 16, Min-SNR 5, outline data) at a constant lr of each of
``--learning_rates`` (default 1e-5, 1e-4, 1e-3, 2e-3, 1e-2; constant, so checkpoint N is what an N-step run makes)
for ``--steps`` steps, a checkpoint every ``--every``. Batch size: lr 2e-3 constant at each of ``--batch_sizes``
(default 16, 4, 1) for the same number of samples (``steps`` x 16), so batch b runs ``steps * 16 / b`` steps with
checkpoints at the same sample counts. Every checkpoint is scored by the mean circle IoU of ``n`` held-out circles
(``fill_curves``). Prints the curves, writes OUT.json (every figure) and OUT.png (two panels: IoU by step for each
lr, IoU by samples seen for each batch size).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fill_curves import Variant, base_alone_iou, markdown_table, plot_curves, run_curve, write_json

RECIPE_LR = 2e-3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="steps at batch 16")
    parser.add_argument("--every", type=int, default=100, help="checkpoint spacing at batch 16")
    parser.add_argument("-n", type=int, default=16, help="held-out circles per checkpoint")
    parser.add_argument("--learning_rates", type=float, nargs="+", default=[1e-5, 1e-4, 1e-3, RECIPE_LR, 1e-2])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[16, 4, 1])
    parser.add_argument("--out", type=Path, default=None, help="OUT.json and OUT.png are written")
    parser.add_argument("--cached_only", action="store_true",
                        help="report only the variants already trained and scored (their folders' figures)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    wall, cpu = time.perf_counter(), time.process_time()
    samples = args.steps * 16

    def lr_variant(lr):
        return Variant(f"lr {lr:g}", {"lr_scheduler": "constant", "learning_rate": lr}, args.steps, args.every)

    def batch_variant(batch):
        scale = 16 // batch
        overrides = {"lr_scheduler": "constant", "learning_rate": RECIPE_LR}
        if batch != 16:
            overrides["train_batch_size"] = batch
        return Variant(f"batch {batch}", overrides, args.steps * scale, args.every * scale)

    # The recipe's own run (lr 2e-3, batch 16: condition_types.py's outline run too) last, so that a concurrent
    # condition_types.py has trained it by then and it is read from its folder.
    variants = [lr_variant(lr) for lr in args.learning_rates if lr != RECIPE_LR]
    variants += [batch_variant(b) for b in args.batch_sizes if b != 16]
    rows = {v.name: run_curve(v, args.n, cached_only=args.cached_only) for v in variants}
    recipe = run_curve(lr_variant(RECIPE_LR), args.n, cached_only=args.cached_only)
    lr_rows = [row for lr in sorted(args.learning_rates) if (row := rows.get(f"lr {lr:g}", recipe))]
    batch_rows = [row for b in sorted(args.batch_sizes)
                  if (row := (recipe and recipe | {"name": "batch 16"}) if b == 16 else rows.get(f"batch {b}"))]
    for row in batch_rows:
        row["batch"] = 16 if row["name"] == "batch 16" else row["overrides"]["train_batch_size"]
        row["samples"] = [step * row["batch"] for step in row["steps"]]
    baseline = base_alone_iou(args.n)
    print(f"base alone (no ControlNet): {baseline:.3f}")
    print("learning rate (batch 16):")
    print(markdown_table(lr_rows))
    print(f"batch size at equal samples ({samples:,}), lr {RECIPE_LR:g}:")
    print(markdown_table(batch_rows, "samples", x=lambda row: row["samples"]))
    total = {"wall_seconds": round(time.perf_counter() - wall, 1), "cpu_seconds": round(time.process_time() - cpu, 1)}
    print(f"this process: {total['cpu_seconds']:.0f} CPU s, {total['wall_seconds']:.0f} s wall")
    if args.out:
        write_json(args.out.with_suffix(".json"), {"learning_rate": lr_rows, "batch_size": batch_rows,
                                                   "base_alone": baseline, "n": args.n, "process": total})
        plot_curves([(f"learning rate (constant, batch 16, {args.n} held-out circles)", lr_rows, "steps", None),
                     (f"batch size at equal samples (lr {RECIPE_LR:g} constant)", batch_rows, "samples seen",
                      lambda row: row["samples"])], args.out.with_suffix(".png"), baseline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
