"""environment.yml (conda) and requirements.txt (pip) pin the same stack; pyproject admits it."""

import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.not_colab(reason="reads the pin files")

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


# --------------------------------------------------------------------------------------------------
# The Flax environment of notebook 05 (.venv-flax)
# --------------------------------------------------------------------------------------------------

def flax_requirements_pins():
    return _pins((ROOT / "requirements-flax.txt").read_text().splitlines())


def flax_conda_pins():
    env = yaml.safe_load((ROOT / "environment-flax.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1 and "python=3.11" in env["dependencies"]
    return _pins(pip_sections[0])


def test_environment_flax_yml_pins_the_same_versions_as_requirements_flax_txt():
    assert flax_conda_pins() == flax_requirements_pins()


def test_flax_pins_stay_on_the_last_releases_with_flax_models():
    from packaging.version import Version

    pins = flax_requirements_pins()
    assert Version(pins["diffusers"]) < Version("0.40"), "diffusers 0.40 removed every Flax class"
    assert Version(pins["transformers"]) < Version("5"), "transformers 5 has no Flax models"
    assert pins["torch"] == "2.13.0", "the CPU torch this machine kind installs from disk for the Flax env"
    assert "torchvision" not in pins, "torchvision cannot be imported beside the Flax env's CPU torch"


def test_flax_notebook_runs_in_the_cn_flax_kernel_and_the_makefile_registers_it():
    import json

    notebook = json.loads((ROOT / "notebooks" / "05_flax_tpu.ipynb").read_text())
    assert notebook["metadata"]["kernelspec"]["name"] == "cn-flax"
    makefile = (ROOT / "Makefile").read_text()
    assert "--name $(KERNEL_FLAX)" in makefile and "KERNEL_FLAX := cn-flax" in makefile


def test_no_cnhelpers_module_but_flax_training_imports_jax():
    import pkgutil
    import subprocess
    import sys

    import cnhelpers

    modules = sorted(m.name for m in pkgutil.walk_packages(cnhelpers.__path__, "cnhelpers.")
                     if m.name != "cnhelpers.course.flax_training")
    assert {"cnhelpers.data", "cnhelpers.families.sd", "cnhelpers.course.plots"} <= set(modules)
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax'))\n"
            "print(bad)\nsys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"importing {modules} imported {result.stdout.strip()} {result.stderr[-2000:]}"
