import pytest

from cnhelpers.course.fill import load_train_dataset
from cnhelpers.course.profiles import PROFILES, get_profile
from cnhelpers.course.tiny_bases import base_model_path

pytestmark = pytest.mark.colab


def test_tiny_is_the_default_profile(monkeypatch):
    monkeypatch.delenv("CN_PROFILE", raising=False)
    assert get_profile().name == "tiny"


def test_cn_profile_environment_variable_selects_the_profile(monkeypatch):
    monkeypatch.setenv("CN_PROFILE", "sd15")
    profile = get_profile()
    assert profile.name == "sd15"
    assert profile.pretrained_model_name_or_path == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert profile.dataset_name == "fusing/fill50k"
    assert profile.resolution == 512


def test_an_explicit_name_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("CN_PROFILE", "sd15")
    assert get_profile("tiny").name == "tiny"


def test_overrides_replace_single_fields():
    profile = get_profile("tiny", resolution=128)
    assert profile.resolution == 128 and PROFILES["tiny"].resolution == 64


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ValueError, match="choose one of tiny, sd15"):
        get_profile("sdxl-turbo")


def test_tiny_profile_builds_its_base_and_data_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("CN_BUILD_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    profile = get_profile("tiny", num_generated_examples=6)
    assert (base_model_path(profile) / "model_index.json").is_file()
    dataset = load_train_dataset(profile)
    assert len(dataset) == 6 and dataset[0]["image"].size == (64, 64)
    assert len(load_train_dataset(profile, max_samples=2)) == 2


def test_every_profile_field_is_read_by_the_package_or_a_notebook():
    import ast
    import json
    import re
    from dataclasses import fields
    from pathlib import Path

    from cnhelpers.course.profiles import Profile

    root = Path(__file__).resolve().parents[1]
    read = {node.attr for path in (root / "cnhelpers").rglob("*.py") if path.name != "profiles.py"
            for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Attribute)}
    notebooks = "\n".join("".join(cell["source"]) for path in (root / "notebooks").glob("*.ipynb")
                          for cell in json.loads(path.read_text())["cells"] if cell["cell_type"] == "code")
    read |= set(re.findall(r"\.(\w+)", notebooks))
    assert [f.name for f in fields(Profile) if f.name not in read] == []
