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

Nothing here generates images: :mod:`cnhelpers.course.evaluation` runs a pipeline and scores with these.
"""

from __future__ import annotations

import re

import numpy as np

from .fill import PALETTE, RADIUS_RANGE, is_cut_by_border


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
    raise ValueError(f"Unknown colour {name!r}: use a name of cnhelpers.course.fill.PALETTE ({', '.join(PALETTE)}) "
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


def outline_touches_border(conditioning_image) -> bool:
    """True when the outline (white on black) reaches the image's edge: the border may cut the shape it draws."""
    outline = _pixels(conditioning_image).mean(axis=2) > 127
    return bool(outline[0].any() or outline[-1].any() or outline[:, 0].any() or outline[:, -1].any())


def fit_circle(points: np.ndarray) -> tuple[float, float, float]:
    """Least-squares circle ``(cx, cy, r)`` through ``points`` (an (N, 2) array of x, y), an arc of it suffices.

    The algebraic fit: ``x² + y² + D x + E y + F = 0`` solved for D, E, F (Kåsa's method).
    """
    x, y = points[:, 0].astype(float), points[:, 1].astype(float)
    if len(points) < 3:
        raise ValueError(f"A circle needs at least 3 outline pixels to be fitted, got {len(points)}")
    design = np.column_stack([x, y, np.ones_like(x)])
    (d, e, f), *_ = np.linalg.lstsq(design, -(x * x + y * y), rcond=None)
    cx, cy = -d / 2, -e / 2
    return float(cx), float(cy), float(np.sqrt(max(cx * cx + cy * cy - f, 0.0)))


def disc_from_outline(conditioning_image) -> np.ndarray:
    """The filled disc of a conditioning outline (white on black), as a boolean mask (outline included).

    An outline inside the frame: everything the image border can reach without crossing the outline is
    outside; the rest is the disc. An outline that reaches the border (a circle the border cuts, whose
    inside the border pixels reach too): the circle fitted to its pixels (:func:`fit_circle`), filled to the
    outline's outer edge, so a cut circle scores against the part of its disc that the frame shows.
    """
    import cv2

    outline = _pixels(conditioning_image).mean(axis=2) > 127
    if not outline.any():
        raise ValueError("The conditioning image has no outline (no pixel brighter than 127)")
    height, width = outline.shape
    if outline_touches_border(conditioning_image):
        ys, xs = np.nonzero(outline)
        cx, cy, radius = fit_circle(np.column_stack([xs, ys]) + 0.5)  # pixel centres
        # The fit runs through the middle of the outline's stroke; fill out to its outer edge.
        stroke = outline_stroke_width(outline, cx, cy, radius)
        y, x = np.mgrid[0:height, 0:width] + 0.5
        return ((x - cx) ** 2 + (y - cy) ** 2 <= (radius + stroke / 2) ** 2) | outline
    reachable = (~outline).astype(np.uint8)  # 1 = may be flooded
    flood_mask = np.zeros((height + 2, width + 2), np.uint8)
    border = [(x, y) for x in range(width) for y in (0, height - 1)] + \
             [(x, y) for y in range(height) for x in (0, width - 1)]
    for x, y in border:  # flood the outside from every border pixel it touches
        if reachable[y, x] == 1:
            cv2.floodFill(reachable, flood_mask, (x, y), 2)
    return reachable != 2


def outline_stroke_width(outline: np.ndarray, cx: float, cy: float, radius: float) -> float:
    """The stroke width of a circle's outline: its pixel count over the length of the arc the frame shows."""
    height, width = outline.shape
    angles = np.linspace(0, 2 * np.pi, 3600, endpoint=False)
    x, y = cx + radius * np.cos(angles), cy + radius * np.sin(angles)
    shown = ((x >= 0) & (x < width) & (y >= 0) & (y < height)).mean()
    length = 2 * np.pi * radius * shown
    return float(outline.sum() / length) if length > 0 else 1.0


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

    The background is the median colour of a ``border``-pixel frame (a circle the border cuts covers less
    than half of it); the circle is the median of the pixels farther than :data:`CIRCLE_THRESHOLD` from it. The
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


#: Radius bins of :func:`iou_breakdown`: :data:`cnhelpers.course.fill.RADIUS_RANGE` in four equal parts.
RADIUS_BINS = tuple(zip(np.linspace(*RADIUS_RANGE, 5)[:-1].round(2).tolist(),
                        np.linspace(*RADIUS_RANGE, 5)[1:].round(2).tolist()))


def breakdown_groups(circles) -> dict[str, list[int]]:
    """Which circles (by position) fall in each group: all, inside the frame, cut by the border, each radius bin.

    A circle whose radius is exactly a bin's upper edge falls in that bin only for the last bin.
    """
    circles = list(circles)
    groups = {"all": list(range(len(circles))),
              "inside the frame": [i for i, c in enumerate(circles) if not is_cut_by_border(c)],
              "cut by the border": [i for i, c in enumerate(circles) if is_cut_by_border(c)]}
    for number, (low, high) in enumerate(RADIUS_BINS):
        last = number == len(RADIUS_BINS) - 1
        groups[f"radius {low:.2f}-{high:.2f}"] = [
            i for i, c in enumerate(circles) if low <= c.radius < high or (last and c.radius == high)]
    return groups


def iou_breakdown(ious, circles) -> list[dict]:
    """Mean IoU per group of :func:`breakdown_groups`: rows ``{"group", "n", "iou"}`` (``iou`` None for an
    empty group), ``ious[i]`` being the score of ``circles[i]``."""
    ious, circles = list(ious), list(circles)
    if len(ious) != len(circles):
        raise ValueError(f"{len(ious)} IoUs but {len(circles)} circles: give one score per circle")
    return [{"group": group, "n": len(members),
             "iou": float(np.mean([ious[i] for i in members])) if members else None}
            for group, members in breakdown_groups(circles).items()]
