"""Control measured on any data, as ControlNet++ measures controllability: extract the condition again from each
generated picture, with the same condition function that made the training data, and compare it with the
condition that was given.

How the two are compared depends on the condition's kind (:data:`cnhelpers.own_data.CONDITION_KINDS`; your own
function says its kind by a ``consistency_kind`` attribute, else it is a map):

- ``edge`` (canny, softedge thresholded at half intensity, scribble): the F1 score of the edge pixels, a pixel
  counting as matched when the other picture has an edge within ``tolerance`` pixels (default: 1 px per 256 px of
  the short side, at least 1);
- ``mask``: the intersection over union of the white (>= half intensity) pixels;
- ``map`` (grayscale, blur, lowres): 1 - the mean absolute error of the grey levels, in [0, 1].

Every score lies in [0, 1], and higher means the picture follows its condition more closely. Two empty edge maps
(or masks) agree: 1. :func:`consistency_score` scores pictures you have; :func:`control_consistency` generates
with a pipeline's ControlNet and without it (conditioning scale 1 and 0), so the difference is the ControlNet's.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from PIL import Image

from .own_data import condition_function, condition_kind

KINDS = ("edge", "mask", "map")


def _binary(image: Image.Image, threshold: int = 128) -> np.ndarray:
    return np.asarray(image.convert("L")) >= threshold


def default_tolerance(size) -> int:
    """Edge matching's tolerance for a picture of ``size`` (width, height): 1 px per 256 px of the short side."""
    return max(1, round(min(size) / 256))


def edge_f1(predicted: Image.Image, target: Image.Image, tolerance: int | None = None) -> float:
    """F1 of the edge pixels of ``predicted`` against those of ``target`` (both white on black, same size): the
    harmonic mean of the share of predicted edges within ``tolerance`` px of a target edge (precision) and the share
    of target edges within ``tolerance`` px of a predicted one (recall)."""
    import cv2

    pred, true = _binary(predicted), _binary(target)
    if pred.shape != true.shape:
        raise ValueError(f"edge maps of different sizes: {pred.shape[::-1]} and {true.shape[::-1]}")
    if not pred.any() and not true.any():
        return 1.0
    if not pred.any() or not true.any():
        return 0.0
    tolerance = default_tolerance(predicted.size) if tolerance is None else tolerance

    def near(edges):  # distance of every pixel to the nearest edge pixel of ``edges``
        return cv2.distanceTransform((~edges).astype(np.uint8), cv2.DIST_L2, 3)

    precision = float((near(true)[pred] <= tolerance).mean())
    recall = float((near(pred)[true] <= tolerance).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def mask_iou(predicted: Image.Image, target: Image.Image) -> float:
    """Intersection over union of the white pixels of two masks (1 when both are empty)."""
    pred, true = _binary(predicted), _binary(target)
    union = (pred | true).sum()
    return 1.0 if union == 0 else float((pred & true).sum() / union)


def map_agreement(predicted: Image.Image, target: Image.Image) -> float:
    """1 - the mean absolute difference of the grey levels of two maps, in [0, 1] (1: identical)."""
    pred = np.asarray(predicted.convert("L"), dtype=np.float64)
    true = np.asarray(target.convert("L"), dtype=np.float64)
    return float(1 - np.abs(pred - true).mean() / 255)


def agreement(extracted: Image.Image, given: Image.Image, kind: str, tolerance: int | None = None) -> float:
    """How well the condition ``extracted`` from a picture agrees with the ``given`` one, by ``kind``."""
    if kind == "edge":
        return edge_f1(extracted, given, tolerance)
    if kind == "mask":
        return mask_iou(extracted, given)
    if kind == "map":
        return map_agreement(extracted, given)
    raise ValueError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")


def consistency_scores(generated_images, conditions, condition_fn="canny", kind: str | None = None,
                       tolerance: int | None = None) -> list[float]:
    """One score per picture: ``condition_fn`` (a name of :data:`cnhelpers.own_data.CONDITIONS`, ``module:function``
    or a function) applied to each generated picture, compared with its condition (``kind``: the condition's own by
    default). A picture of another size than its condition is resized to the condition's first."""
    generated_images, conditions = list(generated_images), list(conditions)
    if len(generated_images) != len(conditions):
        raise ValueError(f"{len(generated_images)} pictures but {len(conditions)} conditions: give one condition "
                         "per picture")
    kind = condition_kind(condition_fn) if kind is None else kind
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
    function = condition_function(condition_fn)
    scores = []
    for image, given in zip(generated_images, conditions):
        picture = image.convert("RGB")
        if picture.size != given.size:
            picture = picture.resize(given.size, Image.BICUBIC)
        scores.append(agreement(function(picture), given, kind, tolerance))
    return scores


def consistency_score(generated_images, conditions, condition_fn="canny", kind: str | None = None,
                      tolerance: int | None = None) -> float:
    """The mean of :func:`consistency_scores`: how closely the pictures follow their conditions, in [0, 1]."""
    return float(np.mean(consistency_scores(generated_images, conditions, condition_fn, kind, tolerance)))


def control_consistency(pipeline, prompts, conditions, condition_fn="canny", kind: str | None = None, *,
                        seed: int = 0, batch_size: int = 8, tolerance: int | None = None,
                        **pipeline_kwargs) -> dict:
    """Generate each (prompt, condition) with the pipeline's ControlNet (conditioning scale 1) and without it
    (scale 0), with the same per-image seeds (``seed + i``), and score both.

    Use held-out rows (ones the ControlNet did not train on). Returns ``{"with": score, "without": score,
    "with_per_image": [...], "without_per_image": [...], "images": {"with": [...], "without": [...]}}``; the gap
    between the two is what the ControlNet adds. Other keyword arguments go to the pipeline.
    """
    prompts, conditions = list(prompts), list(conditions)
    if len(prompts) != len(conditions):
        raise ValueError(f"{len(prompts)} prompts but {len(conditions)} conditions: give one condition per prompt")
    argument = "image" if "image" in inspect.signature(pipeline.__call__).parameters else "control_image"
    result = {"images": {}}
    for label, scale in (("with", 1.0), ("without", 0.0)):
        images = []
        for start in range(0, len(prompts), batch_size):
            batch = slice(start, start + batch_size)
            generators = [torch.Generator("cpu").manual_seed(seed + i)
                          for i in range(start, min(start + batch_size, len(prompts)))]
            images += pipeline(prompts[batch], **{argument: conditions[batch]}, generator=generators,
                               controlnet_conditioning_scale=scale, **pipeline_kwargs).images
        scores = consistency_scores(images, conditions, condition_fn, kind, tolerance)
        result[label], result[f"{label}_per_image"] = float(np.mean(scores)), scores
        result["images"][label] = images
    return result


def validation_consistency(condition_fn, rows) -> float:
    """The score of a validation's pictures against their conditioning images: ``rows`` as
    :func:`cnhelpers.outputs.log_validation` makes them (``{"condition", "images"}``)."""
    return consistency_score([image for row in rows for image in row["images"]],
                             [row["condition"] for row in rows for _ in row["images"]], condition_fn)
