"""SD3: the tiny SD3-layout base, its text conditioning, its ControlNet, the flow-matching objective, training it in
the shared loop (cached and uncached, resumed), and the refusals of what cannot train on it."""

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3ControlNetModel, StableDiffusion3Pipeline

from cnhelpers.config import WEIGHTING_SCHEMES as FLAG_CHOICES
from cnhelpers.config import training_args
from cnhelpers.course.fill import caption_words, fill_example
from cnhelpers.course.tiny_transformers import build_tiny_sd3_base
from cnhelpers.families import detect_family
from cnhelpers.families.sd3 import FAMILY, encode_prompt_sd3
from cnhelpers.families.flow_matching import WEIGHTING_SCHEMES, FlowMatchingObjective
from cnhelpers.train import main
from cnhelpers.training import train

pytestmark = pytest.mark.colab


@pytest.fixture(scope="module")
def sd3_base(tmp_path_factory):
    return build_tiny_sd3_base(tmp_path_factory.mktemp("models") / "tiny-sd3", seed=0)


@pytest.fixture(scope="module")
def pipe(sd3_base):
    return StableDiffusion3Pipeline.from_pretrained(sd3_base)


@pytest.fixture(scope="module")
def outline(tmp_path_factory):
    path = tmp_path_factory.mktemp("validation") / "outline.png"
    fill_example(99, 0, 64)["conditioning_image"].save(path)
    return path


def run_flags(base, data, output_dir, **flags) -> dict:
    """A 3-step run at 64 px, batch 4, seeded, no checkpoint, T5 at 16 tokens."""
    return dict(pretrained_model_name_or_path=base, train_data_dir=data, output_dir=output_dir, resolution=64,
                train_batch_size=4, learning_rate=1e-3, lr_warmup_steps=0, seed=0, report_to="none",
                checkpointing_steps=1000, max_train_steps=3, max_sequence_length=16) | flags


def weights_digest(folder) -> str:
    from safetensors.torch import load_file

    state = load_file(Path(folder) / "diffusion_pytorch_model.safetensors")
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode() + state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def refusal(argv, capsys) -> str:
    """Run the CLI in this process; it must exit 2 with one ``error:`` line (the last of stderr) and no traceback."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err and lines and lines[-1].startswith("error: "), err[-2000:]
    return lines[-1]


def cli(base, data, out, *flags) -> list:
    return ["--pretrained_model_name_or_path", base, "--train_data_dir", data, "--output_dir", out, "--resolution",
            "64", "--train_batch_size", "2", "--max_train_steps", "1", "--report_to", "none", "--seed", "0",
            "--max_sequence_length", "16", *flags]


# -- the base -----------------------------------------------------------------------------------------------
def test_the_tiny_sd3_base_loads_whole_and_part_by_part_and_is_detected_as_sd3(sd3_base, pipe):
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel, T5TokenizerFast

    assert detect_family(sd3_base).name == "sd3"
    assert type(pipe.text_encoder_3).__name__ == "T5EncoderModel"
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert pipe.vae.config.shift_factor != 0
    for loader, part in [(SD3Transformer2DModel, "transformer"), (AutoencoderKL, "vae"),
                         (CLIPTextModelWithProjection, "text_encoder"), (CLIPTextModelWithProjection, "text_encoder_2"),
                         (T5EncoderModel, "text_encoder_3")]:
        model = loader.from_pretrained(sd3_base, subfolder=part)
        assert sum(p.numel() for p in model.parameters()) < 500_000, part
    for loader in (T5TokenizerFast, AutoTokenizer):
        t5 = loader.from_pretrained(sd3_base, subfolder="tokenizer_3")
        for word in caption_words():  # every caption word is one known token
            ids = t5(word, add_special_tokens=False).input_ids
            assert len(ids) == 1 and ids[0] != t5.unk_token_id, word


def test_sd3_text_is_the_pipelines_own_encode_prompt(pipe):
    prompts = ["red circle with blue background", ""]
    embeds, pooled = encode_prompt_sd3(prompts, [pipe.tokenizer, pipe.tokenizer_2, pipe.tokenizer_3],
                                       [pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3], 16)
    reference, _, reference_pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, do_classifier_free_guidance=False,
                                                           max_sequence_length=16)
    t5_width = pipe.text_encoder_3.config.d_model
    assert embeds.shape == (2, 77 + 16, t5_width)
    clip_width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert torch.count_nonzero(embeds[:, :77, clip_width:]) == 0  # the CLIPs' states, zero-padded to T5's width
    assert pooled.shape == (2, pipe.transformer.config.pooled_projection_dim)
    assert torch.allclose(embeds, reference, atol=1e-6) and torch.allclose(pooled, reference_pooled, atol=1e-6)


# -- the ControlNet -----------------------------------------------------------------------------------------
def test_from_transformer_copies_the_embeddings_and_the_first_blocks_and_zeroes_the_new_layers(pipe):
    transformer = pipe.transformer
    controlnet = FAMILY.make_controlnet(transformer, options={"num_controlnet_layers": 2})
    assert isinstance(controlnet, SD3ControlNetModel) and len(controlnet.transformer_blocks) == 2
    copied = 0
    for name in ("pos_embed", "time_text_embed", "context_embedder"):
        for key, value in getattr(transformer, name).named_parameters():
            assert torch.equal(dict(getattr(controlnet, name).named_parameters())[key], value)
            copied += value.numel()
    for mine, theirs in zip(controlnet.transformer_blocks, transformer.transformer_blocks[:2]):
        for key, value in theirs.named_parameters():
            assert torch.equal(dict(mine.named_parameters())[key], value)
            copied += value.numel()
    new = [p for module in (controlnet.pos_embed_input, controlnet.controlnet_blocks) for p in module.parameters()]
    assert all(float(p.detach().abs().max()) == 0 for p in new)  # zero-initialised: the base's output is unchanged at first
    # every parameter is either copied or new
    assert copied + sum(p.numel() for p in new) == sum(p.numel() for p in controlnet.parameters())
    # the pipeline feeds it the pooled text and the shifted latents it is trained with (diffusers #9686)
    assert controlnet.config.force_zeros_for_pooled_projection is False
    # by default upstream's 12 layers, at most all but the transformer's last (whose text output is cut)
    assert len(FAMILY.make_controlnet(transformer).transformer_blocks) == transformer.config.num_layers - 1


# -- the flow-matching objective ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scheduler():
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)


def test_flow_matching_draws_noise_then_logit_normal_timesteps_and_interpolates_linearly(scheduler):
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    objective = FlowMatchingObjective(scheduler, "logit_normal", logit_mean=0.5, logit_std=2.0,
                                      precondition_outputs=False)
    noised = objective.noised(latents, torch.Generator().manual_seed(7))
    by_hand = torch.Generator().manual_seed(7)
    noise = torch.randn(latents.shape, generator=by_hand)
    u = torch.sigmoid(torch.normal(0.5, 2.0, size=(3,), generator=by_hand))
    indices = (u * 1000).long()
    sigma = scheduler.sigmas[indices].reshape(3, 1, 1, 1)
    assert torch.equal(noised.timesteps, scheduler.timesteps[indices])
    assert torch.allclose(noised.latents, (1 - sigma) * latents + sigma * noise)
    assert torch.allclose(noised.target, noise - latents)  # the straight line's velocity
    assert torch.equal(noised.sigmas, sigma)


@pytest.mark.parametrize("scheme", ["none", "sigma_sqrt", "cosmap"])
def test_flow_matching_loss_is_the_weighted_mean_per_sample_then_over_the_batch(scheduler, scheme):
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    prediction = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    objective = FlowMatchingObjective(scheduler, scheme, precondition_outputs=False)
    noised = objective.noised(latents, torch.Generator().manual_seed(3))
    sigma = noised.sigmas
    weight = {"none": torch.ones_like(sigma), "sigma_sqrt": sigma ** -2.0,
              "cosmap": 2 / (math.pi * (1 - 2 * sigma + 2 * sigma ** 2))}[scheme]
    per_sample = (weight * (prediction - noised.target) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(objective.loss(prediction, noised), per_sample.mean())


def test_preconditioned_outputs_map_the_prediction_to_clean_latents_and_compare_them_with_x0(scheduler):
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    prediction = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    objective = FlowMatchingObjective(scheduler, "logit_normal", precondition_outputs=True)
    noised = objective.noised(latents, torch.Generator().manual_seed(3))
    assert torch.equal(noised.target, latents)
    clean = prediction * (-noised.sigmas) + noised.latents
    assert torch.allclose(objective.loss(prediction, noised), ((clean - latents) ** 2).mean())
    # the velocity itself is a perfect prediction: x_t - sigma (noise - x0) = x0
    noise = (noised.latents - (1 - noised.sigmas) * latents) / noised.sigmas
    assert float(objective.loss(noise - latents, noised)) < 1e-8


def test_flow_matching_refuses_min_snr_and_has_upstreams_weighting_schemes(scheduler):
    objective = FlowMatchingObjective(scheduler)
    noised = objective.noised(torch.zeros(1, 4, 8, 8), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="--snr_gamma"):
        objective.loss(torch.zeros(1, 4, 8, 8), noised, snr_gamma=5.0)
    assert WEIGHTING_SCHEMES == FLAG_CHOICES == ("sigma_sqrt", "logit_normal", "mode", "cosmap", "none")


# -- training -----------------------------------------------------------------------------------------------
def test_three_sd3_steps_train_the_same_cached_and_uncached_and_save_a_loadable_controlnet(sd3_base, fill_dir,
                                                                                           outline, tmp_path):
    validation = dict(validation_prompt=["red circle"], validation_image=[outline], num_validation_images=1,
                      num_validation_inference_steps=2)
    cached = train(training_args(**run_flags(sd3_base, fill_dir, tmp_path / "cached", cache="always", **validation)))
    uncached = train(training_args(**run_flags(sd3_base, fill_dir, tmp_path / "uncached", cache="never")))
    assert cached.cached and not uncached.cached and cached.global_step == uncached.global_step == 3
    # the same draws in the same order: the condition's latents too are sampled from the (cached) posterior
    assert [h["loss"] for h in cached.history] == pytest.approx([h["loss"] for h in uncached.history], rel=1e-5)
    assert all(math.isfinite(h["loss"]) for h in cached.history)
    grid = Path(cached.validations[-1]["grid"])  # through StableDiffusion3ControlNetPipeline
    assert grid.is_file() and cached.validations[-1]["step"] == 3
    card = (tmp_path / "cached" / "README.md").read_text()
    assert "StableDiffusion3ControlNetPipeline.from_pretrained" in card and "SD3ControlNetModel" in card
    controlnet = SD3ControlNetModel.from_pretrained(tmp_path / "cached")
    assert controlnet.config.force_zeros_for_pooled_projection is False
    assert any(float(p.detach().abs().max()) > 0 for p in controlnet.controlnet_blocks.parameters())  # they moved


def test_an_sd3_run_resumed_from_step_2_ends_with_the_weights_of_an_uninterrupted_run(sd3_base, fill_dir, tmp_path):
    whole = run_flags(sd3_base, fill_dir, tmp_path / "whole", max_train_steps=4, cache="never")
    train(training_args(**whole))
    halves = run_flags(sd3_base, fill_dir, tmp_path / "halves", max_train_steps=2, checkpointing_steps=2,
                       cache="never")
    train(training_args(**halves))
    resumed = train(training_args(**(halves | dict(max_train_steps=4, resume_from_checkpoint="latest"))))
    assert resumed.global_step == 4
    assert weights_digest(tmp_path / "whole") == weights_digest(tmp_path / "halves")


# -- refusals -----------------------------------------------------------------------------------------------
def test_min_snr_on_an_sd3_base_is_refused_in_one_line_naming_the_family(sd3_base, fill_dir, tmp_path, capsys):
    line = refusal(cli(sd3_base, fill_dir, tmp_path / "out", "--snr_gamma", "5"), capsys)
    assert "--snr_gamma" in line and "Stable Diffusion 3" in line and "flow matching" in line
    assert not (tmp_path / "out" / "config.json").exists()


def test_a_controlnet_of_another_family_is_refused_naming_the_fix(sd3_base, fill_dir, tmp_path, capsys):
    from diffusers import ControlNetModel

    ControlNetModel(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    layers_per_block=1, cross_attention_dim=32, attention_head_dim=4,
                    conditioning_embedding_out_channels=(16, 32)).save_pretrained(tmp_path / "sd-controlnet")
    line = refusal(cli(sd3_base, fill_dir, tmp_path / "out", "--controlnet_model_name_or_path",
                       tmp_path / "sd-controlnet"), capsys)
    assert "ControlNetModel" in line and "SD3ControlNetModel" in line
    assert "leave out --controlnet_model_name_or_path" in line


def test_a_controlnet_of_another_size_is_refused_naming_both_values_and_the_fix(sd3_base, fill_dir, tmp_path,
                                                                               capsys, wider_controlnet):
    folder, width = wider_controlnet(sd3_base, "SD3")
    line = refusal(cli(sd3_base, fill_dir, tmp_path / "out", "--controlnet_model_name_or_path", folder), capsys)
    assert f"its joint_attention_dim is {2 * width}, the base transformer's is {width}" in line
    assert "leave out --controlnet_model_name_or_path" in line and "from_transformer" in line
    assert not (tmp_path / "out" / "config.json").exists()


def test_a_base_without_its_t5_is_refused_in_one_line(sd3_base, fill_dir, tmp_path, capsys):
    shutil.copytree(sd3_base, tmp_path / "no-t5", ignore=shutil.ignore_patterns("text_encoder_3"))
    line = refusal(cli(tmp_path / "no-t5", fill_dir, tmp_path / "out"), capsys)
    assert "text_encoder_3" in line and "hf download OWNER/NAME --include 'text_encoder_3/*'" in line
    assert "or pass its Hub id instead of the folder" in line


def test_a_caption_longer_than_max_sequence_length_is_refused_naming_the_flag(sd3_base, fill_dir, tmp_path, capsys):
    captions = [json.loads(line)["text"] for line in (fill_dir / "metadata.jsonl").read_text().splitlines()]
    assert max(len(c.split()) for c in captions) + 1 > 4  # (words and the end token)
    line = refusal(cli(sd3_base, fill_dir, tmp_path / "out") + ["--max_sequence_length", "4"], capsys)
    assert "--max_sequence_length 4" in line and "T5 tokens" in line


def test_a_resolution_the_patches_do_not_divide_is_refused(sd3_base, fill_dir, tmp_path, capsys):
    line = refusal(cli(sd3_base, fill_dir, tmp_path / "out") + ["--resolution", "72"], capsys)
    assert "--resolution 72 is not a multiple of 16" in line and "Use 64 or 80" in line


@pytest.mark.parametrize("flag", [["--num_single_layers", "2"], ["--crops_coords_top_left_h", "4"]])
def test_a_flag_of_another_family_is_refused_on_an_sd3_base(sd3_base, fill_dir, tmp_path, capsys, flag):
    line = refusal(cli(sd3_base, fill_dir, tmp_path / "out", *flag), capsys)
    assert f"{flag[0]} does not apply to a Stable Diffusion 3 base" in line
