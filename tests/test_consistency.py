"""cnhelpers.consistency: ControlNet++'s controllability (the condition extracted again from a generated picture,
compared with the one given), and ``--validation_condition``, which logs it at each validation of a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cnhelpers.config import training_args
from cnhelpers.consistency import consistency_score, consistency_scores, edge_f1, map_agreement, mask_iou
from cnhelpers.own_data import condition_function

pytestmark = pytest.mark.colab  # one test trains through the CLI and validates with the pipeline

ROOT = Path(__file__).resolve().parents[1]


def circle(centre=(32, 32), radius=16, size=64, width=1, fill=False):
    image = Image.new("RGB", (size, size), "black")
    x, y = centre
    box = (x - radius, y - radius, x + radius, y + radius)
    draw = ImageDraw.Draw(image)
    draw.ellipse(box, fill="white") if fill else draw.ellipse(box, outline="white", width=width)
    return image


def painted(centre=(32, 32), radius=16, size=64):
    image = Image.new("RGB", (size, size), (20, 20, 120))
    x, y = centre
    ImageDraw.Draw(image).ellipse((x - radius, y - radius, x + radius, y + radius), fill=(220, 30, 30))
    return image


def test_identical_edges_score_one():
    assert edge_f1(circle(), circle()) == 1.0


def test_shifted_edges_score_lower_the_further_they_move():
    near, far = edge_f1(circle((33, 32)), circle(), tolerance=1), edge_f1(circle((40, 32)), circle(), tolerance=1)
    assert 0.9 < near <= 1.0  # within the tolerance
    assert far < 0.5 and far < near


def test_missing_edges_lower_the_recall():
    half = np.asarray(circle()).copy()
    half[:, 32:] = 0
    assert 0.5 < edge_f1(Image.fromarray(half), circle()) < 0.75  # precision 1, recall about a half


def test_an_empty_prediction_scores_zero_and_two_empty_maps_agree():
    black = Image.new("RGB", (64, 64))
    assert edge_f1(black, circle()) == 0.0
    assert edge_f1(circle(), black) == 0.0
    assert edge_f1(black, black) == 1.0


def test_mask_iou():
    assert mask_iou(circle(fill=True), circle(fill=True)) == 1.0
    left, right = np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)
    left[:, :4], right[:, 2:6] = 255, 255
    assert mask_iou(Image.fromarray(left), Image.fromarray(right)) == pytest.approx(1 / 3)
    assert mask_iou(Image.new("L", (8, 8)), Image.fromarray(right)) == 0.0


def test_map_agreement_is_one_minus_the_mean_absolute_error():
    assert map_agreement(Image.new("L", (4, 4), 100), Image.new("L", (4, 4), 100)) == 1.0
    assert map_agreement(Image.new("L", (4, 4), 0), Image.new("L", (4, 4), 51)) == pytest.approx(0.8)


def test_canny_consistency_of_pictures_that_follow_their_outline_or_not():
    given = [condition_function("canny")(painted())]
    assert consistency_score([painted()], given, "canny") == 1.0
    assert consistency_score([painted((44, 40), 10)], given, "canny") < 0.3
    assert consistency_score([Image.new("RGB", (64, 64), "grey")], given, "canny") == 0.0


def test_map_conditions_score_by_the_error_and_a_picture_is_resized_to_its_condition():
    picture = painted()
    grey = condition_function("grayscale")(picture)
    assert consistency_score([picture], [grey], "grayscale") == 1.0
    assert consistency_score([picture.resize((128, 128))], [grey], "grayscale") > 0.97
    assert consistency_scores([picture, Image.new("RGB", (64, 64), "white")], [grey, grey], "blur")[1] < 0.8


def test_kind_and_condition_errors():
    with pytest.raises(ValueError, match="unknown kind"):
        consistency_score([circle()], [circle()], "canny", kind="depth")
    with pytest.raises(ValueError, match="one condition per picture"):
        consistency_score([circle()], [], "canny")


def test_validation_condition_is_checked_with_the_flags(tmp_path):
    flags = dict(pretrained_model_name_or_path="base", train_data_dir="data", output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="give --validation_prompt"):
        training_args(**flags, validation_condition="canny")
    with pytest.raises(ValueError, match="unknown condition 'depth'"):
        training_args(**flags, validation_condition="depth", validation_prompt=["x"], validation_image=["x.png"])


def test_a_two_step_run_logs_the_consistency(tiny_base, fill_dir, tmp_path):
    metadata = json.loads((Path(fill_dir) / "metadata.jsonl").read_text().splitlines()[0])
    out = tmp_path / "run"
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "cnhelpers.train", "--pretrained_model_name_or_path", str(tiny_base),
         "--train_data_dir", str(fill_dir), "--output_dir", str(out), "--resolution", "64", "--train_batch_size", "2",
         "--max_train_steps", "2", "--report_to", "none", "--learning_rate", "1e-4", "--lr_warmup_steps", "0",
         "--seed", "0", "--validation_prompt", metadata["text"], "--validation_image",
         str(Path(fill_dir) / metadata["conditioning_image_file_name"]), "--num_validation_images", "2",
         "--num_validation_inference_steps", "2", "--validation_steps", "1", "--validation_condition", "canny"],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    scores = [line for line in lines if "consistency" in line]
    assert [line["step"] for line in scores] == [1, 2]
    assert all(0.0 <= line["consistency"] <= 1.0 and line["validation_condition"] == "canny" for line in scores)
    floor = [line for line in lines if "consistency_without_controlnet" in line]  # the base alone, once a run
    assert [line["step"] for line in floor] == [1] and 0.0 <= floor[0]["consistency_without_controlnet"] <= 1.0
    assert [line["step"] for line in lines if "loss" in line] == [1, 2]
