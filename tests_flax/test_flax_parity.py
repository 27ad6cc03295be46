"""The pretrained tiny base in Flax computes what it computes in PyTorch: each part, then the whole pipeline.

The PyTorch references are loaded from the shipped safetensors (``cnhelpers/assets/tiny-sd``), never from
the ``.bin`` copy that ``with_bin_weights`` makes for Flax, so a conversion that loses or renames a weight
shows up as a difference. Differences measured here (CPU, float32, the tests' inputs), and the bounds:

============================  ===========================  ==========================================
compared on the same inputs   measured                     bound
============================  ===========================  ==========================================
text encoder (hidden states)  max 1.4e-6                   max 1e-4
VAE decode (pixels, [-1, 1])  max 3.4e-6                   max 1e-4
UNet (noise prediction, ~1)   max 1.1e-4                   max 1e-3
pipeline images ([0, 1])      MAD 1.5e-5 (max 7e-4)        MAD 1e-3 (a quarter of one uint8 level)
============================  ===========================  ==========================================

Broken on purpose, for scale (a manual check on the same inputs): the VAE built with 32 GroupNorm groups instead
of its 8 decodes with a max difference of 2.4 (pipeline MAD 0.31); the text encoder converted without the
``text_model.`` prefix (random weights) differs by 5.6 (pipeline MAD 0.40); the UNet with
``flip_sin_to_cos=False`` by 1.2; the PyTorch DPM-Solver with its default final step (to zero noise) instead of
``PYTORCH_SAMPLER_MATCH`` gives a pipeline MAD of 0.0056. Each fails its test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cnhelpers.course.fill import fill_example
from cnhelpers.course.flax_training import PYTORCH_SAMPLER_MATCH, flax_sampler, torch_controlnet_from_flax, with_bin_weights
from cnhelpers.course.tiny_bases import PRETRAINED_TINY_BASE

PIPELINE_STEPS = 20  # notebook 06's count
GUIDANCE = 3.0  # the tiny profile's guidance_scale (7.5 saturates the tiny base's colours)
EXAMPLES = [fill_example(seed=10_000, index=i, resolution=64) for i in range(2)]  # a seed no training saw
PROMPTS = [example["text"] for example in EXAMPLES]


@pytest.fixture(scope="module")
def pretrained_bin():
    """The shipped base's ``.bin`` copy (its folder is named ``tiny-sd``, like the random base of conftest's)."""
    return with_bin_weights(PRETRAINED_TINY_BASE)


@pytest.fixture(scope="module")
def flax_parts(pretrained_bin):
    """The Flax models of the pretrained tiny base, as notebook 05 loads them."""
    from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
    from transformers import CLIPTokenizer, FlaxCLIPTextModel

    vae, vae_params = FlaxAutoencoderKL.from_pretrained(pretrained_bin, subfolder="vae", from_pt=True)
    unet, unet_params = FlaxUNet2DConditionModel.from_pretrained(pretrained_bin, subfolder="unet", from_pt=True)
    return {"tokenizer": CLIPTokenizer.from_pretrained(pretrained_bin, subfolder="tokenizer"),
            "text_encoder": FlaxCLIPTextModel.from_pretrained(pretrained_bin, subfolder="text_encoder", from_pt=True),
            "vae": vae, "vae_params": vae_params, "unet": unet, "unet_params": unet_params}


@pytest.fixture(scope="module")
def torch_parts():
    """The PyTorch models, from the shipped safetensors.

    transformers 4 expects the CLIP weights under ``text_model.``; the shipped file (saved by transformers 5)
    has no prefix, so they are loaded, strictly, into the inner ``text_model``.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = PRETRAINED_TINY_BASE
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    text_encoder.text_model.load_state_dict(load_file(folder / "text_encoder" / "model.safetensors"), strict=True)
    return {"tokenizer": CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
            "text_encoder": text_encoder.eval(),
            "vae": AutoencoderKL.from_pretrained(folder, subfolder="vae").eval(),
            "unet": UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()}


def _token_ids(tokenizer, prompts=PROMPTS + [""]):
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="np").input_ids


def _torch_text(torch_parts, ids):
    with torch.no_grad():
        return torch_parts["text_encoder"](torch.from_numpy(ids)).last_hidden_state.numpy()


def test_the_flax_tokenizer_knows_every_caption_word(flax_parts, torch_parts):
    tokenizer = flax_parts["tokenizer"]
    ids = _token_ids(tokenizer, PROMPTS)
    np.testing.assert_array_equal(ids, _token_ids(torch_parts["tokenizer"], PROMPTS))
    for prompt, row in zip(PROMPTS, ids):
        words = row[1:list(row).index(tokenizer.eos_token_id)]  # between the start token and the first end one
        assert len(words) == len(prompt.split()) and tokenizer.unk_token_id not in words
        assert tokenizer.decode(words) == prompt


def test_flax_text_encoder_matches_pytorch_on_the_pretrained_base(flax_parts, torch_parts):
    """Measured max difference 1.4e-6; the hidden states are of order 1."""
    ids = _token_ids(flax_parts["tokenizer"])
    got = np.asarray(flax_parts["text_encoder"](ids)[0])
    np.testing.assert_allclose(got, _torch_text(torch_parts, ids), atol=1e-4, rtol=0)


def test_flax_vae_decode_matches_pytorch_on_the_pretrained_base(flax_parts, torch_parts):
    """Measured max difference 3.4e-6 in [-1, 1] pixels (the VAE has 8 GroupNorm groups of 4 channels)."""
    latents = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = torch_parts["vae"].decode(torch.from_numpy(latents)).sample.numpy()
    vae = flax_parts["vae"]
    got = vae.apply({"params": flax_parts["vae_params"]}, latents, method=vae.decode).sample
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=0)


def test_flax_unet_matches_pytorch_on_the_pretrained_base(flax_parts, torch_parts):
    """Measured max difference 1.1e-4 (noise predictions of order 1), on real text embeddings."""
    rng = np.random.default_rng(1)
    latents = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
    text = _torch_text(torch_parts, _token_ids(torch_parts["tokenizer"]))
    timesteps = np.array([10, 500, 990], dtype=np.int32)
    with torch.no_grad():
        expected = torch_parts["unet"](torch.from_numpy(latents), torch.from_numpy(timesteps),
                                       encoder_hidden_states=torch.from_numpy(text)).sample.numpy()
    unet = flax_parts["unet"]
    got = unet.apply({"params": flax_parts["unet_params"]}, latents, jnp.asarray(timesteps), text).sample
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-3, rtol=0)


def test_the_flax_sampler_takes_the_pytorch_samplers_timesteps(pretrained_bin):
    from diffusers import DPMSolverMultistepScheduler

    scheduler, state = flax_sampler(pretrained_bin)
    state = scheduler.set_timesteps(state, PIPELINE_STEPS, (1, 4, 8, 8))
    twin = DPMSolverMultistepScheduler.from_pretrained(PRETRAINED_TINY_BASE, subfolder="scheduler",
                                                       **PYTORCH_SAMPLER_MATCH)
    twin.set_timesteps(PIPELINE_STEPS)
    assert np.asarray(state.timesteps).tolist() == twin.timesteps.tolist()


def test_flax_pipelines_skip_the_last_pndm_step_so_the_sampler_is_not_pndm(pretrained_bin):
    """With skip_prk_steps PNDM has one timestep more than steps, and the Flax pipelines loop over steps only."""
    import inspect

    from diffusers import FlaxPNDMScheduler, FlaxStableDiffusionControlNetPipeline

    pndm, pndm_state = FlaxPNDMScheduler.from_pretrained(pretrained_bin, subfolder="scheduler")
    assert len(pndm.set_timesteps(pndm_state, PIPELINE_STEPS, (1, 4, 8, 8)).timesteps) == PIPELINE_STEPS + 1
    assert "fori_loop(0, num_inference_steps" in inspect.getsource(FlaxStableDiffusionControlNetPipeline._generate)
    scheduler, state = flax_sampler(pretrained_bin)
    assert len(scheduler.set_timesteps(state, PIPELINE_STEPS, (1, 4, 8, 8)).timesteps) == PIPELINE_STEPS


@pytest.fixture(scope="module")
def torch_controlnet(torch_parts, tmp_path_factory):
    """A ControlNet from the PyTorch UNet whose zero convolutions are made non-zero, so that it acts."""
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    controlnet = ControlNetModel.from_unet(torch_parts["unet"])
    with torch.no_grad():
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                     controlnet.controlnet_cond_embedding.conv_out]:
            conv.weight.normal_(0, 0.05)
            conv.bias.normal_(0, 0.05)
    folder = tmp_path_factory.mktemp("controlnet")
    controlnet.save_pretrained(folder, safe_serialization=False)  # from_pt reads .bin only
    return controlnet.eval(), folder


def _pipeline_images(flax_parts, torch_parts, torch_controlnet, pretrained_bin, scale):
    from diffusers import (DPMSolverMultistepScheduler, FlaxControlNetModel, FlaxStableDiffusionControlNetPipeline,
                           StableDiffusionControlNetPipeline)

    controlnet, folder = torch_controlnet
    controls = [example["conditioning_image"] for example in EXAMPLES]
    latents = np.random.default_rng(2).standard_normal((len(PROMPTS), 4, 8, 8)).astype(np.float32)

    flax_controlnet, flax_controlnet_params = FlaxControlNetModel.from_pretrained(folder, from_pt=True)
    scheduler, scheduler_state = flax_sampler(pretrained_bin)
    flax_pipeline = FlaxStableDiffusionControlNetPipeline(
        vae=flax_parts["vae"], text_encoder=flax_parts["text_encoder"], tokenizer=flax_parts["tokenizer"],
        unet=flax_parts["unet"], controlnet=flax_controlnet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None)
    params = {"vae": flax_parts["vae_params"], "text_encoder": flax_parts["text_encoder"].params,
              "unet": flax_parts["unet_params"], "controlnet": flax_controlnet_params, "scheduler": scheduler_state}
    flax_images = flax_pipeline(
        flax_pipeline.prepare_text_inputs(PROMPTS), flax_pipeline.prepare_image_inputs(controls), params,
        jax.random.PRNGKey(0), num_inference_steps=PIPELINE_STEPS, guidance_scale=jnp.array(GUIDANCE),
        controlnet_conditioning_scale=jnp.array(scale), latents=jnp.asarray(latents), jit=False).images

    torch_pipeline = StableDiffusionControlNetPipeline(
        vae=torch_parts["vae"], text_encoder=torch_parts["text_encoder"], tokenizer=torch_parts["tokenizer"],
        unet=torch_parts["unet"], controlnet=controlnet, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
        scheduler=DPMSolverMultistepScheduler.from_pretrained(PRETRAINED_TINY_BASE, subfolder="scheduler",
                                                              **PYTORCH_SAMPLER_MATCH))
    torch_pipeline.set_progress_bar_config(disable=True)
    torch_images = torch_pipeline(PROMPTS, controls, latents=torch.from_numpy(latents), height=64, width=64,
                                  num_inference_steps=PIPELINE_STEPS, guidance_scale=GUIDANCE,
                                  controlnet_conditioning_scale=scale, output_type="np").images
    return np.asarray(flax_images), torch_images


def test_flax_and_pytorch_pipelines_draw_the_same_images_from_the_same_latents(
        flax_parts, torch_parts, torch_controlnet, pretrained_bin):
    """Measured mean absolute difference 1.5e-5 (images in [0, 1]); the bound is a quarter of a uint8 level.

    The ControlNet acts (its scale-1 images differ from its scale-0 ones by a MAD of 0.056), so its
    conversion is checked too.
    """
    flax_images, torch_images = _pipeline_images(flax_parts, torch_parts, torch_controlnet, pretrained_bin, 1.0)
    assert flax_images.shape == torch_images.shape == (len(PROMPTS), 64, 64, 3)
    assert np.abs(flax_images - torch_images).mean() < 1e-3
    flax_base_only, torch_base_only = _pipeline_images(flax_parts, torch_parts, torch_controlnet, pretrained_bin, 0.0)
    assert np.abs(flax_base_only - torch_base_only).mean() < 1e-3
    assert np.abs(flax_images - flax_base_only).mean() > 1e-2


def test_a_saved_flax_controlnet_comes_back_to_pytorch_with_the_same_weights(torch_controlnet, tmp_path):
    from diffusers import FlaxControlNetModel

    controlnet, folder = torch_controlnet
    flax_controlnet, params = FlaxControlNetModel.from_pretrained(folder, from_pt=True)
    flax_controlnet.save_pretrained(tmp_path, params=params)
    back = torch_controlnet_from_flax(tmp_path).state_dict()
    expected = controlnet.state_dict()
    assert back.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(back[key], value, rtol=0, atol=0, msg=key)


def test_a_folder_without_flax_weights_gets_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="diffusion_flax_model.msgpack"):
        torch_controlnet_from_flax(tmp_path)
