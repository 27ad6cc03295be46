"""The course's generated data: fill50k-style circles made offline, seeded, at any resolution, and the house
scenes that stand in for your own photos.

Each fill example has the three columns of fill50k (:data:`cnhelpers.data.COLUMNS`):

- ``image``: a filled circle of one named colour on a background of another (the target);
- ``conditioning_image``: the circle's outline, white on black (the control signal);
- ``text``: ``"{circle colour} circle with {background colour} background"``.

Written as an imagefolder (or in fill50k's raw layout, to test :func:`cnhelpers.data.load_fill50k` offline); a
profile's data set is generated once under the build folder (:func:`ensure_fill_dataset`, :func:`load_train_dataset`).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..data import check_resolution, load_fill50k, load_imagefolder
from ..own_data import canny_conditioning
from ..paths import build_dir, staged_folder
from .profiles import Profile

#: Named colours of the generated data (name -> RGB). Distinct enough to tell apart at 64 px.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 60),
    "orange": (255, 140, 0),
    "yellow": (255, 215, 0),
    "lime": (50, 205, 50),
    "green": (0, 100, 0),
    "teal": (0, 128, 128),
    "cyan": (0, 206, 209),
    "blue": (30, 60, 220),
    "navy": (0, 0, 110),
    "purple": (128, 0, 128),
    "magenta": (255, 0, 255),
    "pink": (255, 160, 190),
    "brown": (139, 69, 19),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (15, 15, 15),
}
#: The caption template of the generated data.
CAPTION_TEMPLATE = "{circle} circle with {background} background"


def caption_words() -> list[str]:
    """Every word a generated caption can contain (what the tiny tokenizer must cover)."""
    template_words = CAPTION_TEMPLATE.replace("{circle}", "").replace("{background}", "").split()
    return sorted(set(template_words) | {w for name in PALETTE for w in name.split()})


@dataclass(frozen=True)
class Circle:
    """A circle in relative coordinates (fractions of the image side), so it draws at any resolution."""

    cx: float
    cy: float
    radius: float
    colour: str
    background: str

    @property
    def text(self) -> str:
        return CAPTION_TEMPLATE.format(circle=self.colour, background=self.background)


#: Radii of the generated circles (fractions of the image side): small dots to circles that nearly fill the frame.
RADIUS_RANGE = (0.08, 0.40)
#: Share of generated circles that the image border cuts, as a user's own outlines often are; the rest lie
#: wholly inside the frame, at least :data:`INSIDE_MARGIN` from its edge.
BORDER_CUT_SHARE = 0.3
#: Least gap between a wholly-inside circle and the frame's edge.
INSIDE_MARGIN = 0.02
#: Least overhang of a cut circle past the border, so the cut is plain at any resolution (1.3 px at 64).
MIN_OVERHANG = 0.02


def border_overhang(circle: Circle) -> float:
    """How far the circle reaches past the nearest image edge (fraction of the side); negative when it lies
    wholly inside, by that much."""
    return max(circle.radius - circle.cx, circle.radius - circle.cy,
               circle.cx + circle.radius - 1, circle.cy + circle.radius - 1)


def is_cut_by_border(circle: Circle) -> bool:
    """True when the image border cuts the circle: part of its disc lies outside the frame."""
    return border_overhang(circle) > 0


def sample_circle(seed: int, index: int) -> Circle:
    """The ``index``-th circle of the data set with this ``seed``; independent of the set's size.

    The radius is uniform in :data:`RADIUS_RANGE`. A seeded draw picks, with probability
    :data:`BORDER_CUT_SHARE`, a circle that the border cuts: its centre is uniform in the frame among the
    places where the disc overhangs an edge by at least :data:`MIN_OVERHANG` (so at least a quarter of it
    shows). Otherwise the centre is uniform among the places that keep the circle :data:`INSIDE_MARGIN`
    inside the frame.
    """
    rng = np.random.default_rng([seed, index])
    radius = float(rng.uniform(*RADIUS_RANGE))
    cut = bool(rng.uniform() < BORDER_CUT_SHARE)
    colour, background = rng.choice(list(PALETTE), size=2, replace=False)
    if cut:
        while True:  # rejection sampling: deterministic, since every draw comes from the seeded rng
            cx, cy = rng.uniform(0.0, 1.0, size=2)
            if border_overhang(Circle(float(cx), float(cy), radius, "", "")) >= MIN_OVERHANG:
                break
    else:
        cx, cy = rng.uniform(radius + INSIDE_MARGIN, 1 - radius - INSIDE_MARGIN, size=2)
    return Circle(float(cx), float(cy), radius, str(colour), str(background))


def anywhere_circle(seed: int, index: int) -> Circle:
    """The ``index``-th circle of an evaluation set drawn anywhere in the frame, as a user might draw one.

    The radius is uniform in :data:`RADIUS_RANGE` and the centre uniform over the whole frame, with no share
    imposed: the border cuts about 70 % of them (a small circle can show as a quarter disc in a corner).
    Unlike :func:`sample_circle`, it is not the training distribution, so it tests control where a user's
    outlines are, not only where the data was.
    """
    rng = np.random.default_rng([seed, index, 1])  # a stream of its own, apart from sample_circle's
    radius = float(rng.uniform(*RADIUS_RANGE))
    cx, cy = rng.uniform(0.0, 1.0, size=2)
    colour, background = rng.choice(list(PALETTE), size=2, replace=False)
    return Circle(float(cx), float(cy), radius, str(colour), str(background))


#: The circle samplers by placement: ``"course"`` the training data's (:func:`sample_circle`), ``"anywhere"``
#: anywhere in the frame (:func:`anywhere_circle`).
PLACEMENTS = {"course": sample_circle, "anywhere": anywhere_circle}


def placed_circle(seed: int, index: int, placement: str = "course") -> Circle:
    """The ``index``-th circle of ``seed`` under ``placement`` (a key of :data:`PLACEMENTS`)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"Unknown placement {placement!r}: choose one of {', '.join(PLACEMENTS)}")
    return PLACEMENTS[placement](seed, index)


def outline_width(resolution: int) -> int:
    """Outline thickness in pixels: about 3 px at 512, never thinner than 1 px."""
    return max(1, round(resolution / 170))


def draw_circle(circle: Circle, resolution: int) -> tuple[Image.Image, Image.Image]:
    """Render ``(image, conditioning_image)`` for one circle at ``resolution`` x ``resolution``."""
    box = [
        (circle.cx - circle.radius) * resolution,
        (circle.cy - circle.radius) * resolution,
        (circle.cx + circle.radius) * resolution,
        (circle.cy + circle.radius) * resolution,
    ]
    image = Image.new("RGB", (resolution, resolution), PALETTE[circle.background])
    ImageDraw.Draw(image).ellipse(box, fill=PALETTE[circle.colour])
    conditioning = Image.new("RGB", (resolution, resolution), (0, 0, 0))
    ImageDraw.Draw(conditioning).ellipse(box, outline=(255, 255, 255), width=outline_width(resolution))
    return image, conditioning


#: The fill world's condition types (:func:`fill_condition`): what a ControlNet can be told about the circle.
FILL_CONDITIONS = ("outline", "mask", "depth", "scribble", "keypoints", "canny")


def _white_on_black(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat((np.asarray(mask, np.float64) * 255).round().astype(np.uint8)[..., None], 3, 2))


def _distance_from_centre(circle: Circle, resolution: int) -> np.ndarray:
    """Each pixel centre's distance from the circle's centre, in units of its radius."""
    y, x = (np.mgrid[0:resolution, 0:resolution] + 0.5) / resolution
    return np.hypot(x - circle.cx, y - circle.cy) / circle.radius


def fill_condition(circle: Circle, resolution: int, condition: str = "outline", *, seed: int = 0,
                   index: int = 0) -> Image.Image:
    """The conditioning picture of ``circle`` for a condition type of :data:`FILL_CONDITIONS` (RGB, ``resolution``
    square): what each kind of ControlNet is told about the circle.

    - ``outline``: the thin white circle on black (fill50k's condition; :func:`draw_circle`).
    - ``mask``: the filled disc, white on black (a segmentation mask).
    - ``depth``: a depth-like map, the height of a dome over the disc, ``sqrt(1 - (d/r)^2)`` with ``d`` the
      distance from the centre (near is bright, as MiDaS-style depth maps draw it); black outside.
    - ``scribble``: a partial, jittered outline, as a hand would draw it: an arc over 55-85 % of the circle,
      its radius wobbling by up to about 6 %, a stroke twice the outline's; seeded by ``(seed, index)``.
    - ``keypoints``: two dots, the centre (red) and one point of the rim (green), as pose key points are drawn;
      the rim point's angle is seeded and chosen inside the frame where one is.
    - ``canny``: canny edges of the target picture (:func:`cnhelpers.own_data.canny_conditioning`), the
      condition a user extracts from their own photos.
    """
    if condition not in FILL_CONDITIONS:
        raise ValueError(f"Unknown fill condition {condition!r}: choose one of {', '.join(FILL_CONDITIONS)}")
    image, outline = draw_circle(circle, resolution)
    if condition == "outline":
        return outline
    if condition == "canny":
        return canny_conditioning(image)
    distance = _distance_from_centre(circle, resolution)
    if condition == "mask":
        return _white_on_black(distance <= 1)
    if condition == "depth":
        return _white_on_black(np.sqrt(np.clip(1 - distance ** 2, 0, 1)))
    rng = np.random.default_rng([seed, index, 2])  # a stream apart from the circles' own
    if condition == "scribble":
        start, extent = rng.uniform(0, 2 * np.pi), rng.uniform(0.55, 0.85) * 2 * np.pi
        angles = np.linspace(start, start + extent, 180)
        phases, amplitudes = rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.01, 0.02, 3)
        wobble = 1 + sum(a * np.sin(k * angles + p) for k, a, p in zip((2, 3, 5), amplitudes, phases))
        radius = circle.radius * wobble * resolution
        points = np.column_stack([circle.cx * resolution + radius * np.cos(angles),
                                  circle.cy * resolution + radius * np.sin(angles)])
        picture = Image.new("RGB", (resolution, resolution), (0, 0, 0))
        ImageDraw.Draw(picture).line([tuple(p) for p in points], fill=(255, 255, 255),
                                     width=2 * outline_width(resolution))
        return picture
    # keypoints
    angles = rng.uniform(0, 2 * np.pi, 16)
    rims = [(circle.cx + circle.radius * np.cos(a), circle.cy + circle.radius * np.sin(a)) for a in angles]
    rim = next((p for p in rims if 0 <= p[0] < 1 and 0 <= p[1] < 1), rims[0])
    dot = max(1.5, resolution / 32)
    picture = Image.new("RGB", (resolution, resolution), (0, 0, 0))
    draw = ImageDraw.Draw(picture)
    for (x, y), colour in (((circle.cx, circle.cy), (255, 0, 0)), (rim, (0, 255, 0))):
        draw.ellipse([x * resolution - dot, y * resolution - dot, x * resolution + dot, y * resolution + dot],
                     fill=colour)
    return picture


def fill_example(seed: int, index: int, resolution: int, placement: str = "course", condition: str = "outline") -> dict:
    """One example as a dict with the fill50k columns (PIL images and the caption); ``placement`` as in
    :func:`placed_circle`, ``condition`` (the conditioning image's type) as in :func:`fill_condition`."""
    circle = placed_circle(seed, index, placement)
    image, conditioning = draw_circle(circle, resolution)
    if condition != "outline":
        conditioning = fill_condition(circle, resolution, condition, seed=seed, index=index)
    return {"image": image, "conditioning_image": conditioning, "text": circle.text}


def write_fill_imagefolder(path: str | Path, num_examples: int, resolution: int, seed: int = 0,
                           condition: str = "outline") -> Path:
    """Write a generated fill data set as an imagefolder that ``datasets.load_dataset(path)`` reads.

    Layout: ``images/NNNNN.png``, ``conditioning_images/NNNNN.png`` and ``metadata.jsonl`` with the keys
    ``file_name``, ``conditioning_image_file_name`` and ``text``. ``condition``: the conditioning images' type
    (:func:`fill_condition`; the outline by default).
    """
    check_resolution(resolution)
    with staged_folder(path) as tmp, open(tmp / "metadata.jsonl", "w") as metadata:
        (tmp / "images").mkdir()
        (tmp / "conditioning_images").mkdir()
        for index in range(num_examples):
            example = fill_example(seed, index, resolution, condition=condition)
            name = f"{index:05d}.png"
            example["image"].save(tmp / "images" / name)
            example["conditioning_image"].save(tmp / "conditioning_images" / name)
            row = {
                "file_name": f"images/{name}",
                "conditioning_image_file_name": f"conditioning_images/{name}",
                "text": example["text"],
            }
            metadata.write(json.dumps(row) + "\n")
        (tmp / GENERATOR_FILE).write_text(json.dumps(generator_signature(condition)))
    return Path(path)


def write_fill50k_raw(path: str | Path, num_examples: int, resolution: int, seed: int = 0) -> Path:
    """Write generated data in the raw layout of the hub's ``fusing/fill50k`` repository.

    ``train.jsonl`` rows ``{"text", "image", "conditioning_image"}``, the two image fields being paths
    inside ``images.zip`` and ``conditioning_images.zip``. Used to test :func:`cnhelpers.data.load_fill50k` offline.
    """
    check_resolution(resolution)
    with (
        staged_folder(path) as tmp,
        zipfile.ZipFile(tmp / "images.zip", "w") as images,
        zipfile.ZipFile(tmp / "conditioning_images.zip", "w") as conditioning_images,
        open(tmp / "train.jsonl", "w") as rows,
    ):
        for index in range(num_examples):
            example = fill_example(seed, index, resolution)
            for archive, column, folder in (
                (images, "image", "images"),
                (conditioning_images, "conditioning_image", "conditioning_images"),
            ):
                with archive.open(f"{folder}/{index}.png", "w") as f:
                    example[column].save(f, format="PNG")
            row = {"text": example["text"], "image": f"images/{index}.png",
                   "conditioning_image": f"conditioning_images/{index}.png"}
            rows.write(json.dumps(row) + "\n")
    return Path(path)


def fill_dataset_path(num_examples: int, resolution: int, seed: int = 0, condition: str = "outline") -> Path:
    """Where :func:`ensure_fill_dataset` keeps a generated data set: ``build/fill-{res}px-{n}-seed{seed}``, with
    ``-{condition}`` after it for a condition other than the outline."""
    suffix = "" if condition == "outline" else f"-{condition}"
    return build_dir() / f"fill-{resolution}px-{num_examples}-seed{seed}{suffix}"


def generator_signature(condition: str = "outline") -> dict:
    """What decides the generated circles (and, for a condition other than the outline, its name): a data set
    written under another signature is out of date."""
    signature = {"radius_range": list(RADIUS_RANGE), "border_cut_share": BORDER_CUT_SHARE,
                 "inside_margin": INSIDE_MARGIN, "min_overhang": MIN_OVERHANG}
    return signature if condition == "outline" else signature | {"condition": condition}


#: The file in a generated data set's folder that records :func:`generator_signature`.
GENERATOR_FILE = "generator.json"


def ensure_fill_dataset(num_examples: int, resolution: int, seed: int = 0, condition: str = "outline") -> Path:
    """Generate the tiny profile's data set (its conditioning images of type ``condition``, :func:`fill_condition`)
    under the build folder once; return its path.

    A folder written by another version of the generator (its ``generator.json`` differs, or is missing) is
    written again, so a build folder kept from an older course never trains on out-of-date circles.
    """
    path = fill_dataset_path(num_examples, resolution, seed, condition)
    recorded = path / GENERATOR_FILE
    current = recorded.is_file() and json.loads(recorded.read_text()) == generator_signature(condition)
    if not (path / "metadata.jsonl").is_file() or not current:
        write_fill_imagefolder(path, num_examples, resolution, seed, condition)
    return path


def load_train_dataset(profile: Profile, max_samples: int | None = None):
    """The profile's raw training data as a ``datasets.Dataset`` (image, conditioning_image, text)."""
    if profile.dataset_name is None:
        dataset = load_imagefolder(ensure_fill_dataset(profile.num_generated_examples, profile.resolution))
        return dataset.select(range(min(max_samples, len(dataset)))) if max_samples else dataset
    return load_fill50k(profile.dataset_name, max_samples=max_samples)


# --------------------------------------------------------------------------------------------------
# Generated scenes: pictures that stand in for your own photos (notebook 01)
# --------------------------------------------------------------------------------------------------

#: Colours the generated scenes use for their parts (names from PALETTE).
SCENE_COLOURS = {
    "house": ("red", "orange", "yellow", "white", "pink", "teal"),
    "roof": ("brown", "navy", "gray", "purple", "black"),
    "sun": ("yellow", "orange", "white"),
    "ground": ("green", "lime", "brown"),
}


def draw_scene(seed: int, index: int, resolution: int = 128) -> tuple[Image.Image, str]:
    """A small generated "photo" and its caption: a house with a roof under a sun, on the ground.

    Stands in for your own pictures (nothing is downloaded). The sky is a gradient and every pixel gets
    a little seeded noise, like a real photo, so canny's thresholds have something to decide.
    """
    check_resolution(resolution)
    rng = np.random.default_rng([seed, index])
    pick = {part: str(rng.choice(names)) for part, names in SCENE_COLOURS.items()}
    side = resolution
    sky_top, sky_bottom = np.array([70, 120, 220]), np.array([190, 215, 245])
    rows = np.linspace(0, 1, side)[:, None, None]
    pixels = np.broadcast_to(sky_top + (sky_bottom - sky_top) * rows, (side, side, 3)).copy()
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    # A faint cloud: a little brighter than the sky, so only low canny thresholds keep its outline.
    cloud_x, cloud_y = side * rng.uniform(0.2, 0.8), side * rng.uniform(0.3, 0.42)
    cloud_w, cloud_h = side * rng.uniform(0.14, 0.2), side * rng.uniform(0.05, 0.07)
    cloud = tuple(int(v) for v in np.minimum(sky_top + (sky_bottom - sky_top) * cloud_y / side + 35, 255))
    draw.ellipse([cloud_x - cloud_w, cloud_y - cloud_h, cloud_x + cloud_w, cloud_y + cloud_h], fill=cloud)
    horizon = side * rng.uniform(0.62, 0.72)
    draw.rectangle([0, horizon, side, side], fill=PALETTE[pick["ground"]])
    sun_x, sun_r = side * rng.uniform(0.12, 0.88), side * rng.uniform(0.07, 0.11)
    sun_y = side * rng.uniform(0.12, 0.22)
    draw.ellipse([sun_x - sun_r, sun_y - sun_r, sun_x + sun_r, sun_y + sun_r], fill=PALETTE[pick["sun"]])
    width, height = side * rng.uniform(0.3, 0.42), side * rng.uniform(0.22, 0.3)
    left = side * rng.uniform(0.08, 0.92) - width / 2
    left = float(np.clip(left, 2, side - width - 2))
    base = horizon + side * 0.08
    draw.rectangle([left, base - height, left + width, base], fill=PALETTE[pick["house"]])
    draw.polygon([(left - width * 0.1, base - height), (left + width * 1.1, base - height),
                  (left + width / 2, base - height - side * rng.uniform(0.14, 0.2))], fill=PALETTE[pick["roof"]])
    door_w = width * 0.22
    draw.rectangle([left + width * 0.39, base - height * 0.55, left + width * 0.39 + door_w, base],
                   fill=PALETTE["brown"] if pick["house"] != "brown" else PALETTE["black"])
    noisy = np.asarray(image).astype(np.float32) + rng.normal(0, 6, (side, side, 3))
    article = "an" if pick["sun"][0] in "aeiou" else "a"
    caption = f"a {pick['house']} house with a {pick['roof']} roof under {article} {pick['sun']} sun"
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), caption


def generated_scenes(num_images: int, resolution: int = 128, seed: int = 0) -> tuple[list[Image.Image], list[str]]:
    """``num_images`` generated scenes and their captions (see :func:`draw_scene`)."""
    scenes = [draw_scene(seed, index, resolution) for index in range(num_images)]
    return [image for image, _ in scenes], [caption for _, caption in scenes]
