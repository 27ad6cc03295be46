"""Circle IoU of notebook 03's ControlNet recipe, at a constant lr, by steps, placement and radius.

Trains the tiny profile's recipe (``cnhelpers.course.recipes.course_training_args``: batch 16) with a constant lr of
``--learning_rate`` (1e-3: the course's recipe until it took a cosine schedule, see ``controlnet_recipes.py``) for
``--steps`` steps with a checkpoint every ``--every``, then scores each checkpoint's ControlNet (UniPC, 20 steps,
the profile's guidance) on ``-n`` held-out outlines of each placement, split as ``cnhelpers.course.metrics.iou_breakdown``
does. The lr is constant, so checkpoint N is the ControlNet an N-step run would make: the curve says how many
steps a recipe needs; a decaying schedule ends each run at a better point than the curve's.

    OMP_NUM_THREADS=1 python benchmarks/controlnet_steps.py --base cnhelpers/assets/tiny-sd --out build/steps.json

:func:`train_checkpoints` and :func:`checkpoint_pipelines` are the machinery of the other curve benchmarks
(``condition_types.py``, ``knob_sweep.py``, ``lora_vs_full.py``): a run with checkpoints, trained once into a build
folder, and each checkpoint's ControlNet loaded in turn into one pipeline.
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


def train_checkpoints(base, output_dir: Path, steps: int, every: int, **overrides) -> dict:
    """Train the tiny profile's recipe with ``overrides`` for ``steps`` steps, a checkpoint every ``every``, into
    ``output_dir``; skipped when its final ControlNet is there already (a cached run: its figures are read from
    ``output_dir/bench_run.json``). Returns ``{"steps", "wall_seconds", "cpu_seconds", "cached"}``."""
    record = output_dir / "bench_run.json"
    if (output_dir / "diffusion_pytorch_model.safetensors").exists() and record.is_file():
        return json.loads(record.read_text()) | {"cached": True}
    wall, cpu = time.perf_counter(), time.process_time()
    train(course_training_args(get_profile("tiny"), base, output_dir, max_train_steps=steps,
                               checkpointing_steps=every, **overrides))
    result = {"steps": steps, "wall_seconds": round(time.perf_counter() - wall, 1),
              "cpu_seconds": round(time.process_time() - cpu, 1)}
    record.write_text(json.dumps(result))
    return result | {"cached": False}


def checkpoint_pipelines(base, output_dir: Path, checkpoint_steps, pipeline=None, load=None):
    """``(step, pipeline)`` for each of ``checkpoint_steps``, the pipeline holding that checkpoint's ControlNet.

    One pipeline is built (or ``pipeline`` reused) and each checkpoint's weights loaded into it; ``load(folder)``
    reads a checkpoint's ControlNet (default: ``ControlNetModel.from_pretrained``)."""
    load = load or ControlNetModel.from_pretrained
    for step in checkpoint_steps:
        controlnet = load(output_dir / f"checkpoint-{step}" / "controlnet")
        if pipeline is None:
            pipeline = load_controlnet_pipeline(base, controlnet)
        else:
            pipeline.controlnet.load_state_dict(controlnet.state_dict())
        yield step, pipeline


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
    run = train_checkpoints(args.base, output_dir, args.steps, args.every, lr_scheduler="constant",
                            learning_rate=args.learning_rate)
    results = {"train_seconds": run["wall_seconds"], "steps": {}}
    print(f"trained {args.steps} steps in {results['train_seconds']:.0f} s", flush=True)
    sets = {placement: (held_out_examples(args.n, placement=placement), held_out_circles(args.n, placement=placement))
            for placement in ("anywhere", "course")}
    for step, pipeline in checkpoint_pipelines(args.base, output_dir, range(args.every, args.steps + 1, args.every)):
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
