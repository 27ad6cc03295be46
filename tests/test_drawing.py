"""Notebook 06's shipped ControlNet and its drawing widget: which ControlNet ``ensure_controlnet`` picks, the outline a
stroke makes, and the widget redrawing its picture and score when the stroke or a colour changes (in-process, 64 px).
"""
from __future__ import annotations

import numpy as np
import pytest

from cnhelpers.course.controlnet import (SHIPPED_CONTROLNET, controlnet_origin, default_controlnet_path,
                                         ensure_controlnet)
from cnhelpers.course.drawing import circle_points, follow_outline, outline_from_points, outline_widget
from cnhelpers.course.metrics import disc_from_outline, mask_iou
from cnhelpers.course.tiny_bases import PRETRAINED_TINY_BASE

# diffusers' loading and pipelines, and ipywidgets/anywidget: both differ between library versions
pytestmark = pytest.mark.colab

STEPS = dict(num_inference_steps=8, guidance_scale=3.0)


@pytest.fixture(scope="module")
def shipped_pipeline():
    from cnhelpers.inference import load_controlnet_pipeline

    return load_controlnet_pipeline(PRETRAINED_TINY_BASE, SHIPPED_CONTROLNET)


def test_ensure_controlnet_picks_notebook_03s_run_else_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.setenv("CN_BUILD_DIR", str(tmp_path))
    assert ensure_controlnet("tiny") == SHIPPED_CONTROLNET  # nothing trained, nothing written
    assert not default_controlnet_path().exists()
    assert "shipped" in controlnet_origin(SHIPPED_CONTROLNET)
    ours = default_controlnet_path()
    ours.mkdir(parents=True)
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (ours / name).symlink_to(SHIPPED_CONTROLNET / name)
    assert ensure_controlnet("tiny") == ours
    assert "notebook 03" in controlnet_origin(ours)
    with pytest.raises(FileNotFoundError, match="sd15"):
        ensure_controlnet("sd15", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="notebook 03"):
        ensure_controlnet("tiny", tmp_path / "missing")


def test_a_stroke_becomes_the_training_datas_outline_and_its_region():
    outline, region = outline_from_points(circle_points(0.5, 0.5, 0.3), 64)
    assert outline.size == (64, 64)
    assert mask_iou(disc_from_outline(outline), region) > 0.9  # the metric's disc of the outline is the drawn region
    assert abs(region.mean() - np.pi * 0.3**2) < 0.02
    with pytest.raises(ValueError, match="at least 3 points"):
        outline_from_points([[0.1, 0.1], [0.2, 0.2]], 64)


def test_the_shipped_controlnet_follows_a_drawn_circle(shipped_pipeline):
    placed = [follow_outline(shipped_pipeline, circle_points(cx, cy, 0.25), "yellow", "navy", 64, **STEPS)["iou"]
              for cx, cy in ((0.3, 0.3), (0.7, 0.65))]
    shipped_pipeline_without = follow_outline(shipped_pipeline, circle_points(0.3, 0.3, 0.25), "yellow", "navy", 64,
                                              controlnet_conditioning_scale=0.0, **STEPS)["iou"]
    assert min(placed) > 0.6, placed
    assert min(placed) > shipped_pipeline_without + 0.2, (placed, shipped_pipeline_without)


def test_the_widget_redraws_its_picture_and_score_after_a_stroke_and_a_colour(shipped_pipeline):
    form = outline_widget(shipped_pipeline, 64, circle="yellow", background="navy", size=128, **STEPS)
    assert form.picture.startswith(b"\x89PNG") and "IoU of the drawn region" in form.text
    menus, (canvas, picture), score = form.widget.children[0].children, form.widget.children[1].children, \
        form.widget.children[2]
    before = (picture.value, score.value)
    canvas.points = circle_points(0.7, 0.3, 0.2)  # what the browser sends after a stroke
    # the picture is drawn anew; the score line is recomputed, but may read the same (two circles the ControlNet
    # follows equally well scored 0.91, drawn in 0.27 s, on Colab's versions): the browser test sees it change
    assert picture.value != before[0] and "IoU of the drawn region" in score.value
    after_stroke = picture.value
    menus[0].value = "red"
    assert picture.value != after_stroke and "'red circle with navy background'" in score.value
    menus[1].value = "red"
    assert "pick two colours" in score.value
