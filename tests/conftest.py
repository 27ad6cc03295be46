"""Fixtures of the course's tests, and the rule that decides what Colab's leg runs.

Every test module declares, in a module-level ``pytestmark``, whether it runs again on Colab's library versions
(``make test-colab`` runs ``pytest -m colab``, in .venv-colab):

- ``pytest.mark.colab``: it calls what changes between library versions (loading and saving models, pipelines,
  data sets, the Hub client, widgets, running notebooks), so Colab's diffusers, transformers, datasets,
  huggingface_hub, accelerate and ipywidgets must pass it too;
- ``pytest.mark.not_colab(reason="...")``: it does not, or what it calls of those libraries is exercised on
  Colab's versions elsewhere; the reason says which.

A single test of a declining module may still carry ``@pytest.mark.colab``. A module that declares neither stops
the collection (below), so a new test module cannot silently fall out of Colab's leg; tests/test_ci_legs.py
holds the rule to every module.
"""
import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
COLAB, NOT_COLAB = "colab", "not_colab"


def pytest_collection_modifyitems(config, items):
    undeclared = sorted({str(item.path) for item in items
                         if not (item.get_closest_marker(COLAB) or item.get_closest_marker(NOT_COLAB))})
    if undeclared:
        raise pytest.UsageError(
            "test modules that declare neither pytest.mark.colab nor pytest.mark.not_colab(reason=...) in a "
            "module-level pytestmark (tests/conftest.py says which to choose): " + ", ".join(undeclared))


@pytest.fixture(autouse=True, scope="session")
def _isolated_build_dir(tmp_path_factory):
    """Tests build into a temporary folder, never into the checkout's build/."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CN_BUILD_DIR", str(tmp_path_factory.mktemp("build")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def fill_dir(tmp_path_factory):
    """16 generated fill examples at 64 px (4 batches of 4: a short run crosses an epoch), written once."""
    from cnhelpers.course.fill import write_fill_imagefolder

    return write_fill_imagefolder(tmp_path_factory.mktemp("data") / "fill", 16, 64, seed=0)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """The tiny SD-layout base, built once for the whole test session."""
    from cnhelpers.course.tiny_bases import build_tiny_base

    return build_tiny_base(tmp_path_factory.mktemp("models") / "tiny-sd", seed=0)


@pytest.fixture(scope="session")
def benchmark_script():
    """Import a script of ``benchmarks/`` as a module, by its name: ``benchmark_script("flops")``."""
    def load(name: str):
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # before it runs: dataclasses look their module up there
            spec.loader.exec_module(module)
        return sys.modules[name]
    return load


@pytest.fixture
def wider_controlnet(tmp_path):
    """Save a ControlNet of a transformer base's family made for another size of base (twice the text width):
    ``wider_controlnet(base, "SD3")`` -> (its folder, the base's ``joint_attention_dim``)."""
    def save(base, family: str):
        import diffusers

        config = dict(getattr(diffusers, f"{family}Transformer2DModel").load_config(Path(base) / "transformer"))
        width = config["joint_attention_dim"]
        config["joint_attention_dim"] = 2 * width  # made from a base whose text is twice as wide
        getattr(diffusers, f"{family}ControlNetModel").from_config(config).save_pretrained(tmp_path / "wider")
        return tmp_path / "wider", width
    return save
