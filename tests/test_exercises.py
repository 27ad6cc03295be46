"""The exercises: every notebook ships at least one, unsolved; its check accepts the solution in the collapsed cell
below it and rejects typical wrong answers, with a hint, never an error."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cnhelpers.course import checks

pytestmark = pytest.mark.not_colab(
    reason="the checks are numpy and torch; the exercise cells run on Colab's versions in the Colab notebooks leg")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SOLUTION = re.compile(r"^<details>.*?```python\n(?P<code>.*?)\n```", re.S)


def exercises(path: Path) -> list[tuple[str, str, list]]:
    """``(exercise code, solution code, stored outputs)`` of each exercise of a notebook: a code cell calling a
    check of ``cnhelpers.course.checks``, followed by a markdown cell with the solution in a ``<details>`` block."""
    cells = json.loads(path.read_text())["cells"]
    found = []
    for cell, following in zip(cells, cells[1:]):
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and "from cnhelpers.course.checks import check_" in source:
            match = SOLUTION.match("".join(following["source"])) if following["cell_type"] == "markdown" else None
            found.append((source, match["code"] if match else None, cell.get("outputs", [])))
    return found


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("[0-9][0-9]*_*.ipynb")), ids=lambda p: p.name)
def test_each_notebook_ships_an_unsolved_exercise_with_its_solution_below(path):
    found = exercises(path)
    assert found, f"{path.name} has no exercise"
    for code, solution, outputs in found:
        assert solution, f"{path.name}: an exercise without a collapsed <details> solution below it"
        assert re.search(r"= None\b|return None\b", code), f"{path.name}: the exercise ships answered"
        assert "✅ Correct" not in json.dumps(outputs, ensure_ascii=False), f"{path.name}: a stored solved output"


def test_at_least_three_exercises_are_code():
    codes = [code for path in NOTEBOOKS.glob("*.ipynb") for code, _, _ in exercises(path) if "return None" in code]
    assert len(codes) >= 3


def solution_of(name: str, check: str) -> str:
    return next(solution for code, solution, _ in exercises(NOTEBOOKS / name) if check in code)


def test_an_unanswered_exercise_prints_a_hint_and_returns_false(capsys):
    assert checks.check_latent_shape(None) is False
    assert checks.check_transform_answer(None, None, None) is False
    assert checks.check_min_snr_weights_function(lambda *args: None) is False
    out = capsys.readouterr().out
    assert out.count("Not answered yet") == 3 and "Hint:" in out


def test_an_answer_of_the_wrong_form_is_a_hint_not_an_error(capsys):
    assert checks.check_latent_shape(8) is False  # a number where a shape belongs
    assert checks.check_conditioning_transform(lambda image, resolution: 1 / 0) is False  # a function that raises
    assert checks.check_shifted_disc_iou("a quarter") is False
    assert "could not use your answer" in capsys.readouterr().out


# --- each check: the notebook's solution passes, typical mistakes do not ----------------------------------

def test_latent_shape():  # notebook 00
    assert checks.check_latent_shape((4, 8, 8), resolution=64, latent_channels=4, vae_scale_factor=8)
    assert not checks.check_latent_shape((4, 64, 64), resolution=64)  # the image's side, not the latents'
    assert not checks.check_latent_shape((3, 8, 8), resolution=64)  # RGB channels, not latent channels


def test_transform_answer():  # notebook 01
    namespace = {}
    exec(solution_of("01_dataset_transforms.ipynb", "check_transform_answer"), namespace)
    assert checks.check_transform_answer(namespace["my_shape"], namespace["my_pixel_range"],
                                         namespace["my_conditioning_range"], resolution=512)
    assert not checks.check_transform_answer((3, 512, 768), (-1, 1), (0, 1))  # resized, never cropped
    assert not checks.check_transform_answer((3, 512, 512), (0, 1), (0, 1))  # forgot Normalize
    assert not checks.check_transform_answer((3, 512, 512), (-1, 1), (-1, 1))  # normalised the outline too


def test_conditioning_transform():  # notebook 01, code
    from torchvision import transforms

    namespace = {"transforms": transforms}
    exec(solution_of("01_dataset_transforms.ipynb", "check_conditioning_transform"), namespace)
    assert checks.check_conditioning_transform(namespace["my_conditioning_transform"], resolution=64)

    def squashed(image, resolution):  # resized to a square: the outline no longer lines up with the circle
        return transforms.Compose([transforms.Resize((resolution, resolution)), transforms.ToTensor()])(image)

    def normalised(image, resolution):  # the target's range, not the ControlNet's
        return namespace["my_conditioning_transform"](image, resolution) * 2 - 1

    assert not checks.check_conditioning_transform(squashed, resolution=64)
    assert not checks.check_conditioning_transform(normalised, resolution=64)


def test_conditioning_size():  # notebook 02
    namespace = {}
    exec(solution_of("02_controlnet_from_unet.ipynb", "check_conditioning_size"), namespace)
    assert checks.check_conditioning_size(namespace["my_downsampling"], namespace["my_side"])
    assert not checks.check_conditioning_size(8, 512)  # SD's default embedding, not this one
    assert not checks.check_conditioning_size(16, 512)  # the right factor, the training resolution


def test_min_snr_weights_function():  # notebook 03, code
    namespace = {"torch": torch}
    exec(solution_of("03_training_loop.ipynb", "check_min_snr_weights_function"), namespace)
    assert checks.check_min_snr_weights_function(namespace["my_min_snr_weights"])

    def epsilon_everywhere(alphas_cumprod, timesteps, gamma, prediction_type):  # forgets v-prediction's + 1
        snr = alphas_cumprod[timesteps] / (1 - alphas_cumprod[timesteps])
        return torch.clamp(snr, max=gamma) / snr

    def unclamped(alphas_cumprod, timesteps, gamma, prediction_type):  # γ / SNR without the min
        snr = alphas_cumprod[timesteps] / (1 - alphas_cumprod[timesteps])
        return gamma / snr

    assert not checks.check_min_snr_weights_function(epsilon_everywhere)
    assert not checks.check_min_snr_weights_function(unclamped)


def test_min_snr_weight_of_one_timestep():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    alpha_bar = float(scheduler.alphas_cumprod[50])
    snr = alpha_bar / (1 - alpha_bar)
    assert checks.check_min_snr_weight(min(snr, 5.0) / snr, scheduler, timestep=50, snr_gamma=5.0)
    assert not checks.check_min_snr_weight(1.0, scheduler, timestep=50, snr_gamma=5.0)
    assert not checks.check_min_snr_weight(min(snr, 5.0) / (snr + 1) * 0.5, scheduler, timestep=50, snr_gamma=5.0)


def test_optimizer_state_gb():  # notebook 04
    namespace = {"counts": {"controlnet": 361_278_084}}
    exec(solution_of("04_memory_tricks.ipynb", "check_optimizer_state_gb"), namespace)
    assert checks.check_optimizer_state_gb(namespace["fp32_answer"], namespace["eight_bit_answer"], 361_278_084)
    assert not checks.check_optimizer_state_gb(361_278_084 * 4 / 1e9, 361_278_084 / 1e9, 361_278_084)  # one moment
    assert not checks.check_optimizer_state_gb(361_278_084 * 8 / 1e9, 361_278_084 * 8 / 1e9, 361_278_084)


def test_live_gradients_mb():  # notebook 04
    layers = [torch.nn.Linear(64, 32), torch.nn.Linear(32, 8)]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(layers)

    namespace = {"sd15_controlnet": Net()}
    exec(solution_of("04_memory_tricks.ipynb", "check_live_gradients_mb"), namespace)
    numels = [p.numel() for p in namespace["sd15_controlnet"].parameters()]
    assert checks.check_live_gradients_mb(namespace["usual_answer"], namespace["in_backward_answer"], numels)
    assert not checks.check_live_gradients_mb(sum(numels) * 4 / 1e6, sum(numels) * 4 / 1e6, numels)  # no saving
    assert not checks.check_live_gradients_mb(sum(numels) * 2 / 1e6, max(numels) * 2 / 1e6, numels)  # fp16 bytes


def test_mfu():  # notebook 04b
    namespace = {"sd15_flops_per_sample": 2.265e12, "h200_samples_per_s": 54.3, "peak": 989e12}
    exec(solution_of("04b_measuring_memory.ipynb", "check_mfu"), namespace)
    assert checks.check_mfu(namespace["mfu_answer"], 2.265e12, 54.3, 989e12)
    assert not checks.check_mfu(2.265e12 * 54.3 / 989e12 * 100, 2.265e12, 54.3, 989e12)  # a percentage
    assert not checks.check_mfu(2.265e12 * 8 * 54.3 / 989e12, 2.265e12, 54.3, 989e12)  # FLOPs of the batch per sample


def test_min_snr_loss():  # notebook 05, code (written with jax.numpy there; numpy takes its place here)
    namespace = {"jnp": np}
    exec(solution_of("05_flax_tpu.ipynb", "check_min_snr_loss"), namespace)
    assert checks.check_min_snr_loss(namespace["my_min_snr_loss"])
    assert not checks.check_min_snr_loss(lambda p, t, w: np.mean((p - t) ** 2 * w))  # weights along the width
    assert not checks.check_min_snr_loss(lambda p, t, w: np.mean((p - t) ** 2))  # no weights at all


def test_shifted_disc_iou():  # notebook 06
    from cnhelpers.course.metrics import mask_iou

    namespace = {"np": np, "mask_iou": mask_iou}
    exec(solution_of("06_inference.ipynb", "check_shifted_disc_iou"), namespace)
    assert checks.check_shifted_disc_iou(namespace["my_answer"])
    assert not checks.check_shifted_disc_iou(0.5)  # "half the disc overlaps"
    assert not checks.check_shifted_disc_iou(0.39)  # the lens over one disc's area, not over the union


def test_sdxl_added_embedding_width():  # notebook 07
    namespace = {}
    exec(solution_of("07_sdxl.ipynb", "check_sdxl_added_embedding_width"), namespace)
    assert checks.check_sdxl_added_embedding_width(namespace["my_answer"])
    assert not checks.check_sdxl_added_embedding_width(1280 + 256)  # one time id, not six
    assert not checks.check_sdxl_added_embedding_width(1280)  # the pooled text alone


def test_knob_prediction(capsys):  # notebook 09: the outcome is measured by the learner's own run
    namespace = {}
    exec(solution_of("09_your_own_controlnet.ipynb", "check_knob_prediction"), namespace)
    knob, value = namespace["MY_KNOB"]
    assert knob == "learning_rate" and value < 2e-3 and namespace["my_prediction"] in checks.KNOB_PREDICTIONS
    assert checks.check_knob_prediction("lower", 0.6, 0.2)
    assert not checks.check_knob_prediction("higher", 0.6, 0.2)
    assert not checks.check_knob_prediction("lower", 0.6, 0.58)  # within the tolerance: about the same
    assert checks.check_knob_prediction("about the same", 0.6, 0.58)
    assert checks.check_knob_prediction("higher", 0.3, 0.5)
    assert checks.check_knob_prediction(None, 0.6, None) is False  # the shipped cell: a hint
    assert checks.check_knob_prediction("better", 0.3, 0.5) is False  # not one of the three words: a hint
    out = capsys.readouterr().out
    assert "Not answered yet" in out and "could not use your answer" in out


def test_residual_index():  # notebook 08
    namespace = {}
    exec(solution_of("08_diffusion_transformers.ipynb", "check_residual_index"), namespace)
    assert checks.check_residual_index(namespace["my_sd3_answer"], namespace["my_flux_answer"])
    assert not checks.check_residual_index(5, 5)  # Flux's rounded-up interval taken for SD3's too
    assert not checks.check_residual_index(6, 6)  # SD3's fractional interval taken for Flux's too
    assert not checks.check_residual_index(6, 7)  # 22 // 3: the interval rounded down


def test_condition_ranking(capsys):  # notebook 09's ranking exercise, for the condition-types benchmark's result
    scores = checks.final_scores([{"condition": "mask", "iou": [0.2, 0.8]}, {"condition": "outline", "iou": [0.78]},
                                  {"condition": "keypoints", "iou": [0.5, 0.3]}])
    assert scores == {"mask": 0.8, "outline": 0.78, "keypoints": 0.3}
    assert checks.check_condition_ranking(["mask", "outline", "keypoints"], scores)
    assert checks.check_condition_ranking(["outline", "mask", "keypoints"], scores)  # within 0.05: a tie
    assert not checks.check_condition_ranking(["keypoints", "mask", "outline"], scores)
    assert not checks.check_condition_ranking(["mask", "keypoints", "outline"], scores)
    assert checks.check_condition_ranking(["mask", "outline"], scores) is False  # one left out: a hint
    assert checks.check_condition_ranking(None, scores) is False
    out = capsys.readouterr().out
    assert "wrong way round" in out and "could not use your answer" in out and "Not answered yet" in out
    # the notebook's solution, against the committed result the notebook reads
    from cnhelpers.course.own_walkthrough import latest_result

    namespace = {}
    exec(solution_of("09_your_own_controlnet.ipynb", "check_condition_ranking"), namespace)
    measured = checks.final_scores(latest_result("condition-types-tiny-cpu-*.json")["rows"])
    assert checks.check_condition_ranking(namespace["my_ranking"], measured)
    assert not checks.check_condition_ranking(["outline", "mask", "depth", "scribble", "keypoints", "canny"], measured)
    assert not checks.check_condition_ranking(list(reversed(namespace["my_ranking"])), measured)
