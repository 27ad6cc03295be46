"""Control fidelity measured: generate on held-out outlines with and without the ControlNet, and score each
checkpoint while training (notebook 03's convergence curve). The scoring itself is :mod:`cnhelpers.course.metrics`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..inference import generate, load_controlnet_pipeline
from ..loading import dtype_kwargs
from .held_out import HELD_OUT_SEED, held_out_circles, held_out_examples
from .metrics import iou_breakdown, score_fill_image


#: The two runs of every comparison: the ControlNet at full scale, and the base alone (scale 0).
RUNS = (("with ControlNet", 1.0), ("without ControlNet", 0.0))


def default_resolution(pipeline) -> int:
    """The pixel size a pipeline draws by default: its denoiser's ``sample_size`` latents times the VAE's factor
    (a UNet's, SD3's transformer's). Flux's transformer has none: give ``resolution`` for it."""
    denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
    size = denoiser.config.get("sample_size") if denoiser is not None else None
    if not size:
        raise ValueError(f"{type(pipeline).__name__}'s denoiser has no sample_size: pass resolution= (the pixel "
                         "size the base was trained at, 64 for the course's tiny bases)")
    return size * pipeline.vae_scale_factor


def _check_single(pipeline) -> None:
    if type(pipeline.controlnet).__name__.startswith("MultiControlNet"):
        raise ValueError("evaluate_control scores one ControlNet: build the pipeline with a single ControlNet")


def held_out_scores(pipeline, examples, seed: int, *, num_inference_steps: int = 20, guidance_scale: float = 7.5,
                    batch_size: int = 8, runs=RUNS, **pipeline_kwargs) -> dict[str, list[dict]]:
    """Scores (:func:`cnhelpers.course.metrics.score_fill_image`) of each example, per run of ``runs`` (label, scale).

    Both runs of :data:`RUNS` use the same prompts and the same per-image seeds (``seed + i``), so the only
    difference is the ControlNet: "without" is ``controlnet_conditioning_scale=0``, which multiplies its
    residuals by zero. ``pipeline_kwargs`` go to every pipeline call (SD3's and Flux's ``max_sequence_length``).
    """
    _check_single(pipeline)
    scores = {}
    for label, scale in runs:
        images = generate(pipeline, examples, seed=seed, controlnet_conditioning_scale=scale,
                          num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                          batch_size=batch_size, **pipeline_kwargs)
        scores[label] = [score_fill_image(image, example["conditioning_image"], example["text"])
                         for image, example in zip(images, examples)]
    return scores


def evaluate_control(pipeline, n: int = 16, seed: int = HELD_OUT_SEED, *, resolution: int | None = None,
                     num_inference_steps: int = 20, guidance_scale: float = 7.5, batch_size: int = 8,
                     placement: str = "course"):
    """Mean scores of ``n`` held-out outlines, with the pipeline's ControlNet and without it.

    The outlines are those of the fill data with ``seed`` (use one the training data does not use; the
    course trains on seed 0), placed as ``placement`` says (:data:`cnhelpers.course.fill.PLACEMENTS`). Both runs use
    the same prompts and per-image seeds (:func:`held_out_scores`). Returns a pandas DataFrame, one row per run.
    """
    import pandas as pd

    _check_single(pipeline)
    resolution = resolution or default_resolution(pipeline)
    examples = held_out_examples(n, seed=seed, resolution=resolution, placement=placement)
    scores = held_out_scores(pipeline, examples, seed, num_inference_steps=num_inference_steps,
                             guidance_scale=guidance_scale, batch_size=batch_size)
    rows = {label: {key: float(np.mean([s[key] for s in run])) for key in run[0]} for label, run in scores.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


def evaluate_breakdown(pipeline, n: int = 64, seed: int = HELD_OUT_SEED, *, placement: str = "anywhere",
                       resolution: int | None = None, num_inference_steps: int = 20, guidance_scale: float = 7.5,
                       batch_size: int = 8):
    """Mean circle IoU of ``n`` held-out outlines with and without the ControlNet, split by where they lie.

    The outlines are drawn ``placement`` (``"anywhere"`` in the frame by default, as a user's would be;
    ``"course"`` as the training data). Rows: all, inside the frame, cut by the border, and each radius bin
    (:func:`cnhelpers.course.metrics.breakdown_groups`); columns ``n``, ``with ControlNet``, ``without ControlNet``.
    Returns a pandas DataFrame indexed by group.
    """
    import pandas as pd

    _check_single(pipeline)
    resolution = resolution or default_resolution(pipeline)
    examples = held_out_examples(n, seed=seed, resolution=resolution, placement=placement)
    circles = held_out_circles(n, seed=seed, placement=placement)
    scores = held_out_scores(pipeline, examples, seed, num_inference_steps=num_inference_steps,
                             guidance_scale=guidance_scale, batch_size=batch_size)
    return pd.DataFrame(breakdown_rows(scores, circles)).set_index("group")


def iou_by_group(pipeline, examples, circles, seed: int, **kwargs) -> dict[str, float]:
    """Mean circle IoU of ``examples`` with the ControlNet only (no base-alone run), by group of
    :func:`cnhelpers.course.metrics.iou_breakdown`: for comparing ControlNets with each other (``benchmarks/``).
    ``seed`` and ``kwargs`` as in :func:`held_out_scores`."""
    scores = held_out_scores(pipeline, examples, seed, runs=RUNS[:1], **kwargs)
    return {row["group"]: row[RUNS[0][0]] for row in breakdown_rows(scores, circles)}


def breakdown_rows(scores: dict[str, list[dict]], circles) -> list[dict]:
    """Rows ``{"group", "n", "with ControlNet", "without ControlNet"}``: the mean IoU of each run of ``scores``
    (:func:`held_out_scores`) per group of :func:`cnhelpers.course.metrics.iou_breakdown` (None for an empty group)."""
    rows: dict[str, dict] = {}
    for label, run in scores.items():
        for row in iou_breakdown([s["iou"] for s in run], circles):
            rows.setdefault(row["group"], {"group": row["group"], "n": row["n"]})[label] = row["iou"]
    return list(rows.values())


class CheckpointIoU:
    """A training callback: when a step saved ``checkpoint-N``, score its ControlNet on held-out outlines.

    ``train(args, callback=CheckpointIoU(base, args.output_dir))`` fills ``steps`` and ``ious`` (the mean
    circle IoU of ``n`` held-out outlines, UniPC with ``num_inference_steps``) and ``seconds`` (when each score was
    known, counted from this object's creation: make it just before ``train``). The pipeline is built once;
    each checkpoint's weights are loaded into it. Set ``on_score`` to be told of each new score. ``device`` and
    ``dtype`` are where and in what precision it generates: the training device and precision (fp16 on a GPU),
    so that scoring an SD 1.5 checkpoint does not take a CPU minutes per image. ``resolution`` defaults to the
    UNet's sample size (give it for a transformer base). Any family's base works: the pipeline and the ControlNet's
    class are the base's family's (:func:`cnhelpers.inference.load_controlnet_pipeline`).
    """

    def __init__(self, base, output_dir, n: int = 8, num_inference_steps: int = 10, seed: int = HELD_OUT_SEED,
                 guidance_scale: float = 7.5, on_score=None, device=None, dtype=None, resolution: int | None = None,
                 pipeline_kwargs: dict | None = None, condition: str = "outline"):
        self.base, self.output_dir, self.n = base, output_dir, n
        #: Further keyword arguments of the pipeline call (SD3's and Flux's ``max_sequence_length``, as trained).
        self.pipeline_kwargs = dict(pipeline_kwargs or {})
        self.device, self.dtype, self.resolution = device, dtype, resolution
        self.num_inference_steps, self.seed, self.guidance_scale = num_inference_steps, seed, guidance_scale
        self.on_score, self.condition = on_score, condition
        self.steps: list[int] = []
        self.ious: list[float] = []
        self.seconds: list[float] = []
        self._start = time.perf_counter()
        self._pipeline = None
        self._examples = None

    def score(self, controlnet_folder) -> float:
        """Mean circle IoU of the ControlNet in ``controlnet_folder`` on the held-out outlines."""
        if self._pipeline is None:  # the base's family's pipeline, with its ControlNet class
            self._pipeline = load_controlnet_pipeline(self.base, controlnet_folder, dtype=self.dtype,
                                                      device=self.device)
            resolution = self.resolution or default_resolution(self._pipeline)
            self._examples = held_out_examples(self.n, seed=self.seed, resolution=resolution,
                                               condition=self.condition)
        else:
            controlnet = type(self._pipeline.controlnet).from_pretrained(controlnet_folder, **dtype_kwargs(self.dtype))
            self._pipeline.controlnet.load_state_dict(controlnet.state_dict())
        images = generate(self._pipeline, self._examples, seed=self.seed, guidance_scale=self.guidance_scale,
                          num_inference_steps=self.num_inference_steps, **self.pipeline_kwargs)
        return float(np.mean([score_fill_image(image, example["conditioning_image"], example["text"])["iou"]
                              for image, example in zip(images, self._examples)]))

    def __call__(self, logs: dict) -> None:
        folder = Path(self.output_dir) / f"checkpoint-{logs['step']}" / "controlnet"
        if folder.is_dir() and logs["step"] not in self.steps:
            self.steps.append(logs["step"])
            self.ious.append(self.score(folder))
            self.seconds.append(time.perf_counter() - self._start)
            if self.on_score is not None:
                self.on_score(self.steps[-1], self.ious[-1])
