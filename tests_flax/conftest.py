"""Tests of cnhelpers.course.flax_training. They run only in the Flax environment: `make test-flax`."""

import os

# Two simulated CPU devices, so pmap has something to split over. Must be set before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import importlib.util  # noqa: E402

import pytest  # noqa: E402

FLAX_MISSING = importlib.util.find_spec("flax") is None
if FLAX_MISSING:  # e.g. the main .venv: collect nothing, and say where these tests run
    collect_ignore_glob = ["test_*.py"]


def pytest_report_header(config):
    if FLAX_MISSING:
        return "tests_flax: flax is not installed here; these tests run in .venv-flax (make test-flax)"


@pytest.fixture(autouse=True, scope="session")
def _isolated_build_dir(tmp_path_factory):
    """Tests build into a temporary folder, never into the checkout's build/."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CN_BUILD_DIR", str(tmp_path_factory.mktemp("build")))
    yield
    mp.undo()


@pytest.fixture(scope="session", autouse=True)
def _quiet_diffusers():
    """diffusers 0.39 warns that Flax is deprecated each time a Flax module is set up (hundreds of times)."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


@pytest.fixture(scope="session")
def tiny_base_bin(tmp_path_factory):
    """The tiny base, built in this environment, with the .bin weights that from_pt=True reads."""
    from cnhelpers.course.flax_training import with_bin_weights
    from cnhelpers.course.tiny_bases import build_tiny_base

    base = build_tiny_base(tmp_path_factory.mktemp("models") / "tiny-sd", seed=0)
    return with_bin_weights(base)


@pytest.fixture(scope="session")
def flax_base(tiny_base_bin):
    """The tiny base's Flax models, loaded from its PyTorch weights once for the session."""
    from diffusers import FlaxAutoencoderKL, FlaxDDPMScheduler, FlaxUNet2DConditionModel
    from transformers import CLIPTokenizer, FlaxCLIPTextModel

    unet, unet_params = FlaxUNet2DConditionModel.from_pretrained(tiny_base_bin, subfolder="unet", from_pt=True)
    vae, vae_params = FlaxAutoencoderKL.from_pretrained(tiny_base_bin, subfolder="vae", from_pt=True)
    scheduler, scheduler_state = FlaxDDPMScheduler.from_pretrained(tiny_base_bin, subfolder="scheduler")
    return {
        "tokenizer": CLIPTokenizer.from_pretrained(tiny_base_bin, subfolder="tokenizer"),
        "text_encoder": FlaxCLIPTextModel.from_pretrained(tiny_base_bin, subfolder="text_encoder", from_pt=True),
        "unet": unet, "unet_params": unet_params, "vae": vae, "vae_params": vae_params,
        "scheduler": scheduler, "scheduler_state": scheduler_state,
    }


@pytest.fixture(scope="session")
def fresh_controlnet(flax_base):
    """``controlnet_from_unet`` on the tiny UNet: ``(controlnet, params, copied)``. Tests must not change it."""
    import jax

    from cnhelpers.course.flax_training import controlnet_from_unet

    return controlnet_from_unet(flax_base["unet"], flax_base["unet_params"], jax.random.PRNGKey(0))
