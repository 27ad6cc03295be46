"""benchmarks/controlnet_recipes.py: how a variant is written, and the schedule the course recipe takes."""

import pytest

from cnhelpers.course.profiles import environment_overrides, get_profile
from cnhelpers.course.recipes import course_flags

pytestmark = pytest.mark.not_colab(reason="a benchmark's flags and schedule, plain data")


@pytest.fixture(scope="module")
def recipes_benchmark(benchmark_script):
    return benchmark_script("controlnet_recipes")


def test_a_variant_is_a_name_and_the_flags_it_overrides(recipes_benchmark):
    assert recipes_benchmark.parse_variant('cosine={"lr_scheduler": "cosine", "learning_rate": 2e-3}') == (
        "cosine", {"lr_scheduler": "cosine", "learning_rate": 2e-3})


@pytest.mark.parametrize("text, problem", [
    ("cosine={lr_scheduler: cosine}", "is not JSON"),
    ('cosine=["cosine"]', "a JSON object of flags"),
    ('={"seed": 1}', "a name and a JSON object"),
])
def test_a_malformed_variant_stops_with_one_line_naming_the_fix(recipes_benchmark, text, problem):
    with pytest.raises(SystemExit) as stopped:
        recipes_benchmark.parse_variant(text)
    message = str(stopped.value)
    assert problem in message and "NAME=" in message and "\n" not in message


def test_the_course_recipe_takes_the_profiles_lr_schedule(tmp_path):
    tiny, sd15 = get_profile("tiny"), get_profile("sd15")
    assert course_flags(tiny, "base", tmp_path, train_data_dir="data")["lr_scheduler"] == tiny.lr_scheduler == "cosine"
    assert course_flags(sd15, "base", tmp_path)["lr_scheduler"] == "constant"  # upstream's default on the real path


def test_the_lr_schedule_can_be_overridden_from_the_environment():
    assert environment_overrides("lr_scheduler=constant, learning_rate=1e-3") == {
        "lr_scheduler": "constant", "learning_rate": 1e-3}


def test_time_to_control_sets_a_variants_flags_and_refuses_an_unknown_one_in_one_line(benchmark_script, tmp_path):
    from cnhelpers.config import training_args

    timing = benchmark_script("time_to_control")
    args = training_args(pretrained_model_name_or_path="base", output_dir=tmp_path, train_data_dir="data")
    assert timing.apply_overrides(args, "warm", {"lr_warmup_steps": 50}).lr_warmup_steps == 50
    with pytest.raises(SystemExit) as stopped:
        timing.apply_overrides(args, "typo", {"lr_warmup_step": 50})
    assert "--lr_warmup_step is not a training flag" in str(stopped.value) and "\n" not in str(stopped.value)
