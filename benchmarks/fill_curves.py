"""Score-against-steps curves on the fill world, shared by ``condition_types.py``, ``knob_sweep.py`` and
``lora_vs_full.py``: each variant is the tiny profile's recipe with some flags changed, trained once with a
checkpoint every few steps (``controlnet_steps.train_checkpoints``, a build folder per variant, reused when it holds
a finished run), and each checkpoint scored by the mean circle IoU of ``n`` held-out circles (UniPC, 20 steps, the
tiny profile's guidance, the images' seeds notebook 06's). A variant trained on another condition type is given that
type's picture of each held-out circle and scored against the circle's outline disc, as the outline ControlNet is.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnhelpers.course.fill import ensure_fill_dataset, fill_example
from cnhelpers.course.held_out import HELD_OUT_SEED
from cnhelpers.course.metrics import score_fill_image
from cnhelpers.course.profiles import get_profile
from cnhelpers.inference import generate
from cnhelpers.paths import build_dir

from controlnet_steps import checkpoint_pipelines, train_checkpoints

BASE = Path("cnhelpers/assets/tiny-sd")


@dataclass
class Variant:
    """A curve: its name, the recipe's flags it changes, its steps, checkpoint spacing and condition type."""

    name: str
    overrides: dict = field(default_factory=dict)
    steps: int = 400
    every: int = 100
    condition: str = "outline"

    @property
    def folder(self) -> Path:
        """The variant's build folder, named by what decides the run (so two benchmarks share equal runs)."""
        flags = "-".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(self.overrides.items()))
        return build_dir() / "fill-curves" / f"{self.condition}-{self.steps}-{self.every}-{flags}"


def held_out(n: int, condition: str) -> dict:
    """Prompts, conditioning pictures (of type ``condition``) and outlines of ``n`` held-out circles."""
    examples = [fill_example(HELD_OUT_SEED, i, 64, condition=condition) for i in range(n)]
    outlines = [fill_example(HELD_OUT_SEED, i, 64)["conditioning_image"] for i in range(n)]
    return {"prompts": [e["text"] for e in examples], "conditions": [e["conditioning_image"] for e in examples],
            "outlines": outlines}


def mean_iou(pipeline, held: dict, guidance_scale: float) -> float:
    """Mean circle IoU of the pipeline's pictures of the held-out circles, against their outlines' discs."""
    images = generate(pipeline, held["prompts"], held["conditions"], seed=HELD_OUT_SEED, num_inference_steps=20,
                      guidance_scale=guidance_scale)
    return float(np.mean([score_fill_image(image, outline, prompt)["iou"]
                          for image, outline, prompt in zip(images, held["outlines"], held["prompts"])]))


def run_curve(variant: Variant, n: int, load=None, cached_only: bool = False) -> dict | None:
    """Train (or reuse) ``variant`` and score each checkpoint; prints and returns its row: the run's figures,
    ``steps`` and ``iou`` (lists), and the CPU seconds of its scoring. The scores are kept in the variant's folder
    (``bench_scores-n{n}.json``) and read back by a later call. ``cached_only``: None (and a line saying so) for a
    variant not trained and scored yet, instead of the work."""
    scores = variant.folder / f"bench_scores-n{n}.json"
    if scores.is_file():
        row = json.loads(scores.read_text()) | {"name": variant.name}
        print(f"{variant.name:<24} IoU by step " + ", ".join(f"{s}: {v:.3f}" for s, v in zip(row["steps"], row["iou"]))
              + " (read from " + str(scores) + ")", flush=True)
        return row
    if cached_only:
        print(f"{variant.name:<24} not measured yet (no {scores})", flush=True)
        return None
    overrides = dict(variant.overrides)
    if variant.condition != "outline":
        overrides["train_data_dir"] = str(ensure_fill_dataset(2048, 64, condition=variant.condition))
    run = train_checkpoints(BASE, variant.folder, variant.steps, variant.every, **overrides)
    cpu = time.process_time()
    held = held_out(n, variant.condition)
    guidance = get_profile("tiny").guidance_scale
    steps, ious = [], []
    for step, pipeline in checkpoint_pipelines(BASE, variant.folder, range(variant.every, variant.steps + 1,
                                                                            variant.every), load=load):
        steps.append(step)
        ious.append(round(mean_iou(pipeline, held, guidance), 4))
    row = run | {"name": variant.name, "overrides": variant.overrides, "condition": variant.condition,
                 "steps": steps, "iou": ious, "score_cpu_seconds": round(time.process_time() - cpu, 1)}
    print(f"{variant.name:<24} IoU by step " + ", ".join(f"{s}: {v:.3f}" for s, v in zip(steps, ious))
          + f"  (train {run['cpu_seconds']:.0f} CPU s{' (cached)' if run['cached'] else ''},"
            f" {run['wall_seconds']:.0f} s wall; scoring {row['score_cpu_seconds']:.0f} CPU s)", flush=True)
    scores.write_text(json.dumps(row))
    return row


def markdown_table(rows: list[dict], x_label: str = "steps", x=None) -> str:
    """The rows' IoU as a markdown table, one column per checkpoint (``x(row)`` gives the column labels)."""
    columns = sorted({v for row in rows for v in (x(row) if x else row["steps"])})
    lines = [f"| variant | {' | '.join(f'{c:,} {x_label}' for c in columns)} | train CPU s |",
             "| --- |" + " --- |" * (len(columns) + 1)]
    for row in rows:
        values = dict(zip(x(row) if x else row["steps"], row["iou"]))
        cells = [f"{values[c]:.3f}" if c in values else "" for c in columns]
        lines.append(f"| {row['name']} | {' | '.join(cells)} | {row['cpu_seconds']:.0f} |")
    return "\n".join(lines)


def plot_curves(panels: list[tuple[str, list[dict], str, object]], path: Path, baseline: float | None = None) -> None:
    """One panel per ``(title, rows, x label, x function or None)``: IoU against the x of each row; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for axis, (title, rows, x_label, x) in zip(axes[0], panels):
        for row in rows:
            axis.plot(x(row) if x else row["steps"], row["iou"], marker="o", label=row["name"])
        if baseline is not None:
            axis.axhline(baseline, color="gray", linestyle=":", label="base alone (no ControlNet)")
        axis.set(title=title, xlabel=x_label, ylabel="held-out circle IoU", ylim=(0, 1))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def base_alone_iou(n: int) -> float:
    """Mean IoU of the base alone (a ControlNet at scale 0): the floor of every curve; kept in the build folder."""
    kept = build_dir() / "fill-curves" / f"base-alone-n{n}.json"
    if kept.is_file():
        return json.loads(kept.read_text())["iou"]
    iou = _base_alone_iou(n)
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps({"iou": iou}))
    return iou


def _base_alone_iou(n: int) -> float:
    from diffusers import ControlNetModel, UNet2DConditionModel

    from cnhelpers.inference import load_controlnet_pipeline

    unet = UNet2DConditionModel.from_pretrained(BASE, subfolder="unet")
    pipeline = load_controlnet_pipeline(BASE, ControlNetModel.from_unet(unet))
    held = held_out(n, "outline")
    images = generate(pipeline, held["prompts"], held["conditions"], seed=HELD_OUT_SEED, num_inference_steps=20,
                      guidance_scale=get_profile("tiny").guidance_scale, controlnet_conditioning_scale=0.0)
    return float(np.mean([score_fill_image(i, o, p)["iou"] for i, o, p in zip(images, held["outlines"],
                                                                              held["prompts"])]))


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=1))
