"""SDXL: the tiny SDXL base, its conditioning tensors, its ControlNet, and training it in the shared loop."""

import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionXLPipeline

from cnhelpers.config import SDXL_FLAGS, build_parser, training_args
from cnhelpers.course.fill import fill_example
from cnhelpers.course.tiny_sdxl import build_tiny_sdxl_base, sdxl_demo_inputs
from cnhelpers.data import image_transforms
from cnhelpers.families.sdxl import encode_prompt_sdxl, is_sdxl_unet, make_add_time_ids
from cnhelpers.training import train

pytestmark = pytest.mark.colab


@pytest.fixture(scope="module")
def sdxl_base(tmp_path_factory):
    return build_tiny_sdxl_base(tmp_path_factory.mktemp("models") / "tiny-sdxl", seed=0)


@pytest.fixture(scope="module")
def pipe(sdxl_base):
    return StableDiffusionXLPipeline.from_pretrained(sdxl_base)


def test_the_tiny_base_loads_as_an_sdxl_pipeline_with_two_text_encoders(pipe):
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel"
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert is_sdxl_unet(pipe.unet)
    widths = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert pipe.unet.config.cross_attention_dim == widths


def test_prompt_embeds_concatenate_both_penultimate_hidden_states(pipe):
    prompts = ["red circle with blue background", ""]
    embeds, pooled = encode_prompt_sdxl(prompts, [pipe.tokenizer, pipe.tokenizer_2],
                                        [pipe.text_encoder, pipe.text_encoder_2])
    h1 = pipe.text_encoder.config.hidden_size
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        first = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        second = pipe.text_encoder_2(ids, output_hidden_states=True)
    assert embeds.shape == (2, 77, pipe.unet.config.cross_attention_dim)
    assert torch.allclose(embeds[..., :h1], first) and torch.allclose(embeds[..., h1:], second.hidden_states[-2])
    assert pooled.shape == (2, pipe.text_encoder_2.config.projection_dim)
    assert torch.allclose(pooled, second.text_embeds)


def test_our_conditioning_matches_the_sdxl_pipelines_own(pipe):
    prompt = "green circle with yellow background"
    embeds, pooled = encode_prompt_sdxl([prompt], [pipe.tokenizer, pipe.tokenizer_2],
                                        [pipe.text_encoder, pipe.text_encoder_2])
    reference, _, reference_pooled, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
    assert torch.allclose(embeds, reference, atol=1e-6) and torch.allclose(pooled, reference_pooled, atol=1e-6)
    time_ids = pipe._get_add_time_ids((64, 64), (0, 0), (64, 64), dtype=torch.float32,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    assert torch.equal(make_add_time_ids((64, 64), (0, 0), (64, 64)), time_ids)


def test_add_time_ids_are_original_size_then_crop_then_target_size():
    ids = make_add_time_ids((1024, 768), (12, 34), (512, 512), batch_size=3)
    assert ids.shape == (3, 6)
    assert ids[2].tolist() == [1024, 768, 12, 34, 512, 512]
    with pytest.raises(ValueError, match="three"):
        make_add_time_ids((1024,), (0, 0), (512, 512))


def test_controlnet_from_the_sdxl_unet_takes_the_added_conditions(pipe):
    controlnet = ControlNetModel.from_unet(pipe.unet)
    assert controlnet.config.addition_embed_type == "text_time"
    inputs = sdxl_demo_inputs(pipe.unet, 64)
    down, mid = controlnet(inputs["latents"], inputs["timesteps"], inputs["encoder_hidden_states"],
                           inputs["conditioning"], added_cond_kwargs=inputs["added_cond_kwargs"], return_dict=False)
    assert all(float(r.detach().abs().max()) == 0 for r in (*down, mid))  # zero convolutions
    out = pipe.unet(inputs["latents"], inputs["timesteps"], inputs["encoder_hidden_states"],
                    added_cond_kwargs=inputs["added_cond_kwargs"], down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample
    assert out.shape == inputs["latents"].shape
    without_time_ids = {"text_embeds": inputs["added_cond_kwargs"]["text_embeds"]}
    with pytest.raises(ValueError, match="time_ids"):
        controlnet(inputs["latents"], inputs["timesteps"], inputs["encoder_hidden_states"], inputs["conditioning"],
                   added_cond_kwargs=without_time_ids)


def test_cli_accepts_the_sdxl_scripts_extra_flags_with_upstream_defaults():
    dests = {a.dest: a for a in build_parser()._actions}
    assert all(flag in dests for flag in SDXL_FLAGS)
    assert dests["crops_coords_top_left_h"].default == 0 and dests["crops_coords_top_left_w"].default == 0
    assert dests["pretrained_vae_model_name_or_path"].default is None
    assert "lanczos" in dests["image_interpolation_mode"].choices
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--pretrained_model_name_or_path", "x", "--image_interpolation_mode", "sharp"])


def test_interpolation_mode_changes_the_resize_filter():
    from PIL import Image

    image = Image.effect_noise((100, 100), 64).convert("RGB")
    assert not torch.equal(image_transforms(64)(image), image_transforms(64, "lanczos")(image))
    with pytest.raises(ValueError, match="lanczos"):
        image_transforms(64, "sharp")


@pytest.mark.parametrize("cache", ["always", "never"])
def test_a_few_sdxl_steps_train_and_save_a_loadable_controlnet(sdxl_base, fill_dir, tmp_path, cache):
    outline = tmp_path / "outline.png"
    fill_example(99, 0, 64)["conditioning_image"].save(outline)
    validation = dict(validation_prompt=["red circle"], validation_image=[outline], num_validation_images=1,
                      num_validation_inference_steps=2) if cache == "always" else {}
    args = training_args(pretrained_model_name_or_path=sdxl_base, train_data_dir=fill_dir, output_dir=tmp_path / "out",
                         resolution=64, train_batch_size=4, learning_rate=1e-3, lr_warmup_steps=0, seed=0,
                         report_to="none", checkpointing_steps=1000, max_train_steps=3, cache=cache,
                         crops_coords_top_left_h=4, proportion_empty_prompts=0.5, **validation)
    result = train(args)
    assert result.global_step == 3 and result.cached == (cache == "always")
    if validation:  # through StableDiffusionXLControlNetPipeline
        assert [v["step"] for v in result.validations] == [3]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert "StableDiffusionXLControlNetPipeline.from_pretrained" in (tmp_path / "out" / "README.md").read_text()
    controlnet = ControlNetModel.from_pretrained(tmp_path / "out")
    assert controlnet.config.addition_embed_type == "text_time"
    assert any(float(p.detach().abs().max()) > 0 for n, p in controlnet.named_parameters()
               if n.startswith("controlnet_down_blocks"))  # the zero convolutions moved


def test_a_separate_vae_replaces_the_bases(sdxl_base, fill_dir, tmp_path):
    from diffusers import AutoencoderKL

    from cnhelpers.course.tiny_bases import TINY_VAE_CONFIG
    from cnhelpers.loading import load_models

    other_vae = tmp_path / "fp16-fix-stand-in"
    AutoencoderKL(**TINY_VAE_CONFIG).save_pretrained(other_vae)  # SD's scaling factor, unlike the base's VAE
    vae = load_models(sdxl_base, pretrained_vae_model_name_or_path=other_vae).vae
    assert vae.config.scaling_factor == TINY_VAE_CONFIG["scaling_factor"] != 0.13025


def test_the_exercise_check_accepts_only_the_added_embedding_width(pipe, capsys):
    from cnhelpers.course.checks import check_sdxl_added_embedding_width

    config = pipe.unet.config
    assert check_sdxl_added_embedding_width(config.projection_class_embeddings_input_dim,
                                            pipe.text_encoder_2.config.projection_dim, config.addition_time_embed_dim)
    assert check_sdxl_added_embedding_width(2816)
    assert not check_sdxl_added_embedding_width(1280 + 256)
    assert "6 add_time_ids" in capsys.readouterr().out
