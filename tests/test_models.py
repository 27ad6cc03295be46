import json

import pytest
import torch

from cnhelpers.course.fill import PALETTE, caption_words, sample_circle
from cnhelpers.course.tiny_bases import build_tiny_base
from cnhelpers.model_info import count_parameters
from cnhelpers.tokenizer import learn_bpe_merges, tokenize_unknowns, write_clip_tokenizer

pytestmark = pytest.mark.colab


def test_tiny_base_loads_with_the_calls_learners_use_on_sd15(tiny_base):
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
        UniPCMultistepScheduler,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_base)
    assert isinstance(pipeline.unet, UNet2DConditionModel)
    assert isinstance(UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet"), UNet2DConditionModel)
    assert isinstance(AutoencoderKL.from_pretrained(tiny_base, subfolder="vae"), AutoencoderKL)
    assert isinstance(CLIPTextModel.from_pretrained(tiny_base, subfolder="text_encoder"), CLIPTextModel)
    assert isinstance(CLIPTokenizer.from_pretrained(tiny_base, subfolder="tokenizer"), CLIPTokenizer)
    DDPMScheduler.from_pretrained(tiny_base, subfolder="scheduler")
    UniPCMultistepScheduler.from_config(pipeline.scheduler.config)
    index = json.loads((tiny_base / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    weights = sorted(p.relative_to(tiny_base).as_posix() for p in tiny_base.rglob("*.safetensors"))
    assert weights == ["text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                       "vae/diffusion_pytorch_model.safetensors"]


def test_pipeline_generates_an_image_of_the_requested_size(tiny_base):
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_base)
    pipeline.set_progress_bar_config(disable=True)
    out = pipeline("red circle with blue background", num_inference_steps=2, height=64, width=64,
                   output_type="np", generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 64, 64, 3)


def test_from_unet_works_with_its_default_arguments(tiny_base):
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    controlnet = ControlNetModel.from_unet(unet)
    latents = torch.randn(2, 4, 8, 8)
    conditioning = torch.rand(2, 3, 64, 64)
    text = torch.randn(2, 7, unet.config.cross_attention_dim)
    down, mid = controlnet(latents, 10, encoder_hidden_states=text, controlnet_cond=conditioning,
                           return_dict=False)
    out = unet(latents, 10, encoder_hidden_states=text, down_block_additional_residuals=down,
               mid_block_additional_residual=mid).sample
    assert out.shape == latents.shape


def test_tiny_vae_downsamples_by_8_like_sd(tiny_base):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_base, subfolder="vae")
    latents = vae.encode(torch.rand(1, 3, 64, 64) * 2 - 1).latent_dist.mean
    assert latents.shape == (1, 4, 8, 8)


def test_unet_norm_layers_have_32_groups_as_flax_expects(tiny_base):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    groups = {m.num_groups for m in unet.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {32}


def test_no_group_norm_has_a_single_channel_per_group(tiny_base):
    """One channel per group is an instance norm: it erases the flat colours fill images are made of."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    for model in (UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet"),
                  AutoencoderKL.from_pretrained(tiny_base, subfolder="vae")):
        per_group = {m.num_channels // m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)}
        assert min(per_group) >= 2


def test_tokenizer_keeps_every_caption_word_whole_with_no_unknown_token(tiny_base):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_base, subfolder="tokenizer")
    captions = [sample_circle(0, i).text for i in range(200)]
    assert tokenize_unknowns(tokenizer, captions) == []
    ids = tokenizer(captions[0]).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert len(ids) == len(captions[0].split()) + 2
    assert tokenizer.unk_token_id not in ids[1:-1]
    for colour in PALETTE:
        assert tokenizer.tokenize(colour) == [colour + "</w>"]


def test_tokenizer_spells_out_words_it_was_not_built_for(tmp_path):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path, ["red"]))
    assert tokenizer.tokenize("dog") == ["d", "o", "g</w>"]
    assert tokenize_unknowns(tokenizer, ["red dog"]) == ["dog"]


def test_bpe_merges_reduce_each_word_to_one_symbol():
    merges = learn_bpe_merges(["red", "green", "background"])
    assert merges == learn_bpe_merges(["red", "green", "background"])  # deterministic
    merged = {"".join(pair) for pair in merges}
    assert {"red</w>", "green</w>", "background</w>"} <= merged


def test_seeded_build_is_reproducible(tiny_base, tmp_path):
    from diffusers import UNet2DConditionModel

    again = build_tiny_base(tmp_path / "again", seed=0)
    other = build_tiny_base(tmp_path / "other", seed=1)
    first = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet").state_dict()
    second = UNet2DConditionModel.from_pretrained(again, subfolder="unet").state_dict()
    third = UNet2DConditionModel.from_pretrained(other, subfolder="unet").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], third[k]) for k in first)


def test_tiny_text_encoder_width_matches_unet_cross_attention(tiny_base):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    text_encoder = CLIPTextModel.from_pretrained(tiny_base, subfolder="text_encoder")
    assert text_encoder.config.hidden_size == unet.config.cross_attention_dim
    assert count_parameters(unet) > count_parameters(text_encoder) > 0


def test_caption_words_cover_template_and_palette():
    words = caption_words()
    assert {"circle", "with", "background"} <= set(words)
    assert set(PALETTE) <= set(words)


def test_interrupted_build_leaves_no_model_behind(tmp_path, monkeypatch):
    import cnhelpers.course.tiny_bases as base_models

    monkeypatch.setattr(base_models, "TINY_MODEL_CARD", None)  # .format on None fails after the weights
    with pytest.raises(AttributeError):
        build_tiny_base(tmp_path / "tiny")
    assert list(tmp_path.iterdir()) == []  # neither the model nor its temporary folder


def test_the_sd15_architecture_has_sd15s_vae_with_32_groups():
    from cnhelpers.course.tiny_bases import SD15_VAE_CONFIG

    # stable-diffusion-v1-5's vae/config.json
    assert SD15_VAE_CONFIG["norm_num_groups"] == 32
    assert SD15_VAE_CONFIG["block_out_channels"] == (128, 256, 512, 512)
    assert SD15_VAE_CONFIG["layers_per_block"] == 2
