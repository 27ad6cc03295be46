"""Control on the tiny SDXL, SD3 and Flux bases, measured: circle IoU with the ControlNet and with the base alone.

For each family, a ControlNet is trained on the pretrained tiny base (``cnhelpers/assets/tiny-<family>``, or
``--base FAMILY=PATH``) with the recipe notebooks 07 and 08 run (:func:`cnhelpers.course.recipes.family_run_flags`),
each checkpoint scored on 8 held-out outlines as it is saved (the seconds into the run printed beside it). The
final ControlNet is then scored on ``-n`` held-out outlines (the seed no training data uses), with the ControlNet at
full scale and without it (scale 0, the base alone), with the same prompts and per-image seeds.

    python benchmarks/family_control.py --family sdxl --family sd3 --family flux

``--variant FAMILY={JSON}`` replaces flags of one family's run (e.g. ``'sd3={"max_train_steps": 600}'``).
``--condition mask`` trains and scores on another fill condition type than the outline (the same circles).
One family at a time, on torch's default threads (a notebook kernel's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from cnhelpers.config import training_args
from cnhelpers.course.evaluation import CheckpointIoU, held_out_scores
from cnhelpers.course.fill import FILL_CONDITIONS, ensure_fill_dataset
from cnhelpers.course.held_out import HELD_OUT_SEED, held_out_examples
from cnhelpers.course.profiles import get_profile
from cnhelpers.course.recipes import FAMILY_BASES, family_run_flags, family_sampling
from cnhelpers.inference import load_controlnet_pipeline
from cnhelpers.paths import build_dir
from cnhelpers.training import train


def measure(family: str, base: Path, overrides: dict, n: int, condition: str = "outline", tag: str = "") -> dict:
    """Train one family's ControlNet as the notebooks do, score its checkpoints, then the final one with/without.
    The ControlNet is saved to ``build/family-control/<family>`` (``<family>-<tag>`` with a ``tag``)."""
    profile = get_profile("tiny")
    output_dir = build_dir() / "family-control" / (f"{family}-{tag}" if tag else family)
    shutil.rmtree(output_dir, ignore_errors=True)
    overrides = dict(overrides)
    steps = overrides.pop("max_train_steps", profile.family_train_steps)  # the checkpoints a tenth of it apart
    flags = family_run_flags(family, base, output_dir, profile, steps) | overrides
    if condition != "outline":
        flags["train_data_dir"] = str(ensure_fill_dataset(profile.num_generated_examples, profile.resolution,
                                                          condition=condition))
    sampling = family_sampling(family, profile)
    torch.manual_seed(0)
    start, cpu_start = time.perf_counter(), time.process_time()
    scorer = CheckpointIoU(base, output_dir, n=8, resolution=profile.resolution, condition=condition, **sampling)
    result = train(training_args(**flags), callback=scorer)
    train_wall, train_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    pipeline = load_controlnet_pipeline(base, output_dir)
    examples = held_out_examples(n, seed=HELD_OUT_SEED, resolution=profile.resolution, condition=condition)
    kwargs = dict(sampling.pop("pipeline_kwargs", {}))
    scores = held_out_scores(pipeline, examples, HELD_OUT_SEED, num_inference_steps=20, **sampling, **kwargs)
    ious = {label: float(np.mean([s["iou"] for s in rows])) for label, rows in scores.items()}
    return {"steps": result.global_step, "flags": {k: v for k, v in flags.items() if k not in (
        "pretrained_model_name_or_path", "output_dir", "train_data_dir")}, "train_wall_s": train_wall,
        "train_cpu_s": train_cpu, "checkpoints": scorer.steps, "checkpoint_ious": scorer.ious,
        "checkpoint_seconds": scorer.seconds, "iou_with": ious["with ControlNet"],
        "iou_without": ious["without ControlNet"], "n": n, "condition": condition}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", action="append", choices=tuple(FAMILY_BASES), required=True)
    parser.add_argument("--base", action="append", default=[], metavar="FAMILY=PATH")
    parser.add_argument("--variant", action="append", default=[], metavar="FAMILY={JSON}")
    parser.add_argument("-n", type=int, default=32, help="held-out outlines of the final score")
    parser.add_argument("--condition", choices=FILL_CONDITIONS, default="outline",
                        help="the fill condition type to train and score on")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--tag", default="", help="save to build/family-control/FAMILY-TAG (two runs side by side)")
    args = parser.parse_args(argv)
    bases = {family: Path(path) for family, path in (text.split("=", 1) for text in args.base)}
    variants = {family: json.loads(text) for family, text in (text.split("=", 1) for text in args.variant)}
    results = {}
    for family in args.family:
        base = bases.get(family, FAMILY_BASES[family])
        if not (base / "model_index.json").is_file():
            raise SystemExit(f"error: no tiny {family} base at {base}: pass --base {family}=PATH, or pretrain it "
                             f"(python -m cnhelpers.course.pretrain_base --family {family})")
        row = results[family] = measure(family, base, variants.get(family, {}), args.n, args.condition,
                                          args.tag)
        curve = ", ".join(f"{s}: {iou:.3f} at {t:.0f} s" for s, iou, t in zip(
            row["checkpoints"], row["checkpoint_ious"], row["checkpoint_seconds"]))
        print(f"{family} ({base}) {json.dumps(row['flags'])}\n  checkpoints (8 outlines): {curve}", flush=True)
    print(f"\n| family | steps | training wall s (CPU s) | circle IoU with the ControlNet | without (base alone) |")
    print("| --- | --- | --- | --- | --- |")
    for family, row in results.items():
        print(f"| {family} | {row['steps']} | {row['train_wall_s']:.0f} ({row['train_cpu_s']:.0f}) | "
              f"{row['iou_with']:.3f} | {row['iou_without']:.3f} |")
    print(f"\n({args.n} held-out outlines of seed {HELD_OUT_SEED}, 20 sampling steps; the training time includes "
          f"loading, the latent cache and scoring the checkpoints)")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
