"""Data sets for training: loading rows (an imagefolder, a saved data set, a hub id, fill50k's raw files), their
checks (columns, captions, images, aspect ratios), the transforms, tokenised prompts, and the batches the loop
takes (:func:`make_train_dataset`, :func:`collate_fn`).

Every data set has three columns, as in fill50k (:data:`COLUMNS`): ``image`` (the target),
``conditioning_image`` (the control signal) and ``text`` (the caption); other names are picked by flag.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from .hub import HubUnavailableError, download_file, hub_offline, looks_like_hub_id
from .paths import build_dir, staged_folder

#: Column names of fill50k and of every data set the course writes.
COLUMNS = ("image", "conditioning_image", "text")


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


#: Words in datasets' names of splits (its SPLIT_KEYWORDS: train, training, validation, valid, dev, val, test,
#: testing, eval, evaluation): a folder with none of them in any file or folder name has one split, train.
SPLIT_WORDS = ("train", "val", "dev", "test", "eval")


def single_split_files(folder) -> dict | None:
    """``{"train": "**"}`` when datasets would find one split, every file of ``folder`` in it; else ``None``.

    datasets finds a local folder's splits by resolving each of its split patterns (66) against the folder, a
    walk of every file each: 4.5 s for the course's 2,048 examples. This walks it once: no file or folder name
    mentions a split word and there is no top-level ``data/`` folder (datasets' sharded ``data/{split}-...``
    layout), so its patterns would all come back empty and it would take every file as train. Naming the files
    then loads the same rows in the same order."""
    folder = Path(folder)
    if (folder / "data").is_dir():
        return None
    for _root, dirs, files in os.walk(folder):
        if any(word in name.lower() for name in dirs + files for word in SPLIT_WORDS):
            return None
    return {"train": "**"}


def load_local_folder(path, config_name: str | None = None, cache_dir=None):
    """``datasets.load_dataset`` of a local folder's train split, quietly (:func:`local_load`), naming its files
    where that gives the same rows (:func:`single_split_files`)."""
    from datasets import load_dataset

    with local_load():
        return load_dataset(str(path), config_name, data_files=single_split_files(path), cache_dir=cache_dir,
                            split="train")


def load_imagefolder(path: str | Path):
    """Load an imagefolder (``metadata.jsonl`` beside the images; :func:`cnhelpers.own_data.write_imagefolder`
    writes one) as a Dataset."""
    return load_local_folder(path)


def load_raw_dataset(*, train_data_dir: str | Path | None = None, dataset_name: str | None = None,
                     dataset_config_name: str | None = None, cache_dir: str | Path | None = None):
    """The raw rows (a ``datasets.Dataset``) named by ``--dataset_name`` or ``--train_data_dir`` (which wins).

    ``fusing/fill50k`` (and local folders in its raw layout) go through :func:`load_fill50k`, since
    datasets >= 4 cannot run its loading script. ``dataset_config_name`` and ``cache_dir`` are datasets'
    (``--dataset_config_name``, ``--cache_dir``).
    """
    from datasets import load_dataset, load_from_disk

    if train_data_dir is not None:
        check_metadata(train_data_dir)  # else datasets fails deep inside (IndexError, StopIteration, UnicodeDecodeError)
        dataset = load_local_folder(train_data_dir, cache_dir=cache_dir)
        check_not_empty(dataset, train_data_dir)
        return dataset
    if dataset_name is None:
        raise ValueError("Name the data: pass --dataset_name (a hub id or a folder) or --train_data_dir.")
    name = str(dataset_name)
    local = Path(name).expanduser()
    if local.is_dir():
        if all((local / f).is_file() for f in FILL50K_FILES):
            return load_fill50k(local)
        if (local / "state.json").is_file() or (local / "dataset_dict.json").is_file():
            loaded = load_from_disk(str(local))
            return loaded["train"] if hasattr(loaded, "keys") else loaded
        check_metadata(local)  # the same folder as --train_data_dir: the same checks before datasets reads it
        dataset = load_local_folder(local, dataset_config_name, cache_dir=cache_dir)
        check_not_empty(dataset, local)
        return dataset
    if name.rstrip("/").lower() == "fusing/fill50k":
        return load_fill50k(name)
    if looks_like_hub_id(name) and hub_offline():
        raise HubUnavailableError(
            f"--dataset_name {name!r} is a hub id, but HF_HUB_OFFLINE is set. Use a local folder "
            "(--train_data_dir or --dataset_name PATH), or go online.")
    try:
        return load_dataset(name, dataset_config_name, cache_dir=cache_dir, split="train")
    except (ConnectionError, OSError) as error:
        raise HubUnavailableError(f"Cannot load --dataset_name {name!r} from the hub ({error}). Use a local "
                                  "folder (--train_data_dir or --dataset_name PATH), or go online.") from error


def read_utf8_lines(path, why: str = "the course reads captions as UTF-8") -> list[str]:
    """The lines of a text file that must be UTF-8 (a metadata file, a caption): a line that is not raises one
    ValueError naming the file, the line, the byte, ``why`` and the fix, never a caption quietly altered."""
    path = Path(path)
    lines = []
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{path} line {number} is not UTF-8 (byte {raw[error.start]:#04x} at column {error.start + 1}): "
                f"{why}. Save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`, "
                "then replace it), or fix that line.") from None
    return lines


def check_metadata(folder) -> None:
    """Refuse an imagefolder whose metadata.jsonl (or .csv) datasets could not read, before it reads it: a file
    that is not UTF-8 (naming the line and the fix), a metadata.jsonl line that is not JSON, or no rows."""
    for metadata in sorted(Path(folder).glob("metadata.*")):
        if metadata.suffix not in (".jsonl", ".csv"):
            continue
        lines = []
        for number, line in enumerate(read_utf8_lines(metadata, "datasets reads metadata files as UTF-8"), 1):
            if not line.strip():
                continue
            if metadata.suffix == ".jsonl":
                try:
                    json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{metadata} line {number} is not a JSON object ({error.msg} at column "
                                     f"{error.colno}): each line of metadata.jsonl must be one JSON object such as "
                                     '{"file_name": ..., "conditioning_image_file_name": ..., "text": ...}. Fix that '
                                     "line.") from None
            lines.append(line)
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


def check_aspect_ratios(raw, image_column: str, conditioning_image_column: str) -> None:
    """:func:`check_same_aspect` on every row before training starts, reading each picture's header, not its
    pixels (the uncached path transforms rows only as batches need them: a pair of different shapes met in a
    later batch would stop a run that had begun writing its log). A header PIL cannot read names its row and file
    as :func:`to_rgb` does."""
    from datasets import Image as ImageFeature

    if not hasattr(raw, "__len__"):  # a stream: its rows are checked as they arrive
        return
    for column in (image_column, conditioning_image_column):
        if isinstance((raw.features or {}).get(column), ImageFeature):
            raw = raw.cast_column(column, ImageFeature(decode=False))
    for row, (image, conditioning) in enumerate(zip(raw[image_column], raw[conditioning_image_column])):
        check_same_aspect(open_header(image, row, image_column), open_header(conditioning, row,
                                                                              conditioning_image_column), row)


def open_header(image, row, column):
    """A PIL image with its header read and its pixels not yet decoded (``image``: a PIL image, or datasets'
    undecoded ``{"bytes", "path"}``)."""
    if not isinstance(image, dict):
        return image
    source = f" ({image['path']})" if image.get("path") else ""
    try:
        return Image.open(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"])
    except Exception as error:
        raise unreadable_image(error, row, column, source, UNREADABLE_FIX) from error


def unreadable_image(error: Exception, row, column, source: str, fix: str) -> ValueError:
    """The one line for an image that cannot be read: its row, column and file (``source``), PIL's reason without
    memory addresses, and ``fix``."""
    reason = re.sub(r" at 0x[0-9a-fA-F]+", "", str(error))
    return ValueError(f"Row {row}: cannot read the {column!r} image{source} ({type(error).__name__}: {reason}). {fix}")


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
            pictures = [to_rgb(example[column], row, column, fix="") for column in columns]
            if len(pictures) == 2:
                check_same_aspect(*pictures, row)
        except ValueError as error:
            problems.append(str(error).strip())
            continue
        keep.append(row)
    return (dataset.select(keep) if problems else dataset), problems


# --------------------------------------------------------------------------------------------------
# From rows to training batches
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


def to_rgb(image, row, column, fix: str = "Fix or drop that row (e.g. dataset.filter) and try again."):
    """Decode (if needed) and convert an image to RGB; a broken file names its row, column and file."""
    source = ""
    try:
        if isinstance(image, dict):  # an undecoded datasets Image: {"bytes", "path"}
            source = f" ({image['path']})" if image.get("path") else ""
            image = Image.open(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"])
        # RGBA, L (grey), P (palette), CMYK...: the models take 3 channels, so every mode becomes RGB.
        return image.convert("RGB")
    except Exception as error:
        raise unreadable_image(error, row, column, source, fix) from error


#: What to do about an unreadable image met while training (the CLI's flag, or the notebooks' filter).
UNREADABLE_FIX = ("Fix or drop that row (e.g. dataset.filter), or pass --skip_bad_images to leave out the rows whose "
                  "images cannot be read.")


def dataset_columns(dataset) -> list[str]:
    """Column names of a Dataset or IterableDataset (a stream of unknown features is peeked at once)."""
    if dataset.column_names is not None:
        return list(dataset.column_names)
    return list(next(iter(dataset)).keys())


def check_columns(column_names, *, as_flags: bool = False, **wanted: str) -> None:
    """Refuse a column that the data set lacks, naming the argument that asked for it, the columns there are, and
    the fix.

    ``wanted`` maps each argument to the column it names: ``check_columns(dataset.column_names,
    caption_column="prompt")`` raises ``caption_column='prompt' is not a column of the data set; its columns are:
    image, conditioning_image, text. Pass caption_column=<one of them>.`` With ``as_flags`` (the CLI) the argument
    is named as its flag: ``--caption_column 'prompt' ... Pass --caption_column <one of them>.``
    """
    columns = list(column_names)
    for name, column in wanted.items():
        if column not in columns:
            given, fix = (f"--{name} {column!r}", f"--{name} <one of them>") if as_flags \
                else (f"{name}={column!r}", f"{name}=<one of them>")
            raise ValueError(f"{given} is not a column of the data set; its columns are: {', '.join(columns)}. "
                             f"Pass {fix}.")


def make_train_dataset(dataset, tokenizer, *, resolution: int, image_column: str = "image",
                       conditioning_image_column: str = "conditioning_image", caption_column: str = "text",
                       proportion_empty_prompts: float = 0.0, max_train_samples: int | None = None,
                       seed: int | None = None, shuffle_buffer_size: int = 1000, interpolation: str = "bilinear",
                       tokenizer_2=None, tokenize=None):
    """Turn raw rows into training examples: ``pixel_values``, ``conditioning_pixel_values``, ``input_ids``.

    The knobs are upstream train_controlnet.py's, but columns are always picked by name (upstream falls
    back to column positions, and an imagefolder orders them image, conditioning_image, text, so the
    captions would become conditioning images). Transforms run lazily, when a row is read.

    ``dataset`` may be a ``datasets.Dataset`` or a streamed ``datasets.IterableDataset``
    (``load_dataset(..., streaming=True)``). ``max_train_samples`` keeps a seeded random subset: for a
    stream, the first ``max_train_samples`` of a shuffle through a buffer of ``shuffle_buffer_size`` rows.
    ``interpolation`` is the resize filter (upstream's SDXL script: ``--image_interpolation_mode``, lanczos).
    With ``tokenizer_2`` (SDXL's second tokenizer), examples also get ``input_ids_2`` for the same captions.
    ``tokenize(captions)``, when given, replaces both: it returns the token ids of every tokenizer of the base as
    ``{"input_ids": ..., "input_ids_2": ..., ...}`` (the base's family knows them, e.g. SD3's T5 ids).

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
    check_columns(columns, image_column=image_column, conditioning_image_column=conditioning_image_column,
                  caption_column=caption_column)
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
            image, conditioning = (to_rgb(image, row, image_column, UNREADABLE_FIX),
                                   to_rgb(conditioning, row, conditioning_image_column, UNREADABLE_FIX))
            check_same_aspect(image, conditioning, row)
            out["pixel_values"].append(to_image(image))
            out["conditioning_pixel_values"].append(to_conditioning(conditioning))
        captions = pick_captions(batch[caption_column], proportion_empty_prompts, True, rng, caption_column)
        if tokenize is not None:
            out.update(tokenize(captions))
            return out
        out["input_ids"] = tokenize_prompts(tokenizer, captions)
        if tokenizer_2 is not None:
            out["input_ids_2"] = tokenize_prompts(tokenizer_2, captions)
        return out

    if streaming:
        # A stream has no random access: transform lazily with map, numbering rows as they arrive.
        return dataset.map(preprocess, batched=True, batch_size=16, with_indices=True, remove_columns=columns)
    return dataset.with_transform(preprocess)


def collate_fn(examples: list[dict]) -> dict:
    """Stack examples into a batch: float image tensors (contiguous) and token ids (every tokenizer's: SDXL's two,
    SD3's three)."""
    import torch

    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]).contiguous().float(),
        "conditioning_pixel_values": torch.stack([e["conditioning_pixel_values"] for e in examples]).contiguous().float(),
    } | {key: torch.stack([e[key] for e in examples]) for key in examples[0] if key.startswith("input_ids")}
