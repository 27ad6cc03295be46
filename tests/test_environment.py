"""environment.yml (conda) and requirements.txt (pip) pin the same stack; pyproject admits it."""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        requirement = Requirement(line)
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{line} is not an exact pin"
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def requirements_pins():
    return _pins((ROOT / "requirements.txt").read_text().splitlines())


def conda_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1
    return _pins(pip_sections[0])


def test_environment_yml_pins_the_same_versions_as_requirements_txt():
    assert conda_pins() == requirements_pins()


def test_environment_yml_uses_the_same_python_as_the_course():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]


def test_pyproject_ranges_admit_the_pinned_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"]) + [d for group in project["optional-dependencies"].values()
                                                 for d in group]
    pins = requirements_pins()
    for line in declared:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name in pins:
            assert requirement.specifier.contains(pins[name]), f"{line} excludes the pinned {pins[name]}"


def test_torch_pins_are_the_ones_this_machine_kind_installs_from_disk():
    pins = requirements_pins()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
