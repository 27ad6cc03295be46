"""Circle IoU of notebook 03's ControlNet recipe, at a constant lr, by steps, placement and radius.

Trains the tiny profile's recipe (``cnhelpers.course.recipes.course_training_args``: batch 16) with a constant lr of
``--learning_rate`` (1e-3: the course's recipe until it took a cosine schedule, see ``controlnet_recipes.py``) for
``--steps`` steps with a checkpoint every ``--every``, then scores each checkpoint's ControlNet (UniPC, 20 steps,
the profile's guidance) on ``-n`` held-out outlines of each placement, split as ``cnhelpers.course.metrics.iou_breakdown``
does. The lr is constant, so checkpoint N is the ControlNet an N-step run would make: the curve says how many
steps a recipe needs; a decaying schedule ends each run at a better point than the curve's.

    OMP_NUM_THREADS=1 python benchmarks/controlnet_steps.py --base cnhelpers/assets/tiny-sd --out build/steps.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import ControlNetModel

from cnhelpers.course.evaluation import iou_by_group
from cnhelpers.course.held_out import HELD_OUT_SEED, held_out_circles, held_out_examples
from cnhelpers.course.profiles import get_profile
from cnhelpers.course.recipes import course_training_args
from cnhelpers.inference import load_controlnet_pipeline
from cnhelpers.paths import build_dir
from cnhelpers.training import train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=Path("cnhelpers/assets/tiny-sd"))
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--every", type=int, default=600)
    parser.add_argument("-n", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=None, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    profile = get_profile("tiny")
    output_dir = build_dir() / "controlnet-steps"
    start = time.perf_counter()
    train(course_training_args(profile, args.base, output_dir, max_train_steps=args.steps,
                               lr_scheduler="constant", learning_rate=args.learning_rate,
                               checkpointing_steps=args.every))
    results = {"train_seconds": time.perf_counter() - start, "steps": {}}
    print(f"trained {args.steps} steps in {results['train_seconds']:.0f} s", flush=True)
    sets = {placement: (held_out_examples(args.n, placement=placement), held_out_circles(args.n, placement=placement))
            for placement in ("anywhere", "course")}
    pipeline = None
    for step in range(args.every, args.steps + 1, args.every):
        controlnet = ControlNetModel.from_pretrained(output_dir / f"checkpoint-{step}" / "controlnet")
        if pipeline is None:
            pipeline = load_controlnet_pipeline(args.base, controlnet)
        else:
            pipeline.controlnet.load_state_dict(controlnet.state_dict())
        row = {}
        for placement, (examples, circles) in sets.items():
            row[placement] = iou_by_group(pipeline, examples, circles, HELD_OUT_SEED,
                                          guidance_scale=profile.guidance_scale)
        results["steps"][step] = row
        print(step, json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
