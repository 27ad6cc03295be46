"""PIL helpers: grids of images, difference images, tensors to pictures, PNG bytes.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def image_grid(rows):
    """Paste rows of equally sized PIL images into one picture (rows may differ in length)."""
    width, height = rows[0][0].size
    grid = Image.new("RGB", (width * max(len(r) for r in rows), height * len(rows)), "white")
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            grid.paste(image.convert("RGB").resize((width, height)), (x * width, y * height))
    return grid


def difference_image(image, reference, gain: float = 8.0):
    """What changed between two pictures: the per-pixel colour difference, times ``gain``, white on black.

    Useful when the pictures look alike: it shows where, and how much, a setting changed the result.
    """
    delta = np.abs(np.asarray(image.convert("RGB"), float) - np.asarray(reference.convert("RGB"), float)).mean(axis=2)
    return Image.fromarray(np.clip(delta * gain, 0, 255).astype(np.uint8)).convert("RGB")


def to_picture(tensor, normalised: bool):
    """A (3, H, W) tensor as an (H, W, 3) array in [0, 1] for imshow; ``normalised`` means it is in [-1, 1]."""
    values = (tensor / 2 + 0.5) if normalised else tensor
    return values.clamp(0, 1).permute(1, 2, 0).numpy()


def png_bytes(image, width: int) -> bytes:
    """``image`` scaled to ``width`` pixels (nearest neighbour, so pixels stay sharp) as PNG bytes."""
    scaled = image.resize((width, round(image.height * width / image.width)), Image.NEAREST)
    buffer = io.BytesIO()
    scaled.save(buffer, format="PNG")
    return buffer.getvalue()


def as_png(image):
    """``image`` (PIL) for ``display``, as one PNG: a PIL image displays as a JPEG and a PNG copy of itself."""
    from IPython.display import Image as Picture

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return Picture(data=buffer.getvalue(), format="png")
