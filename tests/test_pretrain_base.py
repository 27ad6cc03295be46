"""The tiny base's pretraining recipe: each stage runs, resumes after a crash, and assembles a loadable base."""

import json

import numpy as np
import pytest
import torch

from cnhelpers.course import pretrain_base
from cnhelpers.course.tiny_bases import PRETRAINED_TINY_BASE, ensure_tiny_base, is_complete_base

pytestmark = pytest.mark.not_colab(
    reason="the recipe that made the shipped base, which no learner runs; loading that base runs on Colab's versions"
           " in test_models and every notebook")

SMOKE = ["--vae_steps", "3", "--vae_batch_size", "2", "--num_latent_examples", "8", "--unet_steps", "3",
         "--unet_batch_size", "4", "--checkpoint_every", "1", "--warmup_steps", "1",
         "--eval_examples", "4"]


@pytest.fixture
def build(tmp_path, monkeypatch):
    monkeypatch.setenv("CN_BUILD_DIR", str(tmp_path))
    return tmp_path


def test_every_stage_runs_and_assembles_a_loadable_base(build):
    from diffusers import StableDiffusionPipeline

    assert pretrain_base.main(SMOKE) == 0
    folder = build / "pretrain" / "tiny-sd"
    pipeline = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    assert pipeline.vae.config.scaling_factor != pytest.approx(0.18215)  # measured on the trained VAE's latents
    assert json.loads((folder / "pretrain_config.json").read_text())["unet_steps"] == 3
    assert "| `vae_steps` | 3 |" in (folder / "README.md").read_text()


def _vae_weights(build_folder):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(build_folder / "pretrain" / "vae").state_dict()


def test_vae_stage_resumes_after_a_crash_with_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.setenv("CN_BUILD_DIR", str(tmp_path / "straight"))
    pretrain_base.main(SMOKE + ["--stage", "vae"])

    monkeypatch.setenv("CN_BUILD_DIR", str(tmp_path / "crashed"))
    real_fill_batch, calls = pretrain_base.fill_batch, []

    def crash_on_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_fill_batch(*args, **kwargs)

    monkeypatch.setattr(pretrain_base, "fill_batch", crash_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        pretrain_base.main(SMOKE + ["--stage", "vae"])
    assert not (tmp_path / "crashed" / "pretrain" / "vae").exists()  # no half-finished stage result
    monkeypatch.setattr(pretrain_base, "fill_batch", real_fill_batch)
    pretrain_base.main(SMOKE + ["--stage", "vae"])

    straight, resumed = _vae_weights(tmp_path / "straight"), _vae_weights(tmp_path / "crashed")
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


def test_random_crops_are_aligned_to_the_vae_stride():
    images = torch.arange(2 * 3 * 64 * 64, dtype=torch.float32).reshape(2, 3, 64, 64)
    crops = pretrain_base.random_crops(images, 32, torch.Generator().manual_seed(0))
    assert crops.shape == (2, 3, 32, 32)
    for image, crop in zip(images, crops):
        y, x = divmod(int((crop[0, 0, 0] - image[0, 0, 0]).item()), 64)
        assert y % 8 == 0 and x % 8 == 0
        assert torch.equal(image[:, y:y + 32, x:x + 32], crop)


def test_caption_token_table_has_every_colour_pair_and_the_empty_prompt(tiny_base):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_base, subfolder="tokenizer")
    table = pretrain_base.caption_token_table(tokenizer)
    colours = len(pretrain_base.COLOUR_NAMES)
    assert table.shape == (colours * colours + 1, tokenizer.model_max_length)
    row = 3 * colours + 5
    expected = tokenizer(pretrain_base.caption((3, 5)), padding="max_length",
                         max_length=tokenizer.model_max_length).input_ids
    assert table[row].tolist() == expected


def test_the_shipped_tiny_base_is_pretrained_complete_and_under_25_mb(build):
    assert is_complete_base(PRETRAINED_TINY_BASE)
    size = sum(f.stat().st_size for f in PRETRAINED_TINY_BASE.rglob("*") if f.is_file())
    assert size < 25 * 2**20
    card = (PRETRAINED_TINY_BASE / "README.md").read_text()
    assert "base colour accuracy" in card and "mean circle IoU" in card  # the evaluation's figures
    copy = ensure_tiny_base()
    assert copy == build / "tiny-sd" and (copy / "README.md").read_text() == card


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_the_shipped_family_bases_are_pretrained_and_load_as_upstream_loads_them(family):
    """Each shipped base loads with its pipeline's from_pretrained and each part's from_pretrained(subfolder=...),
    and its model card holds its evaluation's figures (what the base draws, and a ControlNet's IoU with and without)."""
    import diffusers
    import transformers

    from cnhelpers.course.recipes import FAMILY_BASES
    from cnhelpers.families import detect_family

    folder = FAMILY_BASES[family]
    assert detect_family(folder).name == family
    index = json.loads((folder / "model_index.json").read_text())
    getattr(diffusers, index["_class_name"]).from_pretrained(folder)
    for part, (library, name) in ((k, v) for k, v in index.items() if isinstance(v, list) and v[1]):
        loaded = getattr(diffusers if library == "diffusers" else transformers, name).from_pretrained(
            folder, subfolder=part)
        assert type(loaded).__name__ == name
    card = (folder / "README.md").read_text()
    assert "base colour accuracy" in card and "mean circle IoU" in card
    assert json.loads((folder / "pretrain_config.json").read_text())["family"] == family


def test_the_pretrained_sdxl_base_guides_from_the_empty_prompt_it_was_trained_on():
    """Its pipeline's unconditional branch is the empty prompt's encoding, as its dropped captions were in training,
    not the zeros of SDXL base 1.0's ``force_zeros_for_empty_prompt`` (with which its colours washed out)."""
    from diffusers import StableDiffusionXLPipeline

    from cnhelpers.course.recipes import FAMILY_BASES
    from cnhelpers.families.sdxl import encode_prompt_sdxl

    pipeline = StableDiffusionXLPipeline.from_pretrained(FAMILY_BASES["sdxl"])
    with torch.no_grad():
        _, negative, _, negative_pooled = pipeline.encode_prompt("red circle with blue background",
                                                                 do_classifier_free_guidance=True)
        empty, empty_pooled = encode_prompt_sdxl([""], [pipeline.tokenizer, pipeline.tokenizer_2],
                                                 [pipeline.text_encoder, pipeline.text_encoder_2])
    assert negative.abs().sum() > 0 and negative_pooled.abs().sum() > 0
    torch.testing.assert_close(negative, empty)
    torch.testing.assert_close(negative_pooled, empty_pooled)


def test_balanced_l1_does_not_reward_a_reconstruction_that_drops_a_thin_outline():
    from cnhelpers.course.fill import fill_example

    outline = torch.from_numpy(np.array(fill_example(0, 0, 64)["conditioning_image"])).permute(2, 0, 1)[None]
    outline = outline.float() / 127.5 - 1
    black = -torch.ones_like(outline)
    grey = torch.zeros_like(outline)  # no outline either, and wrong everywhere
    assert torch.nn.functional.l1_loss(black, outline) < 0.1  # plain L1: dropping the outline costs little
    assert pretrain_base.balanced_l1(black, outline) == pytest.approx(1.0)  # half the weight, each off by 2
    assert pretrain_base.balanced_l1(outline, outline) == 0
    assert pretrain_base.balanced_l1(black, outline) == pytest.approx(pretrain_base.balanced_l1(grey, outline))


def test_the_shipped_assets_stay_under_60_mb():
    assets = PRETRAINED_TINY_BASE.parent
    assert sum(f.stat().st_size for f in assets.rglob("*") if f.is_file()) < 60 * 2**20


def test_the_evaluation_prints_iou_split_by_placement_and_radius():
    breakdown = [{"group": "all", "n": 4, "with ControlNet": 0.9, "without ControlNet": 0.2},
                 {"group": "inside the frame", "n": 1, "with ControlNet": 0.95, "without ControlNet": 0.3},
                 {"group": "cut by the border", "n": 3, "with ControlNet": 0.88, "without ControlNet": 0.17},
                 {"group": "radius 0.08-0.16", "n": 0, "with ControlNet": None, "without ControlNet": None}]
    run = {"n": 4, "iou_with": 0.9, "iou_without": 0.2, "breakdown": breakdown}
    scores = {"controlnet": {"source": "cn", "placements": {"anywhere": run, "course": {**run, "iou_with": 0.8}}}}
    lines = pretrain_base.format_scores(scores)
    assert "  4 outlines anywhere in the frame: 0.900 / 0.200" in lines
    assert "  4 held-out outlines placed as the training data: 0.800 / 0.200" in lines
    assert "    cut by the border (3): 0.880 / 0.170" in lines
    assert "    inside the frame (1): 0.950 / 0.300" in lines
    assert "    radius 0.08-0.16 (0): -" in lines


def test_the_unet_stage_starts_from_the_base_that_unet_init_names(build, tiny_base):
    from diffusers import UNet2DConditionModel

    assert pretrain_base.main(SMOKE + ["--unet_init", str(tiny_base), "--unet_steps", "0"]) == 0
    start = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet").state_dict()
    trained = UNet2DConditionModel.from_pretrained(build / "pretrain" / "tiny-sd", subfolder="unet").state_dict()
    assert all(torch.equal(start[name], trained[name]) for name in start)  # no step taken: the start itself
    assert json.loads((build / "pretrain" / "tiny-sd" / "pretrain_config.json").read_text())["unet_init"] == str(tiny_base)


def test_a_unet_init_that_is_not_a_base_is_refused_in_one_line(build, tmp_path, capsys):
    assert pretrain_base.main(SMOKE + ["--stage", "unet", "--unet_init", str(tmp_path / "nothing")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "is not a complete base folder" in error and "leave it out" in error
    assert not (build / "pretrain" / "unet").exists()


def test_controlnet_scores_split_each_placement(tiny_base, tmp_path):
    from diffusers import ControlNetModel, UNet2DConditionModel

    from cnhelpers.course.fill import is_cut_by_border
    from cnhelpers.course.held_out import held_out_circles

    controlnet = tmp_path / "controlnet"
    ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")).save_pretrained(controlnet)
    scores = pretrain_base.controlnet_scores(tiny_base, controlnet, n=3, guidance_scale=3.0)
    assert list(scores["placements"]) == ["course", "anywhere"]
    for placement, result in scores["placements"].items():
        rows = {row["group"]: row for row in result["breakdown"]}
        assert rows["all"]["with ControlNet"] == pytest.approx(result["iou_with"])
        cut = rows["cut by the border"]["n"]
        assert cut == sum(is_cut_by_border(c) for c in held_out_circles(3, placement=placement))
    assert len(pretrain_base.format_scores({"controlnet": scores})) == 1 + 2 * 7


@pytest.mark.parametrize("family", ["sd3", "flux", "sdxl"])
def test_a_family_base_assembles_in_its_layout_and_loads_as_upstream_loads_it(build, family):
    """``--family``: SD's VAE and CLIP shared, the denoiser trained by the UNet stage's loop, the folder loading with
    the pipeline's from_pretrained, each part's from_pretrained(subfolder=...) and from_transformer / from_unet."""
    import diffusers
    import transformers

    from cnhelpers.families import detect_family

    argv = ["--family", family, "--num_latent_examples", "8", "--unet_steps", "2", "--unet_batch_size", "2",
            "--checkpoint_every", "1", "--warmup_steps", "1", "--notes", "Resumed once.", "--condition_vae_steps", "2",
            "--vae_batch_size", "2"]
    assert pretrain_base.main(argv) == 0
    folder = build / "pretrain" / family / f"tiny-{family}"
    card = (folder / "README.md").read_text()
    assert "\nResumed once.\n" in card and "| `notes` |" not in card  # the run's notes, not a recipe row
    assert detect_family(folder).name == family
    index = json.loads((folder / "model_index.json").read_text())
    pipeline = getattr(diffusers, index["_class_name"]).from_pretrained(folder)
    for part, (library, name) in ((k, v) for k, v in index.items() if isinstance(v, list) and v[1]):
        loaded = getattr(diffusers if library == "diffusers" else transformers, name).from_pretrained(
            folder, subfolder=part)
        assert type(loaded).__name__ == name
    trained = pretrain_base.load_state(build / "pretrain" / family / "denoiser-checkpoint.pt")
    assert trained["step"] == 2
    denoiser = pipeline.transformer if family != "sdxl" else pipeline.unet
    init = getattr(diffusers, type(denoiser).__name__).from_pretrained(
        build / "pretrain" / family / "init", subfolder="transformer" if family != "sdxl" else "unet")
    assert any(not torch.equal(a, b) for a, b in zip(denoiser.state_dict().values(), init.state_dict().values()))
    # (SD3: from_transformer's default of 12 copied blocks needs a transformer of 13 or more; the tiny one has 4)
    make = {"sd3": lambda: diffusers.SD3ControlNetModel.from_transformer(
                denoiser, num_layers=denoiser.config.num_layers - 1),
            # as upstream's train_controlnet_flux.py calls it: from_transformer's own head defaults are FLUX.1's
            "flux": lambda: diffusers.FluxControlNetModel.from_transformer(
                denoiser, attention_head_dim=denoiser.config.attention_head_dim,
                num_attention_heads=denoiser.config.num_attention_heads, num_layers=denoiser.config.num_layers,
                num_single_layers=2),
            "sdxl": lambda: diffusers.ControlNetModel.from_unet(denoiser)}[family]
    assert make() is not None
    if family != "sdxl":  # the latents' statistics were measured: not the real VAEs' values
        assert pipeline.vae.config.shift_factor not in (0.0609, 0.1159, None)
    # SD3's and Flux's ControlNets read their condition through the VAE: theirs learned the conditions too
    sd_vae = diffusers.AutoencoderKL.from_pretrained(PRETRAINED_TINY_BASE / "vae").state_dict()
    same = all(torch.equal(a, sd_vae[k]) for k, a in pipeline.vae.state_dict().items())
    assert same == (family == "sdxl")
    assert pipeline.text_encoder.config.hidden_size == 64  # the tiny SD base's CLIP
