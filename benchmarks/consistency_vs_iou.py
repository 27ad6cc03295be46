"""Does the condition-consistency score (cnhelpers.consistency, ControlNet++'s controllability) agree with the
course's circle IoU on the fill world?

    OMP_NUM_THREADS=1 python benchmarks/consistency_vs_iou.py [-n 16] [--controlnet PATH] [--steps 300] [--condition canny]

On held-out fill outlines (a seed the training data does not use), the tiny base (cnhelpers/assets/tiny-sd) with a
ControlNet generates each picture with the ControlNet (scale 1) and without it (scale 0), same prompts and seeds.
Each picture gets two scores: the circle IoU (cnhelpers.course.metrics.score_fill_image: the circle's pixels
against the outline's disc) and its consistency (canny edges of the picture against the outline, edge F1). Prints
both per image, their means per run, and their Pearson and Spearman correlations over all pictures.

The ControlNet: build/controlnet-tiny (notebook 03's) if present, else one trained here with the course's recipe
for ``--steps`` steps (default 300; 2.5 minutes with the latent cache on one thread of a shared 2-core machine) into
build/bench-consistency-controlnet. 2026-12-05, that machine, 300 steps, 16 outlines (3 min 12 s in all): mean IoU
0.368 with / 0.172 without, consistency 0.141 / 0.067; Pearson 0.704 and Spearman 0.559 over the 32 pictures, Pearson
0.728 over the 16 with the ControlNet. Canny's fixed thresholds (100, 200) find no edge where the two colours are
close in every channel (image 2: IoU 0.58, consistency 0), which holds the scores low.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cnhelpers.consistency import control_consistency
from cnhelpers.course.controlnet import default_controlnet_path, ensure_controlnet
from cnhelpers.course.held_out import held_out_examples
from cnhelpers.course.metrics import score_fill_image
from cnhelpers.course.tiny_bases import ensure_tiny_base
from cnhelpers.inference import load_controlnet_pipeline
from cnhelpers.loading import is_controlnet_folder
from cnhelpers.paths import build_dir, shown_path


def ranks(values) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    result = np.empty(len(values))
    result[order] = np.arange(len(values))
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=16, help="held-out outlines (default 16)")
    parser.add_argument("--controlnet", default=None, metavar="PATH",
                        help="the ControlNet to score (default: build/controlnet-tiny if present, else one trained "
                             "--steps steps); cnhelpers/assets/tiny-controlnet is the one the course ships")
    parser.add_argument("--steps", type=int, default=300, help="training steps when no ControlNet exists")
    parser.add_argument("--condition", default="canny", help="the condition re-extracted (default canny)")
    parser.add_argument("--num_inference_steps", type=int, default=20)
    parser.add_argument("--guidance_scale", type=float, default=3.0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    base = ensure_tiny_base()
    path = args.controlnet or default_controlnet_path()
    if args.controlnet and not is_controlnet_folder(path):
        parser.error(f"--controlnet {path} holds no ControlNet (config.json and weights): give a trained one's folder")
    if not is_controlnet_folder(path):
        path = ensure_controlnet(path=build_dir() / "bench-consistency-controlnet", max_train_steps=args.steps)
    trained = time.perf_counter()
    pipeline = load_controlnet_pipeline(base, path)
    examples = held_out_examples(args.n, resolution=64)
    result = control_consistency(pipeline, [e["text"] for e in examples], [e["conditioning_image"] for e in examples],
                                 args.condition, seed=0, num_inference_steps=args.num_inference_steps,
                                 guidance_scale=args.guidance_scale)
    print(f"ControlNet {shown_path(path)}; {args.n} held-out outlines; consistency: {args.condition} "
          f"(training/loading {trained - start:.0f} s, generating and scoring {time.perf_counter() - trained:.0f} s)")
    print(f"{'image':>5}  {'run':<8} {'circle IoU':>10} {'consistency':>11}")
    ious, scores = [], []
    for label in ("with", "without"):
        for i, (image, example) in enumerate(zip(result["images"][label], examples)):
            iou = score_fill_image(image, example["conditioning_image"], example["text"])["iou"]
            ious.append(iou)
            scores.append(result[f"{label}_per_image"][i])
            print(f"{i:>5}  {label:<8} {iou:>10.3f} {scores[-1]:>11.3f}")
    half = args.n
    for label, part in (("with", slice(0, half)), ("without", slice(half, None))):
        print(f"mean {label:<8} IoU {np.mean(ious[part]):.3f}  consistency {np.mean(scores[part]):.3f}")
    pearson = float(np.corrcoef(ious, scores)[0, 1])
    spearman = float(np.corrcoef(ranks(ious), ranks(scores))[0, 1])
    within = float(np.corrcoef(ious[:half], scores[:half])[0, 1]) if np.std(scores[:half]) > 0 else float("nan")
    print(f"correlation over all {2 * half} pictures: Pearson {pearson:.3f}, Spearman {spearman:.3f}; "
          f"over the {half} with the ControlNet alone: Pearson {within:.3f}")


if __name__ == "__main__":
    main()
