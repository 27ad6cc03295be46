"""The fill world's condition types (cnhelpers.course.fill.fill_condition): each says where the circle is."""

import numpy as np
import pytest

from cnhelpers.course.fill import FILL_CONDITIONS, draw_circle, fill_condition, fill_example, placed_circle
from cnhelpers.course.metrics import disc_from_outline, mask_iou

pytestmark = pytest.mark.not_colab(reason="PIL and numpy drawing; no library whose behaviour differs on Colab")


def lit(picture) -> np.ndarray:
    return np.asarray(picture).max(axis=2) > 127


@pytest.mark.parametrize("condition", FILL_CONDITIONS)
def test_each_condition_is_an_rgb_picture_that_shows_something_and_is_seeded(condition):
    circle = placed_circle(10_000, 3)
    picture = fill_condition(circle, 64, condition, seed=10_000, index=3)
    assert picture.mode == "RGB" and picture.size == (64, 64)
    assert lit(picture).any()
    again = fill_example(10_000, 3, 64, condition=condition)["conditioning_image"]
    assert np.array_equal(np.asarray(picture), np.asarray(again))


def test_the_conditions_lie_where_the_circle_is():
    circle = placed_circle(10_000, 1)
    disc = disc_from_outline(draw_circle(circle, 64)[1])
    assert mask_iou(lit(fill_condition(circle, 64, "mask")), disc) > 0.9
    depth = np.asarray(fill_condition(circle, 64, "depth"))[..., 0].astype(float)
    assert depth[~disc].max() == 0 and depth[disc].max() > 200  # a dome: bright in the middle, dark outside
    ys, xs = np.nonzero(lit(fill_condition(circle, 64, "scribble", seed=10_000, index=1)))
    dx, dy = xs + 0.5 - circle.cx * 64, ys + 0.5 - circle.cy * 64
    assert np.all(np.abs(np.hypot(dx, dy) / (circle.radius * 64) - 1) < 0.2)  # on the rim, jittered
    covered = len(set((np.degrees(np.arctan2(dy, dx)) // 10).astype(int).tolist())) / 36
    assert 0.5 < covered < 0.95  # a part of it, not all
    keypoints = np.asarray(fill_condition(circle, 64, "keypoints", seed=10_000, index=1))
    red = (keypoints[..., 0] > 127) & (keypoints[..., 1] < 127)
    ys, xs = np.nonzero(red)
    assert abs(xs.mean() + 0.5 - circle.cx * 64) < 1 and abs(ys.mean() + 0.5 - circle.cy * 64) < 1
    ys, xs = np.nonzero(lit(fill_condition(circle, 64, "canny")))  # edges of the target picture: its rim
    assert len(xs) and np.all(np.abs(np.hypot(xs + 0.5 - circle.cx * 64, ys + 0.5 - circle.cy * 64)
                                     - circle.radius * 64) < 2)


def test_an_unknown_condition_is_one_line_naming_the_choices():
    with pytest.raises(ValueError, match="Unknown fill condition 'edges': choose one of outline, mask"):
        fill_condition(placed_circle(10_000, 0), 64, "edges")
