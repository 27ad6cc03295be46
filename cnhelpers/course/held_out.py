"""The held-out outlines: fill examples of a seed the training data does not use, and their circles, on which the
course scores control fidelity (notebooks 03 and 06, :mod:`cnhelpers.course.evaluation`, the benchmarks).
"""

from __future__ import annotations

from .fill import Circle, fill_example, placed_circle

#: Seed of the held-out outlines: the training data uses seed 0, notebook 03's validation 10_000.
HELD_OUT_SEED = 10_000


def held_out_examples(n: int, seed: int = HELD_OUT_SEED, resolution: int = 64, placement: str = "course",
                      condition: str = "outline") -> list[dict]:
    """``n`` fill examples (image, conditioning_image, text) of a seed the training data does not use.

    ``placement``: ``"course"`` places them as the training data does, ``"anywhere"`` anywhere in the frame
    (:data:`cnhelpers.course.fill.PLACEMENTS`); :func:`held_out_circles` gives their circles. ``condition``: the
    conditioning picture's type (:data:`cnhelpers.course.fill.FILL_CONDITIONS`), the outline by default.
    """

    if seed == 0:
        raise ValueError("Seed 0 is the training data's: held-out outlines need another seed (e.g. 10_000)")
    return [fill_example(seed, index, resolution, placement, condition) for index in range(n)]


def held_out_circles(n: int, seed: int = HELD_OUT_SEED, placement: str = "course") -> list[Circle]:
    """The circles (:class:`cnhelpers.course.fill.Circle`) that :func:`held_out_examples` draws, in the same order."""
    return [placed_circle(seed, index, placement) for index in range(n)]
