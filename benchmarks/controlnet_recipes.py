"""Circle IoU of variants of notebook 03's ControlNet recipe, each trained for the full run, on outlines anywhere.

Each variant is a name and the flags it changes in ``cnhelpers.course.recipes.course_training_args`` (the tiny profile's
recipe), as JSON. Each is trained for the profile's steps into ``build/controlnet-recipes/NAME`` (skipped when that
folder already holds a ControlNet), then its final ControlNet scores, with UniPC, 20 steps and the profile's guidance,
64 outlines drawn anywhere in the frame from two seeds: the course's held-out seed (notebook 06's set) and a second
one, so that a variant is not chosen on the set that reports it. Scores are split as
``cnhelpers.course.metrics.iou_breakdown`` does. Each training's wall time is printed beside the CPU seconds of this
process (``time.process_time``: on a shared machine the wall time also counts other people's work) and the steps
per second, so that recipes can be compared for time to control as well as final IoU.

    python benchmarks/controlnet_recipes.py --variant 'constant-1e-3={"lr_scheduler": "constant", "learning_rate": 1e-3}' \
        --variant 'cosine-2e-3={"lr_scheduler": "cosine", "learning_rate": 2e-3}' --out build/recipes.json
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

#: The second set of outlines: any seed the training data and notebook 06 do not use.
SELECTION_SEED = 777


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME={json}`` as (name, overrides); one clear error when it is not."""
    name, _, overrides = text.partition("=")
    try:
        parsed = json.loads(overrides)
    except json.JSONDecodeError as error:
        raise SystemExit(f"--variant {text!r}: the part after '=' is not JSON ({error.msg}); "
                         "write NAME='{\"learning_rate\": 2e-3}'") from None
    if not name or not isinstance(parsed, dict):
        raise SystemExit(f"--variant {text!r}: write NAME={{...}}, a name and a JSON object of flags")
    return name, parsed


def score(pipeline, seed: int, n: int, guidance_scale: float) -> dict[str, float]:
    """Mean IoU of ``n`` outlines drawn anywhere from ``seed``, by group; the images' seeds are notebook 06's."""
    examples = held_out_examples(n, seed=seed, placement="anywhere")
    circles = held_out_circles(n, seed=seed, placement="anywhere")
    return iou_by_group(pipeline, examples, circles, HELD_OUT_SEED, guidance_scale=guidance_scale)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True, metavar="NAME={JSON}",
                        help="a variant: its name and the flags it overrides, e.g. 'seed-1={\"seed\": 1}'")
    parser.add_argument("--base", type=Path, default=Path("cnhelpers/assets/tiny-sd"))
    parser.add_argument("-n", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 for timings comparable with a notebook kernel on a busy machine)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    variants = [parse_variant(text) for text in args.variant]
    torch.set_num_threads(args.threads)
    profile = get_profile("tiny")
    results = {}
    for name, overrides in variants:
        output_dir = build_dir() / "controlnet-recipes" / name
        row = {"overrides": overrides}
        if not (output_dir / "diffusion_pytorch_model.safetensors").exists():
            start, cpu_start = time.perf_counter(), time.process_time()
            result = train(course_training_args(profile, args.base, output_dir, **overrides))
            row["train_seconds"] = round(time.perf_counter() - start, 1)
            row["train_cpu_seconds"] = round(time.process_time() - cpu_start, 1)
            row["steps"] = result.global_step
            row["steps_per_second_wall"] = round(result.global_step / row["train_seconds"], 2)
        pipeline = load_controlnet_pipeline(args.base, ControlNetModel.from_pretrained(output_dir))
        for label, seed in (("held-out (notebook 06)", HELD_OUT_SEED), ("second set", SELECTION_SEED)):
            row[label] = score(pipeline, seed, args.n, profile.guidance_scale)
        results[name] = row
        print(name, json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
