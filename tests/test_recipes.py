"""The course's training recipe is written once: the notebook's flags, the advice's command line and the short
run that stands in for notebook 03 are the same."""

import shlex

from cnhelpers.config import parse_args
from cnhelpers.profiles import get_profile
from cnhelpers.recipes import course_flags, course_training_args, how_to_make_controlnet


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
