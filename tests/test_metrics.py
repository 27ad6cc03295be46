"""Control-fidelity metrics: IoU on known masks, outline filling, colour errors, fill prompts."""

import math

import numpy as np
import pytest
from PIL import Image

from cnhelpers.data import PALETTE, Circle, draw_circle
from cnhelpers.metrics import (
    circle_mask,
    colour_error,
    colour_rgb,
    disc_from_outline,
    mask_iou,
    prompt_colours,
    score_fill_image,
)


def disc(size, cx, cy, r):
    y, x = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    return (x - cx) ** 2 + (y - cy) ** 2 <= r ** 2


def shifted_disc_iou(r, d):
    """IoU of two discs of radius r whose centres are d apart (the lens area over the union)."""
    lens = 2 * r * r * math.acos(d / (2 * r)) - d / 2 * math.sqrt(4 * r * r - d * d)
    return lens / (2 * math.pi * r * r - lens)


def test_identical_masks_have_iou_one():
    mask = disc(64, 30, 30, 12)
    assert mask_iou(mask, mask) == 1.0


def test_disjoint_masks_have_iou_zero():
    assert mask_iou(disc(64, 15, 15, 10), disc(64, 48, 48, 10)) == 0.0


@pytest.mark.parametrize("shift", [10, 40, 80])
def test_shifted_disc_has_the_analytic_iou(shift):
    r = 60
    measured = mask_iou(disc(400, 150, 200, r), disc(400, 150 + shift, 200, r))
    assert measured == pytest.approx(shifted_disc_iou(r, shift), abs=0.01)


def test_masks_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        mask_iou(np.ones((8, 8), bool), np.ones((16, 16), bool))


def test_filled_outline_is_the_drawn_disc():
    circle = Circle(0.45, 0.55, 0.25, "red", "blue")
    image, conditioning = draw_circle(circle, 256)
    filled = disc_from_outline(conditioning)
    drawn = circle_mask(image, PALETTE["red"], PALETTE["blue"])
    assert mask_iou(filled, drawn) > 0.99
    assert filled.sum() == pytest.approx(math.pi * (0.25 * 256) ** 2, rel=0.03)


def test_an_outline_less_image_is_refused():
    with pytest.raises(ValueError, match="no outline"):
        disc_from_outline(Image.new("RGB", (32, 32)))


def test_a_perfect_fill_image_scores_iou_one_and_no_colour_error():
    circle = Circle(0.5, 0.4, 0.2, "orange", "navy")
    image, conditioning = draw_circle(circle, 64)
    scores = score_fill_image(image, conditioning, circle.text)
    assert scores["iou"] > 0.98
    assert scores["circle_colour_error"] < 0.02 and scores["background_colour_error"] < 0.02


def test_an_image_shifted_from_its_outline_scores_the_analytic_iou():
    r, shift, size = 0.2, 0.1, 512
    image, _ = draw_circle(Circle(0.5 + shift, 0.5, r, "yellow", "purple"), size)
    _, outline = draw_circle(Circle(0.5, 0.5, r, "yellow", "purple"), size)
    scores = score_fill_image(image, outline, "yellow circle with purple background")
    assert scores["iou"] == pytest.approx(shifted_disc_iou(r * size, shift * size), abs=0.02)


def test_colour_error_is_zero_for_the_exact_colour_and_one_for_the_opposite():
    white = np.full((4, 4, 3), 255, np.uint8)
    everywhere = np.ones((4, 4), bool)
    assert colour_error(white, everywhere, (255, 255, 255)) == 0.0
    assert colour_error(white, everywhere, (0, 0, 0)) == pytest.approx(1.0)


def test_swapped_colours_give_a_large_colour_error():
    image, conditioning = draw_circle(Circle(0.5, 0.5, 0.25, "red", "lime"), 64)
    scores = score_fill_image(image, conditioning, "lime circle with red background")
    assert scores["iou"] < 0.05
    assert scores["circle_colour_error"] > 0.3 and scores["background_colour_error"] > 0.3


def test_prompt_colours_reads_the_palette_and_fill50k_css_names():
    assert prompt_colours("red circle with navy background") == (PALETTE["red"], PALETTE["navy"])
    assert colour_rgb("pale golden rod") == (238, 232, 170)


@pytest.mark.parametrize("prompt", ["a cat on a sofa", "chartreuse-ish circle with red background"])
def test_prompts_that_name_no_fill_colours_are_refused(prompt):
    with pytest.raises(ValueError, match="fill prompt|Unknown colour"):
        prompt_colours(prompt)
