"""Your own data set: your pictures (or generated stand-ins), canny edges as their conditioning images, the
fill50k columns as a ``datasets.Dataset``, and an imagefolder written to disk (notebook 01).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from .data import check_columns, dataset_columns, to_rgb
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


def write_imagefolder(dataset, path: str | Path, *, image_column: str = "image",
                      conditioning_image_column: str = "conditioning_image", caption_column: str = "text") -> Path:
    """Write a data set as an imagefolder (PNG files + ``metadata.jsonl``) that ``load_dataset(path)`` reads.

    Same layout as the course's generated data (:func:`cnhelpers.course.fill.write_fill_imagefolder`): ``images/``,
    ``conditioning_images/`` and metadata rows ``{"file_name", "conditioning_image_file_name", "text"}``.
    """
    check_columns(dataset_columns(dataset), image_column=image_column,
                  conditioning_image_column=conditioning_image_column, caption_column=caption_column)
    with staged_folder(path) as tmp, open(tmp / "metadata.jsonl", "w") as metadata:
        (tmp / "images").mkdir()
        (tmp / "conditioning_images").mkdir()
        for index, example in enumerate(dataset):
            name = f"{index:05d}.png"
            to_rgb(example[image_column], index, image_column).save(tmp / "images" / name)
            to_rgb(example[conditioning_image_column], index, conditioning_image_column).save(
                tmp / "conditioning_images" / name)
            metadata.write(json.dumps({"file_name": f"images/{name}",
                                       "conditioning_image_file_name": f"conditioning_images/{name}",
                                       "text": example[caption_column]}) + "\n")
    return Path(path)
