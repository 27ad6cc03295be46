import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


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
