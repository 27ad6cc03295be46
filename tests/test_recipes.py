"""The course's training recipe is written once: the notebook's flags, the advice's command line and the short
run that stands in for notebook 03 are the same."""

import shlex

import pytest

from cnhelpers.config import parse_args
from cnhelpers.course.profiles import get_profile
from cnhelpers.course.recipes import course_flags, course_training_args, how_to_make_controlnet, notebook_run_args

pytestmark = pytest.mark.not_colab(reason="the recipe's flags, parsed by argparse")


def test_the_advices_command_line_is_the_course_recipe(tmp_path):
    profile = get_profile("tiny")
    advice = how_to_make_controlnet(tmp_path / "controlnet-tiny", profile)
    command = next(line.strip() for line in advice.splitlines() if "python -m cnhelpers.train" in line)
    parsed = parse_args(shlex.split(command)[3:])
    expected = course_training_args(profile, parsed.pretrained_model_name_or_path, tmp_path / "controlnet-tiny",
                                    train_data_dir=parsed.train_data_dir)
    assert vars(parsed) == vars(expected)
    assert parsed.snr_gamma == 5.0 and parsed.proportion_empty_prompts == 0.1


def test_overrides_replace_the_recipes_flags_and_nothing_else(tmp_path):
    profile = get_profile("tiny")
    base = course_flags(profile, "base", tmp_path, train_data_dir="data")
    changed = course_flags(profile, "base", tmp_path, train_data_dir="data", max_train_steps=7)
    assert changed == base | {"max_train_steps": 7}
    assert base["learning_rate"] == profile.learning_rate and base["train_batch_size"] == profile.train_batch_size


def test_notebook_03s_tiny_run_starts_its_embedding_kaiming_and_the_gpu_profiles_keep_from_unets(tmp_path):
    tiny = notebook_run_args(get_profile("tiny"), "base", tmp_path / "tiny" / "out", steps=4)
    assert tiny.conditioning_embedding_init == "kaiming" and tiny.max_train_steps == 4
    sd15 = notebook_run_args(get_profile("sd15", resolution=64, mixed_precision="no"), "base",
                             tmp_path / "sd15" / "out", steps=4)
    assert sd15.conditioning_embedding_init == "default"
    # the rest is the recipe: the course's flags for the same steps
    recipe = course_training_args(get_profile("tiny"), "base", tmp_path / "tiny" / "out", max_train_steps=4)
    assert tiny.learning_rate == recipe.learning_rate and tiny.snr_gamma == recipe.snr_gamma


def test_the_sd15_recipe_is_a_measured_ladder_rung_that_fits_its_target_card():
    from pathlib import Path

    from cnhelpers.course.memory import LADDER, load_ladder_results, rung_flags

    profile = get_profile("sd15")
    flags = course_flags(profile, "base", "out")
    results = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "results").glob("sd15-ladder-h200-*-ladder2.json"))
    measured = [r for r in load_ladder_results(*results)
                if r["peak_gb"] is not None and "deepspeed" not in LADDER[r["rung"] - 1].needs]
    # the measured rungs whose every flag the recipe has (the cache is on by --cache auto); the recipe's further
    # flags (fp16, the cache) only lower the peak, so the last such rung bounds it from above
    fitting = [r for r in measured if all(flags.get(k) == v for k, v in rung_flags(r["rung"]).items() if k != "cache")]
    assert fitting and flags["train_batch_size"] == 1 and flags["gradient_accumulation_steps"] == 4
    best = max(fitting, key=lambda r: r["rung"])
    assert best["rung"] == 4 and best["peak_gb"] < 0.8 * profile.target_gpu_gb  # the guide's 12 GB flags
    assert flags["mixed_precision"] == "fp16" and not flags.get("checkpoint_frozen_unet")


def test_the_gpu_recipes_are_refused_on_a_cpu_only_for_what_a_cpu_cannot_do(monkeypatch):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU runs fp16")
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        course_training_args(get_profile("sd15"), "base", "out")
    monkeypatch.setenv("CN_PROFILE_OVERRIDES", "mixed_precision=no, resolution=64, max_train_steps=3")
    args = course_training_args(get_profile("sd15"), "base", "out")
    assert (args.mixed_precision, args.resolution, args.max_train_steps, args.use_8bit_adam) == ("no", 64, 3, True)


@pytest.mark.parametrize("family_name", ["sdxl", "sd3", "flux"])
def test_the_family_runs_flags_are_flags_their_family_takes(family_name, tmp_path):
    from cnhelpers.course.recipes import FAMILY_FLAGS, family_run_flags, family_sampling
    from cnhelpers.families import check_family_flags, family_named

    profile = get_profile("tiny")
    flags = family_run_flags(family_name, "base", tmp_path, profile, steps=50, seed=3)
    args = parse_args([word for name, value in flags.items() for word in (f"--{name}", str(value))])
    check_family_flags(family_named(family_name), flags)  # raises on a flag the family does not take
    assert args.max_train_steps == 50 and args.checkpointing_steps == 5 and args.seed == 3
    assert (args.snr_gamma is not None) == (family_name == "sdxl")  # Min-SNR only on the epsilon family
    sampling = family_sampling(family_name, profile)
    assert sampling["pipeline_kwargs"].get("max_sequence_length") == FAMILY_FLAGS[family_name].get("max_sequence_length")
    assert sampling["guidance_scale"] == (3.5 if family_name == "flux" else profile.guidance_scale)
