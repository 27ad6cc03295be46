"""Control-fidelity metrics: IoU on known masks, outline filling, colour errors, fill prompts."""

import math

import numpy as np
import pytest
from PIL import Image

from cnhelpers.course.fill import PALETTE, Circle, draw_circle, sample_circle
from cnhelpers.course.metrics import (
    circle_mask,
    colour_error,
    colour_rgb,
    RADIUS_BINS,
    breakdown_groups,
    disc_from_outline,
    fit_circle,
    iou_breakdown,
    mask_iou,
    outline_touches_border,
    prompt_colours,
    score_fill_image,
)

pytestmark = pytest.mark.not_colab(reason="numpy and PIL scoring")


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


@pytest.mark.parametrize("resolution, least_iou", [(64, 0.95), (256, 0.99)])
@pytest.mark.parametrize("circle", [
    Circle(0.05, 0.5, 0.25, "red", "blue"),  # cut by the left edge
    Circle(0.9, 0.92, 0.3, "red", "blue"),  # cut by two edges
    Circle(0.02, 0.03, 0.1, "red", "blue"),  # a quarter disc in the corner
])
def test_an_outline_the_border_cuts_fills_to_the_drawn_disc(circle, resolution, least_iou):
    image, conditioning = draw_circle(circle, resolution)
    assert outline_touches_border(conditioning)
    drawn = circle_mask(image, PALETTE["red"], PALETTE["blue"])
    assert mask_iou(disc_from_outline(conditioning), drawn) > least_iou


def test_an_outline_inside_the_frame_does_not_touch_the_border():
    _, conditioning = draw_circle(Circle(0.5, 0.5, 0.4, "red", "blue"), 64)
    assert not outline_touches_border(conditioning)


def test_fit_circle_recovers_a_circle_from_an_arc():
    angles = np.linspace(0.2, 1.4, 40)  # under a quarter of the circle
    points = np.column_stack([30 + 12 * np.cos(angles), -5 + 12 * np.sin(angles)])
    assert fit_circle(points) == pytest.approx((30, -5, 12), abs=1e-6)


def test_iou_breakdown_groups_hand_made_circles():
    circles = [Circle(0.5, 0.5, 0.1, "red", "blue"),  # inside, first radius bin
               Circle(0.05, 0.5, 0.2, "red", "blue"),  # cut, second bin
               Circle(0.5, 0.5, RADIUS_BINS[-1][1], "red", "blue")]  # inside, the last bin's upper edge
    rows = {row["group"]: row for row in iou_breakdown([0.9, 0.3, 0.6], circles)}
    assert rows["all"] == {"group": "all", "n": 3, "iou": pytest.approx(0.6)}
    assert rows["inside the frame"]["iou"] == pytest.approx(0.75) and rows["inside the frame"]["n"] == 2
    assert rows["cut by the border"] == {"group": "cut by the border", "n": 1, "iou": pytest.approx(0.3)}
    (low0, high0), (low1, high1), (low2, high2), (low3, high3) = RADIUS_BINS
    assert rows[f"radius {low0:.2f}-{high0:.2f}"]["iou"] == pytest.approx(0.9)
    assert rows[f"radius {low1:.2f}-{high1:.2f}"]["iou"] == pytest.approx(0.3)
    assert rows[f"radius {low2:.2f}-{high2:.2f}"] == {"group": f"radius {low2:.2f}-{high2:.2f}", "n": 0, "iou": None}
    assert rows[f"radius {low3:.2f}-{high3:.2f}"]["iou"] == pytest.approx(0.6)


def test_every_circle_falls_in_exactly_one_radius_bin_and_one_placement():
    circles = [sample_circle(0, i) for i in range(500)]
    groups = breakdown_groups(circles)
    radius_groups = [members for name, members in groups.items() if name.startswith("radius")]
    assert sorted(i for members in radius_groups for i in members) == list(range(500))
    assert sorted(groups["inside the frame"] + groups["cut by the border"]) == list(range(500))


def test_iou_breakdown_wants_one_score_per_circle():
    with pytest.raises(ValueError, match="2 IoUs but 1 circles"):
        iou_breakdown([0.1, 0.2], [Circle(0.5, 0.5, 0.1, "red", "blue")])


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
