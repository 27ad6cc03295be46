"""Flux: the tiny Flux-layout base, its text conditioning and 2x2 packing, its ControlNet, its objective, training it
through the CLI (cached and uncached), and the refusals of what cannot train on it."""

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import FluxControlNetModel, FluxControlNetPipeline, FluxPipeline

from cnhelpers.course.fill import caption_words, fill_example
from cnhelpers.course.tiny_transformers import build_tiny_flux_base
from cnhelpers.families import detect_family
from cnhelpers.families.flux import FAMILY, encode_prompt_flux, latent_image_ids, pack_latents, unpack_latents
from cnhelpers.train import main

pytestmark = pytest.mark.colab


@pytest.fixture(scope="module")
def flux_base(tmp_path_factory):
    return build_tiny_flux_base(tmp_path_factory.mktemp("models") / "tiny-flux", seed=0)


@pytest.fixture(scope="module")
def pipe(flux_base):
    return FluxPipeline.from_pretrained(flux_base)


def refusal(argv, capsys) -> str:
    """Run the CLI in this process; it must exit 2 with one ``error:`` line (the last of stderr) and no traceback."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err and lines and lines[-1].startswith("error: "), err[-2000:]
    return lines[-1]


def cli(base, data, out, *flags, t5_tokens: int | None = 16) -> list:
    return ["--pretrained_model_name_or_path", base, "--train_data_dir", data, "--output_dir", out, "--resolution",
            "64", "--train_batch_size", "4", "--max_train_steps", "3", "--report_to", "none", "--seed", "0",
            "--learning_rate", "1e-3", "--lr_warmup_steps", "0", *flags] \
        + (["--max_sequence_length", str(t5_tokens)] if t5_tokens else [])


# -- the base -----------------------------------------------------------------------------------------------
def test_the_tiny_flux_base_loads_whole_and_part_by_part_and_is_detected_as_flux(flux_base, pipe):
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel, T5TokenizerFast

    assert detect_family(flux_base).name == "flux"
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel"
    assert type(pipe.text_encoder_2).__name__ == "T5EncoderModel"
    assert pipe.vae.config.shift_factor != 0 and pipe.transformer.config.guidance_embeds
    for loader, part in [(FluxTransformer2DModel, "transformer"), (AutoencoderKL, "vae"),
                         (CLIPTextModel, "text_encoder"), (T5EncoderModel, "text_encoder_2")]:
        model = loader.from_pretrained(flux_base, subfolder=part)
        assert sum(p.numel() for p in model.parameters()) < 500_000, part
    for loader in (T5TokenizerFast, AutoTokenizer):
        t5 = loader.from_pretrained(flux_base, subfolder="tokenizer_2")
        for word in caption_words():
            ids = t5(word, add_special_tokens=False).input_ids
            assert len(ids) == 1 and ids[0] != t5.unk_token_id, word


def test_flux_text_is_the_pipelines_own_encode_prompt(pipe):
    prompts = ["red circle with blue background", ""]
    embeds, pooled = encode_prompt_flux(prompts, [pipe.tokenizer, pipe.tokenizer_2],
                                        [pipe.text_encoder, pipe.text_encoder_2], 16)
    reference, reference_pooled, text_ids = pipe.encode_prompt(prompts, prompts, max_sequence_length=16)
    assert embeds.shape == (2, 16, pipe.transformer.config.joint_attention_dim)
    assert pooled.shape == (2, pipe.transformer.config.pooled_projection_dim)
    assert torch.allclose(embeds, reference, atol=1e-6) and torch.allclose(pooled, reference_pooled, atol=1e-6)
    assert text_ids.shape == (16, 3) and torch.count_nonzero(text_ids) == 0


def test_packing_makes_each_2x2_square_one_token_and_unpacking_undoes_it():
    latents = torch.arange(2 * 4 * 8 * 8, dtype=torch.float32).reshape(2, 4, 8, 8)
    tokens = pack_latents(latents)
    assert tokens.shape == (2, 16, 16)
    assert tokens[0, 0].tolist() == latents[0, :, :2, :2].reshape(4, 4).flatten().tolist()
    assert torch.equal(unpack_latents(tokens, 8, 8), latents)
    ids = latent_image_ids(8, 8)
    assert ids.shape == (16, 3) and ids[5].tolist() == [0, 1, 1]  # (0, row, column) of each token


# -- the ControlNet -----------------------------------------------------------------------------------------
def test_from_transformer_copies_the_first_double_and_single_blocks_and_zeroes_the_new_layers(pipe):
    transformer = pipe.transformer
    controlnet = FAMILY.make_controlnet(transformer, options={"num_double_layers": 1, "num_single_layers": 2})
    assert isinstance(controlnet, FluxControlNetModel)
    assert (len(controlnet.transformer_blocks), len(controlnet.single_transformer_blocks)) == (1, 2)
    assert controlnet.config.attention_head_dim == transformer.config.attention_head_dim
    assert controlnet.config.num_attention_heads == transformer.config.num_attention_heads
    copied = 0
    pairs = [(getattr(controlnet, n), getattr(transformer, n)) for n in
             ("time_text_embed", "context_embedder", "x_embedder")]
    pairs += list(zip(controlnet.transformer_blocks, transformer.transformer_blocks))
    pairs += list(zip(controlnet.single_transformer_blocks, transformer.single_transformer_blocks))
    for mine, theirs in pairs:
        for key, value in theirs.named_parameters():
            assert torch.equal(dict(mine.named_parameters())[key], value)
            copied += value.numel()
    new = [p for module in (controlnet.controlnet_x_embedder, controlnet.controlnet_blocks,
                            controlnet.controlnet_single_blocks) for p in module.parameters()]
    assert all(float(p.detach().abs().max()) == 0 for p in new)
    assert copied + sum(p.numel() for p in new) == sum(p.numel() for p in controlnet.parameters())
    # upstream's defaults (4 and 4), at most the transformer's
    default = FAMILY.make_controlnet(transformer)
    assert len(default.transformer_blocks) == min(4, transformer.config.num_layers)
    assert len(default.single_transformer_blocks) == min(4, transformer.config.num_single_layers)


def test_flux_loss_is_the_plain_mean_squared_error_to_the_velocity_whatever_the_scheme(pipe):
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    prediction = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    objective = FAMILY.objective(pipe.scheduler, weighting_scheme="sigma_sqrt", logit_mean=0.0, logit_std=1.0,
                                 mode_scale=1.29)
    noised = objective.noised(latents, torch.Generator().manual_seed(3))
    assert not objective.precondition_outputs
    noise = (noised.latents - (1 - noised.sigmas) * latents) / noised.sigmas
    assert torch.allclose(noised.target, noise - latents, atol=1e-5)
    assert torch.allclose(objective.loss(prediction, noised), F.mse_loss(prediction, noised.target))


# -- training -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", ["always", "never"])
def test_three_flux_steps_through_the_cli_save_a_controlnet_and_a_validation_grid(flux_base, fill_dir, tmp_path,
                                                                                  capsys, cache):
    outline = tmp_path / "outline.png"
    fill_example(99, 0, 64)["conditioning_image"].save(outline)
    out = tmp_path / "out"
    argv = cli(flux_base, fill_dir, out, "--cache", cache, "--num_double_layers", "2", "--num_single_layers", "1",
               "--validation_prompt", "red circle", "--validation_image", outline, "--num_validation_images", "1",
               "--num_validation_inference_steps", "2")
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err[-3000:]
    assert "Trained 3 steps" in capsys.readouterr().out
    assert (out / "validation" / "step-000003.png").is_file()  # through FluxControlNetPipeline
    card = (out / "README.md").read_text()
    assert f"{FluxControlNetPipeline.__name__}.from_pretrained" in card and "FluxControlNetModel" in card
    controlnet = FluxControlNetModel.from_pretrained(out)
    assert (controlnet.config.num_layers, controlnet.config.num_single_layers) == (2, 1)
    assert any(float(p.detach().abs().max()) > 0 for p in controlnet.controlnet_blocks.parameters())
    losses = [line for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(math.isfinite(float(line.split('"loss": ')[1].split(",")[0])) for line in losses)


# -- refusals -----------------------------------------------------------------------------------------------
def test_num_single_layers_on_an_sd15_base_is_refused_in_one_line_naming_the_family(tiny_base, fill_dir, tmp_path,
                                                                                   capsys):
    line = refusal(cli(tiny_base, fill_dir, tmp_path / "out", "--num_single_layers", "2", t5_tokens=None), capsys)
    assert "--num_single_layers does not apply to a Stable Diffusion 1.x/2.x base" in line and "Flux" in line


def test_min_snr_on_a_flux_base_is_refused(flux_base, fill_dir, tmp_path, capsys):
    line = refusal(cli(flux_base, fill_dir, tmp_path / "out", "--snr_gamma", "5"), capsys)
    assert "--snr_gamma does not apply to a Flux base" in line


def test_an_sd3_flag_on_a_flux_base_is_refused(flux_base, fill_dir, tmp_path, capsys):
    line = refusal(cli(flux_base, fill_dir, tmp_path / "out", "--precondition_outputs", "0"), capsys)
    assert "--precondition_outputs does not apply to a Flux base" in line


def test_a_resolution_the_2x2_packing_does_not_divide_is_refused(flux_base, fill_dir, tmp_path, capsys):
    line = refusal(cli(flux_base, fill_dir, tmp_path / "out", "--resolution", "72"), capsys)
    assert "--resolution 72 is not a multiple of 16" in line and "2x2" in line


def test_a_validation_prompt_longer_than_max_sequence_length_is_refused(flux_base, fill_dir, tmp_path, capsys):
    outline = tmp_path / "outline.png"
    fill_example(99, 0, 64)["conditioning_image"].save(outline)
    long_prompt = " ".join(["red circle with blue background"] * 4)
    line = refusal(cli(flux_base, fill_dir, tmp_path / "out", "--validation_prompt", long_prompt,
                       "--validation_image", outline), capsys)
    assert "--validation_prompt" in line and "--max_sequence_length 16" in line


def test_a_flux_base_without_its_t5_is_refused_in_one_line(flux_base, fill_dir, tmp_path, capsys):
    import shutil

    shutil.copytree(flux_base, tmp_path / "no-t5", ignore=shutil.ignore_patterns("text_encoder_2"))
    line = refusal(cli(tmp_path / "no-t5", fill_dir, tmp_path / "out"), capsys)
    assert "text_encoder_2" in line and "hf download OWNER/NAME --include 'text_encoder_2/*'" in line
    assert "or pass its Hub id instead of the folder" in line


def test_a_controlnet_of_another_family_or_size_is_refused_naming_the_fix(flux_base, fill_dir, tmp_path, capsys,
                                                                         wider_controlnet):
    from diffusers import SD3ControlNetModel

    SD3ControlNetModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                       num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                       pooled_projection_dim=16, out_channels=4, pos_embed_max_size=16).save_pretrained(tmp_path / "sd3")
    line = refusal(cli(flux_base, fill_dir, tmp_path / "out", "--controlnet_model_name_or_path", tmp_path / "sd3"),
                   capsys)
    assert "SD3ControlNetModel" in line and "FluxControlNetModel" in line
    assert "leave out --controlnet_model_name_or_path" in line

    folder, width = wider_controlnet(flux_base, "Flux")  # made from a base whose T5 is twice as wide
    line = refusal(cli(flux_base, fill_dir, tmp_path / "out", "--controlnet_model_name_or_path", folder), capsys)
    assert f"its joint_attention_dim is {2 * width}, the base transformer's is {width}" in line
    assert "leave out --controlnet_model_name_or_path" in line and "from_transformer" in line
    assert not (tmp_path / "out" / "config.json").exists()
