import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_build_dir(tmp_path_factory):
    """Tests build into a temporary folder, never into the checkout's build/."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CN_BUILD_DIR", str(tmp_path_factory.mktemp("build")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """The tiny SD-layout base, built once for the whole test session."""
    from cnhelpers.models import build_tiny_base

    return build_tiny_base(tmp_path_factory.mktemp("models") / "tiny-sd", seed=0)
