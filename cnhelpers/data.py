"""Fill data: a fill50k-style data set made offline, and a loader for the real ``fusing/fill50k``.

Each example has three columns, as in fill50k:

- ``image``: a filled circle of one named colour on a background of another (the target);
- ``conditioning_image``: the circle's outline, white on black (the control signal);
- ``text``: ``"{circle colour} circle with {background colour} background"``.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .hub import HubUnavailableError, download_file, hub_offline, looks_like_hub_id
from .paths import build_dir, staged_folder
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

#: Column names of fill50k and of every data set the course writes.
COLUMNS = ("image", "conditioning_image", "text")
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


def fill_example(seed: int, index: int, resolution: int, placement: str = "course") -> dict:
    """One example as a dict with the fill50k columns (PIL images and the caption); ``placement`` as in
    :func:`placed_circle`."""
    circle = placed_circle(seed, index, placement)
    image, conditioning = draw_circle(circle, resolution)
    return {"image": image, "conditioning_image": conditioning, "text": circle.text}


def write_fill_imagefolder(path: str | Path, num_examples: int, resolution: int, seed: int = 0) -> Path:
    """Write a generated fill data set as an imagefolder that ``datasets.load_dataset(path)`` reads.

    Layout: ``images/NNNNN.png``, ``conditioning_images/NNNNN.png`` and ``metadata.jsonl`` with the keys
    ``file_name``, ``conditioning_image_file_name`` and ``text``.
    """
    check_resolution(resolution)
    with staged_folder(path) as tmp, open(tmp / "metadata.jsonl", "w") as metadata:
        (tmp / "images").mkdir()
        (tmp / "conditioning_images").mkdir()
        for index in range(num_examples):
            example = fill_example(seed, index, resolution)
            name = f"{index:05d}.png"
            example["image"].save(tmp / "images" / name)
            example["conditioning_image"].save(tmp / "conditioning_images" / name)
            row = {
                "file_name": f"images/{name}",
                "conditioning_image_file_name": f"conditioning_images/{name}",
                "text": example["text"],
            }
            metadata.write(json.dumps(row) + "\n")
        (tmp / GENERATOR_FILE).write_text(json.dumps(generator_signature()))
    return Path(path)


def write_fill50k_raw(path: str | Path, num_examples: int, resolution: int, seed: int = 0) -> Path:
    """Write generated data in the raw layout of the hub's ``fusing/fill50k`` repository.

    ``train.jsonl`` rows ``{"text", "image", "conditioning_image"}``, the two image fields being paths
    inside ``images.zip`` and ``conditioning_images.zip``. Used to test :func:`load_fill50k` offline.
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


FILL50K_FILES = ("train.jsonl", "images.zip", "conditioning_images.zip")


def _extract_once(archive: Path, cache_dir: Path) -> Path:
    """Extract ``archive`` into a cache folder keyed by its identity; reuse it on later calls."""
    stat = archive.stat()
    key = hashlib.sha1(f"{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir / f"{archive.stem}-{key}"
    if not target.is_dir():
        with staged_folder(target) as tmp, zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
    return target


def _member_path(root: Path, relative: str, row: int, column: str) -> str:
    candidate = root / relative
    if not candidate.is_file():  # some copies zip the files without their folder
        candidate = root / Path(relative).name
    if not candidate.is_file():
        raise FileNotFoundError(
            f"train.jsonl row {row}: {column} {relative!r} is not in the extracted archive {root}"
        )
    return str(candidate)


def load_fill50k(source: str | Path = "fusing/fill50k", *, max_samples: int | None = None,
                 cache_dir: str | Path | None = None, revision: str | None = None):
    """Load fill50k as a ``datasets.Dataset`` with columns image, conditioning_image and text.

    ``fusing/fill50k`` on the hub is a loading-script data set, and datasets >= 4 no longer runs
    scripts, so ``load_dataset("fusing/fill50k")`` fails. This reads the repository's raw files
    instead (``train.jsonl``, ``images.zip``, ``conditioning_images.zip``), either downloaded from the
    hub (``source`` a hub id) or from a local folder with the same layout (``source`` a path).
    """
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature


    local = Path(source).expanduser()
    if local.is_dir():
        missing = [name for name in FILL50K_FILES if not (local / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{local} is not a fill50k raw folder: missing {', '.join(missing)} "
                f"(expected {', '.join(FILL50K_FILES)})"
            )
        files = {name: local / name for name in FILL50K_FILES}
    else:
        files = {name: download_file(str(source), name, repo_type="dataset", revision=revision)
                 for name in FILL50K_FILES}

    cache = Path(cache_dir) if cache_dir is not None else build_dir() / "fill50k-extracted"
    image_root = _extract_once(files["images.zip"], cache)
    conditioning_root = _extract_once(files["conditioning_images.zip"], cache)

    columns: dict[str, list[str]] = {"image": [], "conditioning_image": [], "text": []}
    with open(files["train.jsonl"]) as rows:
        for number, line in enumerate(rows):
            if max_samples is not None and number >= max_samples:
                break
            row = json.loads(line)
            missing = [key for key in COLUMNS if key not in row]
            if missing:
                raise KeyError(f"train.jsonl row {number} lacks {missing}; it has {sorted(row)}")
            columns["image"].append(_member_path(image_root, row["image"], number, "image"))
            columns["conditioning_image"].append(
                _member_path(conditioning_root, row["conditioning_image"], number, "conditioning_image"))
            columns["text"].append(row["text"])
    features = Features({"image": ImageFeature(), "conditioning_image": ImageFeature(), "text": Value("string")})
    return Dataset.from_dict(columns, features=features)


@contextmanager
def local_load():
    """Load a local folder without datasets' progress bars ("Downloading data", "Generating train split"):
    nothing is downloaded, and in a notebook the bars are noise beside the data set they describe."""
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    enabled = is_progress_bar_enabled()
    disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            enable_progress_bar()


def load_imagefolder(path: str | Path):
    """Load an imagefolder written by :func:`write_fill_imagefolder` (or your own) as a Dataset."""
    from datasets import load_dataset

    with local_load():
        return load_dataset(str(path), split="train")


def load_raw_dataset(args):
    """The raw rows (a ``datasets.Dataset``) named by ``--dataset_name`` or ``--train_data_dir``.

    ``fusing/fill50k`` (and local folders in its raw layout) go through
    :func:`cnhelpers.data.load_fill50k`, since datasets >= 4 cannot run its loading script.
    """
    from datasets import load_dataset, load_from_disk

    if args.train_data_dir is not None:
        check_metadata_has_rows(args.train_data_dir)  # else datasets fails deep inside (IndexError, StopIteration)
        with local_load():
            dataset = load_dataset(args.train_data_dir, cache_dir=args.cache_dir, split="train")
        check_not_empty(dataset, args.train_data_dir)
        return dataset
    name = args.dataset_name
    local = Path(name).expanduser()
    if local.is_dir():
        if all((local / f).is_file() for f in FILL50K_FILES):
            return load_fill50k(local)
        if (local / "state.json").is_file() or (local / "dataset_dict.json").is_file():
            loaded = load_from_disk(str(local))
            return loaded["train"] if hasattr(loaded, "keys") else loaded
        with local_load():
            return load_dataset(str(local), args.dataset_config_name, cache_dir=args.cache_dir, split="train")
    if name.rstrip("/").lower() == "fusing/fill50k":
        return load_fill50k(name)
    if looks_like_hub_id(name) and hub_offline():
        raise HubUnavailableError(
            f"--dataset_name {name!r} is a hub id, but HF_HUB_OFFLINE is set. Use a local folder "
            "(--train_data_dir or --dataset_name PATH), or go online.")
    try:
        return load_dataset(name, args.dataset_config_name, cache_dir=args.cache_dir, split="train")
    except (ConnectionError, OSError) as error:
        raise HubUnavailableError(f"Cannot load --dataset_name {name!r} from the hub ({error}). Use a local "
                                  "folder (--train_data_dir or --dataset_name PATH), or go online.") from error


def check_metadata_has_rows(folder) -> None:
    """Refuse an imagefolder whose metadata.jsonl (or .csv) holds no rows, before datasets reads it."""
    for metadata in sorted(Path(folder).glob("metadata.*")):
        if metadata.suffix not in (".jsonl", ".csv"):
            continue
        lines = [line for line in metadata.read_text(errors="replace").splitlines() if line.strip()]
        if len(lines) <= (metadata.suffix == ".csv"):  # a csv's first line is its header
            check_not_empty([], folder)


def check_not_empty(dataset, source) -> None:
    """Refuse a data set without rows, naming where it came from and what a row needs."""
    if len(dataset) == 0:
        metadata = [p.name for p in Path(str(source)).glob("metadata.*")] if Path(str(source)).is_dir() else []
        where = f" ({metadata[0]} has no rows)" if metadata else ""
        raise ValueError(f"The data set {source} is empty{where}: add examples (in metadata.jsonl, one JSON line "
                         "each: file_name, conditioning_image_file_name, text), or point --train_data_dir / "
                         "--dataset_name at a data set with rows.")


def check_captions(captions, caption_column: str = "text") -> None:
    """Refuse captions that are not text (numbers, None, empty lists), naming the first bad row and the fix.

    A caption is a string (``""`` for none) or a non-empty list of strings (one is drawn per step).
    """
    for row, caption in enumerate(captions):
        if isinstance(caption, str):
            continue
        if isinstance(caption, (list, tuple, np.ndarray)) and len(caption) > 0 \
                and all(isinstance(c, str) for c in caption):
            continue
        what = "None" if caption is None else f"{caption!r} ({type(caption).__name__})"
        raise ValueError(f"Row {row}: the caption ({caption_column!r} column) is {what}, not text: give every "
                         'example a string caption ("" for none) or a list of strings, or pick another '
                         "--caption_column.")


def check_same_aspect(image, conditioning, row) -> None:
    """Refuse an (image, conditioning image) pair whose aspect ratios differ (by more than 1 %).

    Both are resized to ``--resolution`` on the short side and center-cropped, so pictures of different sizes
    but the same shape still line up; different shapes would crop different parts of the scene.
    """
    (width, height), (c_width, c_height) = image.size, conditioning.size
    if abs(width * c_height - c_width * height) > 0.01 * max(width * c_height, c_width * height):
        raise ValueError(f"Row {row}: the image is {width}x{height} but the conditioning image is {c_width}x{c_height}:"
                         " their aspect ratios differ, so after the resize and center crop to --resolution the "
                         "control would not line up with the target. Crop or pad one to the other's aspect ratio "
                         "(the sizes may differ; both are resized), or drop that row.")


def drop_unreadable_rows(dataset, columns=("image", "conditioning_image")):
    """``(dataset without the bad rows, one message per row left out)``: a row is bad when an image of
    ``columns`` cannot be decoded or its image and conditioning image differ in aspect ratio.

    Every image is decoded once (``--skip_bad_images``: it costs a pass over the data before training).
    """
    from datasets import Image as ImageFeature

    undecoded = dataset
    for column in columns:
        if isinstance((dataset.features or {}).get(column), ImageFeature):
            undecoded = undecoded.cast_column(column, ImageFeature(decode=False))
    keep, problems = [], []
    for row, example in enumerate(undecoded.select_columns(list(columns))):
        try:
            pictures = [_to_rgb(example[column], row, column, fix="") for column in columns]
            if len(pictures) == 2:
                check_same_aspect(*pictures, row)
        except ValueError as error:
            problems.append(str(error).strip())
            continue
        keep.append(row)
    return (dataset.select(keep) if problems else dataset), problems


def load_train_dataset(profile: Profile, max_samples: int | None = None):
    """The profile's raw training data as a ``datasets.Dataset`` (image, conditioning_image, text)."""
    if profile.dataset_name is None:
        dataset = load_imagefolder(ensure_fill_dataset(profile.num_generated_examples, profile.resolution))
        return dataset.select(range(min(max_samples, len(dataset)))) if max_samples else dataset
    return load_fill50k(profile.dataset_name, max_samples=max_samples)


def fill_dataset_path(num_examples: int, resolution: int, seed: int = 0) -> Path:
    """Where :func:`ensure_fill_dataset` keeps a generated data set: ``build/fill-{res}px-{n}-seed{seed}``."""
    return build_dir() / f"fill-{resolution}px-{num_examples}-seed{seed}"


def generator_signature() -> dict:
    """What decides the generated circles: a data set written under another signature is out of date."""
    return {"radius_range": list(RADIUS_RANGE), "border_cut_share": BORDER_CUT_SHARE,
            "inside_margin": INSIDE_MARGIN, "min_overhang": MIN_OVERHANG}


#: The file in a generated data set's folder that records :func:`generator_signature`.
GENERATOR_FILE = "generator.json"


def ensure_fill_dataset(num_examples: int, resolution: int, seed: int = 0) -> Path:
    """Generate the tiny profile's data set under the build folder once; return its path.

    A folder written by another version of the generator (its ``generator.json`` differs, or is missing) is
    written again, so a build folder kept from an older course never trains on out-of-date circles.
    """
    path = fill_dataset_path(num_examples, resolution, seed)
    recorded = path / GENERATOR_FILE
    current = recorded.is_file() and json.loads(recorded.read_text()) == generator_signature()
    if not (path / "metadata.jsonl").is_file() or not current:
        write_fill_imagefolder(path, num_examples, resolution, seed)
    return path


# --------------------------------------------------------------------------------------------------
# From rows to training batches (notebook 01)
# --------------------------------------------------------------------------------------------------

#: The VAE of SD (and of the tiny base) downsamples by this factor; image sides must be multiples of it.
VAE_SCALE_FACTOR = 8


def check_resolution(resolution: int, vae_scale_factor: int = VAE_SCALE_FACTOR) -> None:
    """Reject a training resolution the VAE cannot take, saying why and what would work."""
    if not isinstance(resolution, int) or resolution <= 0 or resolution % vae_scale_factor:
        lower = max(vae_scale_factor, (int(resolution) // vae_scale_factor) * vae_scale_factor) \
            if isinstance(resolution, (int, float)) and resolution > 0 else vae_scale_factor
        raise ValueError(
            f"resolution={resolution!r} is not a positive multiple of {vae_scale_factor}: the VAE shrinks images "
            f"{vae_scale_factor}x, and the ControlNet's conditioning embedding must produce latents of the same "
            f"size. Use {lower} or {lower + vae_scale_factor}."
        )


def interpolation_mode(name: str = "bilinear"):
    """torchvision's InterpolationMode called ``name`` (``--image_interpolation_mode``: bilinear, lanczos...)."""
    from torchvision.transforms import InterpolationMode

    choices = [mode.name.lower() for mode in InterpolationMode]
    if name.lower() not in choices:
        raise ValueError(f"Unknown image interpolation mode {name!r}: choose one of {', '.join(choices)}.")
    return InterpolationMode[name.upper()]


def image_transforms(resolution: int, interpolation: str = "bilinear"):
    """Target images: resize (bilinear unless told) the short side, center-crop, to a tensor in [-1, 1]
    (the VAE's range)."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(resolution, interpolation=interpolation_mode(interpolation)),
        transforms.CenterCrop(resolution),
        transforms.ToTensor(),
        transforms.Normalize([0.5], [0.5]),
    ])


def conditioning_image_transforms(resolution: int, interpolation: str = "bilinear"):
    """Conditioning images: the same geometry, but kept in [0, 1], the range the ControlNet is fed."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(resolution, interpolation=interpolation_mode(interpolation)),
        transforms.CenterCrop(resolution),
        transforms.ToTensor(),
    ])


def pick_captions(captions, proportion_empty_prompts: float = 0.0, is_train: bool = True, rng=None,
                  caption_column: str = "text") -> list[str]:
    """Choose one string per example, as upstream's train_controlnet.py does.

    A share ``proportion_empty_prompts`` becomes ``""`` (so the ControlNet also learns to work without a
    prompt, which classifier-free guidance needs); a list of captions gives a random one when training
    and the first otherwise; empty strings stay empty.
    """
    rng = rng or random
    chosen = []
    for caption in captions:
        if rng.random() < proportion_empty_prompts:
            chosen.append("")
        elif isinstance(caption, str):
            chosen.append(caption)
        elif isinstance(caption, (list, tuple, np.ndarray)) and len(caption) > 0:
            chosen.append(str(rng.choice(list(caption)) if is_train else caption[0]))
        else:
            raise ValueError(
                f"Caption column {caption_column!r} should contain strings or non-empty lists of strings, "
                f"got {type(caption).__name__}: {caption!r}"
            )
    return chosen


def tokenize_prompts(tokenizer, prompts: list[str]):
    """Token ids padded to the tokenizer's max length (77 for CLIP) and truncated beyond it."""
    return tokenizer(prompts, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                     return_tensors="pt").input_ids


def _to_rgb(image, row, column, fix: str = "Fix or drop that row (e.g. dataset.filter) and try again."):
    """Decode (if needed) and convert an image to RGB; a broken file names its row, column and file."""
    source = ""
    try:
        if isinstance(image, dict):  # an undecoded datasets Image: {"bytes", "path"}
            source = f" ({image['path']})" if image.get("path") else ""
            image = Image.open(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"])
        # RGBA, L (grey), P (palette), CMYK...: the models take 3 channels, so every mode becomes RGB.
        return image.convert("RGB")
    except Exception as error:
        reason = re.sub(r" at 0x[0-9a-fA-F]+", "", str(error))  # drop memory addresses from PIL's message
        raise ValueError(
            f"Row {row}: cannot read the {column!r} image{source} ({type(error).__name__}: {reason}). {fix}"
        ) from error


#: What to do about an unreadable image met while training (the CLI's flag, or the notebooks' filter).
UNREADABLE_FIX = ("Fix or drop that row (e.g. dataset.filter), or pass --skip_bad_images to leave out the rows whose "
                  "images cannot be read.")


def dataset_columns(dataset) -> list[str]:
    """Column names of a Dataset or IterableDataset (a stream of unknown features is peeked at once)."""
    if dataset.column_names is not None:
        return list(dataset.column_names)
    return list(next(iter(dataset)).keys())


def make_train_dataset(dataset, tokenizer, *, resolution: int, image_column: str = "image",
                       conditioning_image_column: str = "conditioning_image", caption_column: str = "text",
                       proportion_empty_prompts: float = 0.0, max_train_samples: int | None = None,
                       seed: int | None = None, shuffle_buffer_size: int = 1000, interpolation: str = "bilinear",
                       tokenizer_2=None):
    """Turn raw rows into training examples: ``pixel_values``, ``conditioning_pixel_values``, ``input_ids``.

    The knobs are upstream train_controlnet.py's, but columns are always picked by name (upstream falls
    back to column positions, and an imagefolder orders them image, conditioning_image, text, so the
    captions would become conditioning images). Transforms run lazily, when a row is read.

    ``dataset`` may be a ``datasets.Dataset`` or a streamed ``datasets.IterableDataset``
    (``load_dataset(..., streaming=True)``). ``max_train_samples`` keeps a seeded random subset: for a
    stream, the first ``max_train_samples`` of a shuffle through a buffer of ``shuffle_buffer_size`` rows.
    ``interpolation`` is the resize filter (upstream's SDXL script: ``--image_interpolation_mode``, lanczos).
    With ``tokenizer_2`` (SDXL's second tokenizer), examples also get ``input_ids_2`` for the same captions.

    An image and its conditioning image may differ in size (both are resized to ``resolution``) but not in
    aspect ratio (:func:`check_same_aspect`: the center crops would not line up); an unreadable image names its
    row and file. Both errors come when the row is read.
    """
    from datasets import Image as ImageFeature
    from datasets import IterableDataset

    check_resolution(resolution)
    if not 0 <= proportion_empty_prompts <= 1:
        raise ValueError(f"proportion_empty_prompts must be in [0, 1], got {proportion_empty_prompts}")
    if max_train_samples is not None and (not isinstance(max_train_samples, int) or max_train_samples < 1):
        raise ValueError(f"max_train_samples must be a positive integer or None, got {max_train_samples!r}")
    columns = dataset_columns(dataset)
    for knob, column in (("image_column", image_column), ("conditioning_image_column", conditioning_image_column),
                         ("caption_column", caption_column)):
        if column not in columns:
            raise ValueError(f"{knob}={column!r} is not a column of the data set; its columns are: "
                             f"{', '.join(columns)}. Pass {knob}=<one of them>.")
    streaming = isinstance(dataset, IterableDataset)
    if not streaming:
        # Number the rows before shuffling, so an error names the row of the data set you passed in.
        dataset = dataset.add_column("row", list(range(len(dataset))))
    if max_train_samples is not None:
        if streaming:
            dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size).take(max_train_samples)
        else:
            dataset = dataset.shuffle(seed=seed).select(range(min(max_train_samples, len(dataset))))
    # Decode the images ourselves, so a broken file can name its row instead of failing deep in datasets.
    features = dataset.features or {}
    for column in (image_column, conditioning_image_column):
        if isinstance(features.get(column), ImageFeature):
            dataset = dataset.cast_column(column, ImageFeature(decode=False))
    to_image = image_transforms(resolution, interpolation)
    to_conditioning = conditioning_image_transforms(resolution, interpolation)
    rng = random.Random(seed)

    def preprocess(batch, rows=None):
        rows = batch["row"] if rows is None else rows
        out = {"pixel_values": [], "conditioning_pixel_values": []}
        for image, conditioning, row in zip(batch[image_column], batch[conditioning_image_column], rows):
            image, conditioning = (_to_rgb(image, row, image_column, UNREADABLE_FIX),
                                   _to_rgb(conditioning, row, conditioning_image_column, UNREADABLE_FIX))
            check_same_aspect(image, conditioning, row)
            out["pixel_values"].append(to_image(image))
            out["conditioning_pixel_values"].append(to_conditioning(conditioning))
        captions = pick_captions(batch[caption_column], proportion_empty_prompts, True, rng, caption_column)
        out["input_ids"] = tokenize_prompts(tokenizer, captions)
        if tokenizer_2 is not None:
            out["input_ids_2"] = tokenize_prompts(tokenizer_2, captions)
        return out

    if streaming:
        # A stream has no random access: transform lazily with map, numbering rows as they arrive.
        return dataset.map(preprocess, batched=True, batch_size=16, with_indices=True, remove_columns=columns)
    return dataset.with_transform(preprocess)


def collate_fn(examples: list[dict]) -> dict:
    """Stack examples into a batch: float image tensors (contiguous) and token ids (SDXL: both tokenizers')."""
    import torch

    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]).contiguous().float(),
        "conditioning_pixel_values": torch.stack([e["conditioning_pixel_values"] for e in examples]).contiguous().float(),
        "input_ids": torch.stack([e["input_ids"] for e in examples]),
    } | ({"input_ids_2": torch.stack([e["input_ids_2"] for e in examples])} if "input_ids_2" in examples[0] else {})


# --------------------------------------------------------------------------------------------------
# Your own data set: images, canny edges as the conditioning image, saved two ways (notebook 01)
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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_own_images(folder: str | Path) -> tuple[list[Image.Image], list[str]]:
    """Your pictures from ``folder`` and captions from their file names (``red_house.jpg`` -> "red house").

    Images are converted to RGB. A folder without pictures is an error that says which suffixes count.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of pictures")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder} holds no pictures: put {', '.join(IMAGE_SUFFIXES)} files there")
    images = [_to_rgb({"path": str(p), "bytes": None}, row, "image") for row, p in enumerate(files)]
    captions = [p.stem.replace("_", " ").replace("-", " ").strip() for p in files]
    return images, captions


def canny_conditioning(image, low_threshold: int = 100, high_threshold: int = 200) -> Image.Image:
    """Canny edges of ``image`` (OpenCV) as a white-on-black RGB picture: a ControlNet conditioning image.

    A pixel whose gradient is above ``high_threshold`` starts an edge; an edge continues through pixels
    above ``low_threshold``. Lower thresholds keep more (and noisier) edges.
    """
    import cv2

    if not 0 <= low_threshold <= high_threshold:
        raise ValueError(f"canny thresholds must satisfy 0 <= low <= high, got low={low_threshold}, "
                         f"high={high_threshold}: lower low_threshold or raise high_threshold")
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    edges = cv2.Canny(np.ascontiguousarray(pixels, dtype=np.uint8), low_threshold, high_threshold)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def build_controlnet_dataset(images, captions, conditioning_fn=canny_conditioning):
    """A ``datasets.Dataset`` with the fill50k columns from your images: conditioning images made by
    ``conditioning_fn`` (canny edges by default), all stored with ``Image()`` features."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    images, captions = list(images), list(captions)
    if len(images) != len(captions):
        raise ValueError(f"got {len(images)} images but {len(captions)} captions: give one caption per image")
    bad = [i for i, c in enumerate(captions) if not isinstance(c, str)]
    if bad:
        raise ValueError(f"captions must be strings; row {bad[0]} is {type(captions[bad[0]]).__name__}")
    rgb = [_to_rgb(image, row, "image") for row, image in enumerate(images)]
    features = Features({"image": ImageFeature(), "conditioning_image": ImageFeature(), "text": Value("string")})
    return Dataset.from_dict(
        {"image": rgb, "conditioning_image": [conditioning_fn(image) for image in rgb], "text": captions},
        features=features)


def write_imagefolder(dataset, path: str | Path, *, image_column: str = "image",
                      conditioning_image_column: str = "conditioning_image", caption_column: str = "text") -> Path:
    """Write a data set as an imagefolder (PNG files + ``metadata.jsonl``) that ``load_dataset(path)`` reads.

    Same layout as :func:`write_fill_imagefolder`: ``images/``, ``conditioning_images/`` and metadata rows
    ``{"file_name", "conditioning_image_file_name", "text"}``.
    """
    columns = dataset_columns(dataset)
    for column in (image_column, conditioning_image_column, caption_column):
        if column not in columns:
            raise ValueError(f"{column!r} is not a column of the data set; its columns are: {', '.join(columns)}")
    with staged_folder(path) as tmp, open(tmp / "metadata.jsonl", "w") as metadata:
        (tmp / "images").mkdir()
        (tmp / "conditioning_images").mkdir()
        for index, example in enumerate(dataset):
            name = f"{index:05d}.png"
            _to_rgb(example[image_column], index, image_column).save(tmp / "images" / name)
            _to_rgb(example[conditioning_image_column], index, conditioning_image_column).save(
                tmp / "conditioning_images" / name)
            metadata.write(json.dumps({"file_name": f"images/{name}",
                                       "conditioning_image_file_name": f"conditioning_images/{name}",
                                       "text": example[caption_column]}) + "\n")
    return Path(path)
