"""Your own data set: your pictures (or generated stand-ins), canny edges as their conditioning images, the
fill50k columns as a ``datasets.Dataset``, and an imagefolder written to disk (notebook 01).

From a folder of your own pictures (``python -m cnhelpers.make_dataset``, :func:`build_own_dataset`): pictures of
any size and mode, captions from the ecosystem's conventions (:func:`read_captions`), the built-in conditions
(:data:`CONDITIONS`: canny, softedge, scribble, grayscale, blur, lowres; none needs downloaded weights) or your own
``module:function``, square crops (:data:`CROP_MODES`), and the imagefolder the trainers read.
"""

from __future__ import annotations

import contextlib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .data import check_columns, check_resolution, dataset_columns, read_utf8_lines, to_rgb
from .images import image_grid
from .paths import staged_folder


#: The picture files :func:`read_own_images` reads (by suffix, any case).
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
    images = [to_rgb({"path": str(p), "bytes": None}, row, "image") for row, p in enumerate(files)]
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
    rgb = [to_rgb(image, row, "image") for row, image in enumerate(images)]
    features = Features({"image": ImageFeature(), "conditioning_image": ImageFeature(), "text": Value("string")})
    return Dataset.from_dict(
        {"image": rgb, "conditioning_image": [conditioning_fn(image) for image in rgb], "text": captions},
        features=features)


class PairWriter:
    """An imagefolder written one pair at a time, in the layout ``--train_data_dir`` (and upstream's script) reads:
    ``images/``, ``conditioning_images/`` and ``metadata.jsonl`` (``file_name``, ``conditioning_image_file_name``,
    ``text``). A context manager: the metadata file is closed on leaving it."""

    def __init__(self, folder: Path):
        self.folder, self.rows, self.captions = Path(folder), 0, []
        (self.folder / "images").mkdir()
        (self.folder / "conditioning_images").mkdir()
        self._metadata = open(self.folder / "metadata.jsonl", "w")

    def add(self, picture: Image.Image, conditioning: Image.Image, caption: str) -> None:
        file_name = f"{self.rows:05d}.png"
        picture.save(self.folder / "images" / file_name)
        conditioning.save(self.folder / "conditioning_images" / file_name)
        self._metadata.write(json.dumps({"file_name": f"images/{file_name}",
                                         "conditioning_image_file_name": f"conditioning_images/{file_name}",
                                         "text": caption}) + "\n")
        self.captions.append(caption)
        self.rows += 1

    def __enter__(self) -> PairWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._metadata.close()


def write_imagefolder(dataset, path: str | Path, *, image_column: str = "image",
                      conditioning_image_column: str = "conditioning_image", caption_column: str = "text") -> Path:
    """Write a data set as an imagefolder (PNG files + ``metadata.jsonl``) that ``load_dataset(path)`` reads.

    Same layout as the course's generated data (:func:`cnhelpers.course.fill.write_fill_imagefolder`): ``images/``,
    ``conditioning_images/`` and metadata rows ``{"file_name", "conditioning_image_file_name", "text"}``.
    """
    check_columns(dataset_columns(dataset), image_column=image_column,
                  conditioning_image_column=conditioning_image_column, caption_column=caption_column)
    with staged_folder(path) as tmp, PairWriter(tmp) as rows:
        for index, example in enumerate(dataset):
            rows.add(to_rgb(example[image_column], index, image_column),
                     to_rgb(example[conditioning_image_column], index, conditioning_image_column),
                     example[caption_column])
    return Path(path)


# --- A data set from a folder of your own pictures (``python -m cnhelpers.make_dataset``) -------------------------

#: How a non-square picture becomes the data set's picture: ``center`` (scaled so its short side is the resolution,
#: then its centre square kept), ``pad`` (scaled so its long side is the resolution, then padded to a square with
#: the background colour), ``none`` (scaled so its short side is the resolution, its shape kept; the trainer's
#: transforms crop it when it trains).
CROP_MODES = ("center", "pad", "none")

#: Where a transparent picture's see-through pixels end up: composited on this colour (also ``pad``'s colour).
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}


def picture_suffixes() -> tuple[str, ...]:
    """Every file suffix PIL can open (``.png``, ``.jpg``, ``.webp``, ``.tif``, ``.gif``...), lowercase."""
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN))


def find_pictures(folder: str | Path, recursive: bool = True, exclude: str | Path | None = None) -> list[Path]:
    """The files of ``folder`` whose suffix PIL reads (any case), sorted by their path inside it.

    ``recursive``: subfolders too. Hidden files and folders (``.name``) are left out, and so is ``exclude`` (the
    output folder, when it lies inside the input).
    """
    folder = Path(folder).expanduser()
    suffixes = set(picture_suffixes())
    excluded = Path(exclude).expanduser().resolve() if exclude is not None else None
    found = []
    for path in sorted(folder.rglob("*") if recursive else folder.iterdir()):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.suffix.lower() not in suffixes:
            continue
        if excluded is not None and (path.resolve() == excluded or excluded in path.resolve().parents):
            continue
        found.append(path)
    return found


def open_picture(path: str | Path, background: str = "white") -> Image.Image:
    """A picture file as RGB, whatever its mode: EXIF rotation applied; transparency (RGBA, LA, a palette's
    transparent colour) composited on ``background``; 16-bit and float greys scaled to 8 bits; L, P, CMYK,
    1-bit converted. Raises what PIL raises for a file it cannot read."""
    from PIL import ImageOps

    with Image.open(path) as opened:
        opened.load()
        image = ImageOps.exif_transpose(opened)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUNDS[background] + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def fit_picture(image: Image.Image, resolution: int, crop: str = "center", background: str = "white") -> Image.Image:
    """``image`` at ``resolution`` as :data:`CROP_MODES` says (Lanczos resampling)."""
    if crop not in CROP_MODES:
        raise ValueError(f"crop must be one of {', '.join(CROP_MODES)}, got {crop!r}")
    width, height = image.size
    if crop == "pad":
        scale = resolution / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        canvas = Image.new("RGB", (resolution, resolution), BACKGROUNDS[background])
        canvas.paste(image.resize(size, Image.LANCZOS), ((resolution - size[0]) // 2, (resolution - size[1]) // 2))
        return canvas
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    resized = image.resize(size, Image.LANCZOS)
    if crop == "none":
        return resized
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return resized.crop((left, top, left + resolution, top + resolution))


# The built-in conditions: PIL RGB picture -> PIL RGB picture of the same size, with no downloaded weights.

def _grey(image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float32)


def softedge_conditioning(image) -> Image.Image:
    """A soft edge map (white on black, in grey levels), like HED/PiDiNet's without their weights: the Sobel
    gradient magnitude of the slightly blurred picture, scaled so its strongest edges are white, then softened."""
    import cv2

    grey = cv2.GaussianBlur(_grey(image), (0, 0), 1.0)
    magnitude = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3))
    top = float(np.percentile(magnitude, 99.5))
    soft = np.sqrt(np.clip(magnitude / top, 0, 1)) if top > 1e-6 else np.zeros_like(magnitude)
    soft = cv2.GaussianBlur(soft, (0, 0), 0.8)
    soft[soft < 0.15] = 0  # the flat areas' faint texture is not an edge
    edges = (np.clip(soft, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def scribble_conditioning(image) -> Image.Image:
    """Thick, simplified edges (white on black), like a hand scribble: canny edges of the strongly blurred picture
    (only the main shapes survive), thickened to about 1/100 of the picture's short side (at least 3 px)."""
    import cv2

    short = min(image.size)
    grey = cv2.GaussianBlur(np.asarray(image.convert("L")), (0, 0), max(1.0, short / 128))
    edges = cv2.Canny(grey, 30, 90)
    width = max(3, round(short / 100)) | 1
    edges = cv2.dilate(edges, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (width, width)))
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def grayscale_conditioning(image) -> Image.Image:
    """The picture's luminance (ITU-R 601, PIL's ``convert("L")``) as RGB: a recolouring ControlNet's condition."""
    return image.convert("L").convert("RGB")


def blur_conditioning(image) -> Image.Image:
    """A Gaussian blur of radius 1/32 of the short side (at least 1 px): a tile/deblur ControlNet's condition."""
    from PIL import ImageFilter

    return image.convert("RGB").filter(ImageFilter.GaussianBlur(max(1.0, min(image.size) / 32)))


#: lowres's downscaling factor.
LOWRES_FACTOR = 8


def lowres_conditioning(image) -> Image.Image:
    """The picture scaled down 8x (box filter) and back up (bicubic): a tile/upscale ControlNet's condition."""
    rgb = image.convert("RGB")
    small = rgb.resize((max(1, rgb.width // LOWRES_FACTOR), max(1, rgb.height // LOWRES_FACTOR)), Image.BOX)
    return small.resize(rgb.size, Image.BICUBIC)


#: The built-in conditions by name, and the kind of picture each makes (how :mod:`cnhelpers.consistency` scores it).
CONDITIONS = {"canny": canny_conditioning, "softedge": softedge_conditioning, "scribble": scribble_conditioning,
              "grayscale": grayscale_conditioning, "blur": blur_conditioning, "lowres": lowres_conditioning}
CONDITION_KINDS = {"canny": "edge", "softedge": "edge", "scribble": "edge", "grayscale": "map", "blur": "map",
                   "lowres": "map"}


def condition_function(name):
    """The condition called ``name``: a built-in (:data:`CONDITIONS`), or ``module:function`` /
    ``path/to/file.py:function`` (your own, PIL.Image -> PIL.Image); a callable is returned as it is.
    An unknown name, or a function that cannot be imported, is a ValueError saying what to pass."""
    import importlib
    import importlib.util

    if callable(name):
        return name
    if name in CONDITIONS:
        return CONDITIONS[name]
    choices = f"one of {', '.join(CONDITIONS)}, or module:function for your own (PIL.Image -> PIL.Image)"
    if ":" not in str(name):
        raise ValueError(f"unknown condition {name!r}: use {choices}")
    module_name, _, function_name = str(name).rpartition(":")
    try:
        if module_name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(module_name).stem, Path(module_name).expanduser())
            if spec is None or not Path(module_name).expanduser().is_file():
                raise FileNotFoundError(f"no file {module_name}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except Exception as error:
        raise ValueError(f"condition {name!r}: cannot import {module_name} ({type(error).__name__}: {error}); "
                         "run from the folder that holds it, or give the .py file's path (path/to/file.py:function)"
                         ) from error
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"condition {name!r}: {module_name} has no function {function_name!r}")
    return function


def condition_kind(name, default: str = "map") -> str:
    """``edge``, ``mask`` or ``map``: a built-in's kind, a function's ``consistency_kind`` attribute, else
    ``default``."""
    if not callable(name) and name in CONDITION_KINDS:
        return CONDITION_KINDS[name]
    return getattr(condition_function(name), "consistency_kind", default)


def apply_condition(function, picture: Image.Image, source) -> Image.Image:
    """``function(picture)`` checked: a PIL image of the picture's size in RGB or L (returned as RGB); anything else,
    or an error inside it, is a ValueError naming the file ``source`` and what came back."""
    name = getattr(function, "__name__", repr(function))
    try:
        condition = function(picture.copy())
    except Exception as error:
        raise ValueError(f"condition {name} failed on {source}: {type(error).__name__}: {error}") from error
    if not isinstance(condition, Image.Image):
        raise ValueError(f"condition {name} returned a {type(condition).__name__} for {source}, not a PIL image: "
                         "return Image.fromarray(...)")
    if condition.size != picture.size or condition.mode not in ("RGB", "L"):
        raise ValueError(f"condition {name} returned a {condition.size[0]}x{condition.size[1]} {condition.mode} "
                         f"image for {source} ({picture.size[0]}x{picture.size[1]} RGB given): return an RGB (or L) "
                         "image of the picture's size")
    return condition.convert("RGB")


# Captions, from the ecosystem's conventions.

def _caption_from_name(path: Path) -> str:
    return " ".join(path.stem.replace("_", " ").replace("-", " ").split())


def read_captions(folder: str | Path, pictures: list[Path]) -> tuple[str, list[str | None]]:
    """``(source, captions)``: one caption (or None) per picture, from the first convention the folder follows:

    1. ``metadata.jsonl`` (an imagefolder's: ``{"file_name": "path/inside/folder.jpg", "text": "..."}``);
    2. a ``.txt`` file beside each picture, of the same stem (the LoRA trainers' convention);
    3. the file name (``red_house-2.jpg`` -> "red house 2").
    """
    folder = Path(folder).expanduser()
    metadata = folder / "metadata.jsonl"
    if metadata.is_file():
        texts = {}
        for number, line in enumerate(read_utf8_lines(metadata), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{metadata} line {number} is not JSON ({error.msg}): fix or delete that line")
            if isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("file_name", "text")):
                texts[Path(entry["file_name"]).as_posix().lstrip("./")] = entry["text"]
        return "metadata.jsonl", [texts.get(p.relative_to(folder).as_posix()) for p in pictures]
    sidecars = [p.with_suffix(".txt") for p in pictures]
    if any(s.is_file() for s in sidecars):
        return ".txt files", ["\n".join(read_utf8_lines(s)).strip() if s.is_file() else None for s in sidecars]
    return "file names", [_caption_from_name(p) or None for p in pictures]


@dataclass
class BuiltDataset:
    """What :func:`build_own_dataset` did: the folder, its rows, where captions came from, what was skipped."""
    output_dir: Path
    rows: int
    caption_source: str
    uncaptioned: list[str]
    skipped: list[tuple[str, str]]
    contact_sheet: Path | None
    condition: str
    crop: str
    background: str
    resolution: int
    recursive: bool
    held_out_dir: Path | None = None
    held_out: int = 0


def held_out_dir_for(output_dir: str | Path) -> Path:
    """Where :func:`build_own_dataset` writes the pictures it holds out: beside the data set, ``NAME-held-out/`` (not
    inside it, where the imagefolder loader would find them and train on them)."""
    output_dir = Path(output_dir)
    return output_dir.parent / f"{output_dir.name}-held-out"


def held_out_indices(count: int, hold_out: int) -> set[int]:
    """``hold_out`` of ``count`` positions spread evenly over them (not the last ones: a folder sorted by name or
    date would otherwise hold out only its newest pictures)."""
    return {min(count - 1, int((i + 0.5) * count / hold_out)) for i in range(hold_out)} if hold_out else set()


def build_own_dataset(input_dir: str | Path, output_dir: str | Path, condition="canny", *, resolution: int = 512,
                      crop: str = "center", background: str = "white", recursive: bool = True,
                      overwrite: bool = False, contact_pairs: int = 4, hold_out: int = 0) -> BuiltDataset:
    """An imagefolder of your pictures and their conditions, which ``python -m cnhelpers.train --train_data_dir``
    and upstream's train_controlnet.py read: ``images/``, ``conditioning_images/``, ``metadata.jsonl``
    (``file_name``, ``conditioning_image_file_name``, ``text``), a ``contact_sheet.png`` of the first
    ``contact_pairs`` pairs, and ``skipped.txt`` listing the files that could not be read (if any).

    Each picture is read whatever its mode (:func:`open_picture`), fitted to ``resolution`` as ``crop`` says
    (:func:`fit_picture`), and its condition made from the fitted picture. Captions: :func:`read_captions`; a
    picture without one gets the empty caption. ``hold_out`` pictures, spread over the folder, are kept out of the
    training rows and written as an imagefolder of their own (:func:`held_out_dir_for`), with
    ``validation_flags.txt``: the ``--validation_image`` / ``--validation_prompt`` flags that validate on them.
    Written under a temporary name and moved into place at the end.
    Raises ValueError (FileNotFoundError for a missing input) for what the user must fix.
    """
    input_dir, output_dir = Path(input_dir).expanduser(), Path(output_dir).expanduser()
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir} is not a folder: give the folder that holds your pictures")
    check_resolution(resolution)
    if crop not in CROP_MODES:
        raise ValueError(f"unknown crop {crop!r}: use one of {', '.join(CROP_MODES)}")
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}: use one of {', '.join(BACKGROUNDS)}")
    function = condition_function(condition)
    if not 0 <= hold_out == int(hold_out):
        raise ValueError(f"--hold_out {hold_out}: give a whole number of pictures to keep out of training (0 or more)")
    held_dir = held_out_dir_for(output_dir) if hold_out else None
    for folder in filter(None, (output_dir, held_dir)):
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())) and not overwrite:
            raise ValueError(f"{folder} exists and is not empty: pass --overwrite to replace it, or name a new "
                             "output folder")
    if output_dir.resolve() == input_dir.resolve() or output_dir.resolve() in input_dir.resolve().parents:
        raise ValueError(f"{output_dir} holds the input folder {input_dir}: name another output folder")
    pictures = find_pictures(input_dir, recursive, exclude=output_dir)
    if not pictures:
        raise ValueError(f"{input_dir} holds no pictures{' (subfolders included)' if recursive else ''}: put files "
                         f"PIL reads there ({', '.join(IMAGE_SUFFIXES)}, ...)")
    if hold_out >= len(pictures):
        raise ValueError(f"--hold_out {hold_out} would leave none of the {len(pictures)} pictures in {input_dir} to "
                         "train on: hold out fewer (a few, or about 5 % of a large folder)")
    source, captions = read_captions(input_dir, pictures)
    skipped, uncaptioned, sheet = [], [], []
    name = condition if isinstance(condition, str) else getattr(condition, "__name__", "custom")
    kept_out = held_out_indices(len(pictures), hold_out)
    with contextlib.ExitStack() as stack:
        rows = stack.enter_context(PairWriter(stack.enter_context(staged_folder(output_dir))))
        held = stack.enter_context(PairWriter(stack.enter_context(staged_folder(held_dir)))) if held_dir else None
        for index, (path, caption) in enumerate(zip(pictures, captions)):
            shown = path.relative_to(input_dir).as_posix()
            try:
                picture = open_picture(path, background)
            except Exception as error:  # PIL's errors for a broken file are many (OSError, SyntaxError, ...)
                skipped.append((shown, f"{type(error).__name__}: {error}"))
                continue
            picture = fit_picture(picture, resolution, crop, background)
            conditioning = apply_condition(function, picture, shown)
            if caption is None:
                uncaptioned.append(shown)
            if index in kept_out:
                held.add(picture, conditioning, caption or "")
                continue
            rows.add(picture, conditioning, caption or "")
            if len(sheet) < contact_pairs:
                sheet.append([picture, conditioning])
        if not rows.rows:
            first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
            raise ValueError(f"no readable picture in {input_dir}: all {len(skipped)} files failed to open{first}")
        if skipped:
            (rows.folder / "skipped.txt").write_text("".join(f"{file}\t{reason}\n" for file, reason in skipped))
        contact = None
        if sheet:  # pictures in the first row, their conditions below
            image_grid([[p for p, _ in sheet], [c for _, c in sheet]]).save(rows.folder / "contact_sheet.png")
            contact = output_dir / "contact_sheet.png"
        if held is not None:
            write_validation_flags(held, held_dir, condition if isinstance(condition, str) else None)
    return BuiltDataset(output_dir, rows.rows, source, uncaptioned, skipped, contact, str(name), crop, background,
                        resolution, recursive, held_dir, held.rows if held else 0)


def write_validation_flags(held: PairWriter, final: Path, condition: str | None) -> None:
    """``validation_flags.txt`` in the held-out folder: the training flags that validate on its conditions and
    captions, naming the files where they will be once the folder is in place (``final``), and the condition (a name
    or ``file.py:function``) that scores them, when it was given as text."""
    images = [shlex.quote(str(final / "conditioning_images" / f"{i:05d}.png")) for i in range(held.rows)]
    flags = ["--validation_image", *images, "--validation_prompt", *map(shlex.quote, held.captions)]
    if condition is not None:  # --validation_condition takes the same names and module:function as --condition
        flags += ["--validation_condition", shlex.quote(condition)]
    (held.folder / "validation_flags.txt").write_text(" ".join(flags) + "\n")
