"""Control fidelity of fill-style images, from pixels alone: does the picture follow the outline, in the
prompt's colours?

A fill prompt names two colours, ``"{circle} circle with {background} background"``, and the conditioning
image is the circle's outline. So a generated image can be scored without any learned model:

- **IoU**: classify each pixel as the circle colour or the background colour (whichever is nearer in RGB),
  and compare that circle mask with the disc filled from the outline: ``|A ∩ B| / |A ∪ B|``, 1.0 when they
  coincide, 0.0 when they do not touch.
- **colour errors**: how far the pixels inside the true disc are from the circle colour, and those outside
  it from the background colour; the mean per-pixel RGB distance as a fraction of the largest possible one
  (black to white), so 0.0 is exact and 1.0 the worst.

Nothing here generates images: :mod:`cnhelpers.evaluation` runs a pipeline and scores with these.
"""

from __future__ import annotations

import re

import numpy as np

from .data import PALETTE


#: Largest RGB distance (black to white), the unit of the colour errors.
MAX_RGB_DISTANCE = float(np.sqrt(3) * 255)


_FILL_PROMPT = re.compile(r"^\s*(?P<circle>.+?)\s+circle\s+with\s+(?P<background>.+?)\s+background\s*$", re.I)


def colour_rgb(name: str) -> tuple[int, int, int]:
    """RGB of a colour name: the course's palette first, then CSS names (fill50k's, e.g. "pale golden rod")."""
    from matplotlib.colors import CSS4_COLORS, to_rgb

    key = name.strip().lower()
    if key in PALETTE:
        return PALETTE[key]
    css = key.replace(" ", "")
    if css in CSS4_COLORS:
        return tuple(round(255 * c) for c in to_rgb(CSS4_COLORS[css]))
    raise ValueError(f"Unknown colour {name!r}: use a name of cnhelpers.data.PALETTE ({', '.join(PALETTE)}) "
                     "or a CSS colour name")


def prompt_colours(prompt: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The (circle, background) RGB colours a fill prompt such as ``"red circle with blue background"`` names."""
    match = _FILL_PROMPT.match(prompt)
    if match is None:
        raise ValueError(f"{prompt!r} is not a fill prompt: expected '<colour> circle with <colour> background'")
    return colour_rgb(match["circle"]), colour_rgb(match["background"])


def _pixels(image) -> np.ndarray:
    """An RGB image (PIL or array) as a float array of shape (height, width, 3) in 0..255."""
    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float64)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"Expected an RGB image of shape (height, width, 3), got shape {array.shape}")
    return array


def disc_from_outline(conditioning_image) -> np.ndarray:
    """The filled disc of a conditioning outline (white on black), as a boolean mask (outline included).

    Everything the image border can reach without crossing the outline is outside; the rest is the disc.
    """
    import cv2

    outline = _pixels(conditioning_image).mean(axis=2) > 127
    height, width = outline.shape
    reachable = (~outline).astype(np.uint8)  # 1 = may be flooded
    flood_mask = np.zeros((height + 2, width + 2), np.uint8)
    border = [(x, y) for x in range(width) for y in (0, height - 1)] + \
             [(x, y) for y in range(height) for x in (0, width - 1)]
    for x, y in border:  # flood the outside from every border pixel it touches
        if reachable[y, x] == 1:
            cv2.floodFill(reachable, flood_mask, (x, y), 2)
    if not outline.any():
        raise ValueError("The conditioning image has no outline (no pixel brighter than 127)")
    return reachable != 2


def circle_mask(image, circle_rgb, background_rgb) -> np.ndarray:
    """Pixels nearer (in RGB) to the circle colour than to the background colour, as a boolean mask."""
    pixels = _pixels(image)
    to_circle = np.linalg.norm(pixels - np.asarray(circle_rgb, float), axis=2)
    to_background = np.linalg.norm(pixels - np.asarray(background_rgb, float), axis=2)
    return to_circle < to_background


def mask_iou(predicted: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two boolean masks of the same shape; 1.0 when both are empty."""
    predicted, target = np.asarray(predicted, bool), np.asarray(target, bool)
    if predicted.shape != target.shape:
        raise ValueError(f"Masks differ in shape: {predicted.shape} and {target.shape} (resize one first)")
    union = np.logical_or(predicted, target).sum()
    return 1.0 if union == 0 else float(np.logical_and(predicted, target).sum() / union)


def colour_error(image, mask: np.ndarray, rgb) -> float:
    """Mean RGB distance of the pixels under ``mask`` to ``rgb``, as a fraction of black-to-white (0..1)."""
    pixels = _pixels(image)[np.asarray(mask, bool)]
    if len(pixels) == 0:
        raise ValueError("The mask selects no pixel")
    return float(np.linalg.norm(pixels - np.asarray(rgb, float), axis=1).mean() / MAX_RGB_DISTANCE)


def score_fill_image(image, conditioning_image, prompt: str) -> dict[str, float]:
    """IoU of the circle against the outline's disc, and the colour errors inside and outside the disc."""
    circle_rgb, background_rgb = prompt_colours(prompt)
    if _pixels(image).shape != _pixels(conditioning_image).shape:
        raise ValueError("The image and its conditioning image differ in size: generate at the outline's size")
    disc = disc_from_outline(conditioning_image)
    return {
        "iou": mask_iou(circle_mask(image, circle_rgb, background_rgb), disc),
        "circle_colour_error": colour_error(image, disc, circle_rgb),
        "background_colour_error": colour_error(image, ~disc, background_rgb),
    }


#: RGB distance from the background colour beyond which a pixel counts as part of the circle.
CIRCLE_THRESHOLD = 40.0


def nearest_palette_colour(rgb) -> str:
    """Name of the course palette's colour nearest (in RGB) to ``rgb``."""

    rgb = np.asarray(rgb, float)
    return min(PALETTE, key=lambda name: np.linalg.norm(rgb - np.asarray(PALETTE[name], float)))


def measured_fill_colours(image, border: int = 2):
    """The (circle, background) colours a generated fill image shows, measured without an outline.

    The background is the median colour of a ``border``-pixel frame (the fill circles never touch the
    edge); the circle is the median of the pixels farther than :data:`CIRCLE_THRESHOLD` from it. The
    circle colour is None when no pixel is (the image shows no circle).
    """
    pixels = _pixels(image)
    frame = np.concatenate([pixels[:border].reshape(-1, 3), pixels[-border:].reshape(-1, 3),
                            pixels[:, :border].reshape(-1, 3), pixels[:, -border:].reshape(-1, 3)])
    background = np.median(frame, axis=0)
    distance = np.linalg.norm(pixels - background, axis=2)
    inside = pixels[distance > CIRCLE_THRESHOLD]
    circle = np.median(inside, axis=0) if len(inside) >= 0.01 * distance.size else None
    return circle, background


def colour_accuracy(images, prompts) -> dict[str, float]:
    """Share of images whose circle and background colours are nearest to the prompt's palette colours."""
    circle_hits, background_hits = [], []
    for image, prompt in zip(images, prompts, strict=True):
        match = _FILL_PROMPT.match(prompt)
        if match is None:
            raise ValueError(f"{prompt!r} is not a fill prompt: expected '<colour> circle with <colour> background'")
        circle, background = measured_fill_colours(image)
        circle_hits.append(circle is not None and nearest_palette_colour(circle) == match["circle"].strip().lower())
        background_hits.append(nearest_palette_colour(background) == match["background"].strip().lower())
    return {"circle_accuracy": float(np.mean(circle_hits)), "background_accuracy": float(np.mean(background_hits))}
