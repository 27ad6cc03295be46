"""Inference: loading a ControlNet pipeline, clear errors, seeded generation, 'without' = the base, fp16 fixes."""

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionPipeline, UNet2DConditionModel, UniPCMultistepScheduler

from cnhelpers.course.controlnet import ensure_controlnet
from cnhelpers.course.evaluation import evaluate_breakdown, evaluate_control, iou_by_group
from cnhelpers.course.held_out import held_out_circles, held_out_examples
from cnhelpers.hub import HubUnavailableError
from cnhelpers.inference import (
    active_control_steps,
    decode_in_float32,
    generate,
    is_black,
    load_controlnet_pipeline,
)
from cnhelpers.loading import resolve_controlnet

pytestmark = pytest.mark.colab

STEPS = dict(num_inference_steps=2)


@pytest.fixture(scope="module")
def untrained_controlnet(tiny_base, tmp_path_factory):
    """A ControlNet copied from the tiny UNet: its zero convolutions still output zero."""
    path = tmp_path_factory.mktemp("controlnets") / "untrained"
    ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def active_controlnet(untrained_controlnet, tmp_path_factory):
    """The same ControlNet with random zero convolutions, so that its residuals are not zero."""
    controlnet = ControlNetModel.from_pretrained(untrained_controlnet)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if "zero_conv" in name or "controlnet_mid_block" in name or "controlnet_down_blocks" in name:
                parameter.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("controlnets") / "active"
    controlnet.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipeline(tiny_base, active_controlnet):
    return load_controlnet_pipeline(tiny_base, active_controlnet)


def as_array(images):
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def test_pipeline_generates_fill_sized_images_in_two_steps(pipeline):
    images = generate(pipeline, held_out_examples(2, resolution=64), seed=0, **STEPS)
    assert [image.size for image in images] == [(64, 64), (64, 64)]
    assert isinstance(pipeline.scheduler, UniPCMultistepScheduler)
    assert pipeline.safety_checker is None


def test_each_image_has_its_own_seed_whatever_the_batch(pipeline):
    examples = held_out_examples(2)
    together = generate(pipeline, examples, seed=7, batch_size=2, **STEPS)
    one_by_one = generate(pipeline, examples, seed=7, batch_size=1, **STEPS)
    assert np.abs(as_array(together) - as_array(one_by_one)).max() <= 1
    assert np.abs(as_array(together[:1]) - as_array(together[1:2])).max() > 1


def test_scale_zero_is_the_base_model_alone(pipeline):
    examples = held_out_examples(2)
    components = {k: v for k, v in pipeline.components.items() if k not in ("controlnet", "image_encoder")}
    base = StableDiffusionPipeline(**components, requires_safety_checker=False)
    base.set_progress_bar_config(disable=True)
    alone = base([e["text"] for e in examples], generator=[torch.Generator().manual_seed(3 + i) for i in range(2)],
                 **STEPS).images
    without = generate(pipeline, examples, seed=3, controlnet_conditioning_scale=0.0, **STEPS)
    with_controlnet = generate(pipeline, examples, seed=3, controlnet_conditioning_scale=1.0, **STEPS)
    assert np.abs(as_array(without) - as_array(alone)).max() <= 1
    assert np.abs(as_array(with_controlnet) - as_array(alone)).max() > 1


def test_multicontrolnet_takes_one_condition_per_net(tiny_base, active_controlnet):
    multi = load_controlnet_pipeline(tiny_base, [active_controlnet, active_controlnet])
    a, b = held_out_examples(2)
    images = generate(multi, [a["text"]], [[a["conditioning_image"], b["conditioning_image"]]],
                      controlnet_conditioning_scale=[1.0, 0.5], **STEPS)
    assert len(multi.controlnet.nets) == 2 and images[0].size == (64, 64)


def test_evaluate_control_tables_with_and_without(tiny_base, untrained_controlnet):
    untrained = load_controlnet_pipeline(tiny_base, untrained_controlnet)
    table = evaluate_control(untrained, n=2, seed=10_000, **STEPS)
    assert list(table.index) == ["with ControlNet", "without ControlNet"]
    assert list(table.columns) == ["iou", "circle_colour_error", "background_colour_error"]
    assert ((table >= 0) & (table <= 1)).all().all()
    # zero convolutions: an untrained ControlNet changes nothing, so both rows agree
    assert np.allclose(table.loc["with ControlNet"], table.loc["without ControlNet"], atol=0.01)


def test_evaluate_breakdown_splits_anywhere_outlines_by_placement_and_radius(tiny_base, active_controlnet):
    from cnhelpers.course.fill import is_cut_by_border
    from cnhelpers.course.metrics import RADIUS_BINS

    n = 6
    table = evaluate_breakdown(load_controlnet_pipeline(tiny_base, active_controlnet), n=n, **STEPS)
    radius_groups = [f"radius {low:.2f}-{high:.2f}" for low, high in RADIUS_BINS]
    assert list(table.index) == ["all", "inside the frame", "cut by the border"] + radius_groups
    assert list(table.columns) == ["n", "with ControlNet", "without ControlNet"]
    cut = sum(is_cut_by_border(c) for c in held_out_circles(n, placement="anywhere"))
    assert table.loc["cut by the border", "n"] == cut and table.loc["inside the frame", "n"] == n - cut
    assert table.loc[radius_groups, "n"].sum() == n
    scores = table[["with ControlNet", "without ControlNet"]].dropna()
    assert ((scores >= 0) & (scores <= 1)).all().all()
    overall = evaluate_control(load_controlnet_pipeline(tiny_base, active_controlnet), n=n, placement="anywhere",
                               **STEPS)
    assert table.loc["all", "with ControlNet"] == pytest.approx(overall.loc["with ControlNet", "iou"])


def test_held_out_circles_are_those_the_examples_draw():
    from cnhelpers.course.fill import draw_circle

    for placement in ("course", "anywhere"):
        example, circle = held_out_examples(1, placement=placement)[0], held_out_circles(1, placement=placement)[0]
        assert example["text"] == circle.text
        assert np.array_equal(np.asarray(example["conditioning_image"]), np.asarray(draw_circle(circle, 64)[1]))


def test_a_missing_controlnet_folder_says_how_to_make_it_without_naming_a_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match="(?s)does not exist.*Train one into it with `python -m cnhelpers.train") \
            as error:
        resolve_controlnet(tmp_path / "controlnet-tiny")
    assert "notebook" not in str(error.value)


def test_a_folder_without_weights_is_not_a_controlnet(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="not a ControlNet in diffusers format"):
        resolve_controlnet(tmp_path)


def test_a_hub_id_offline_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE"):
        resolve_controlnet("someone/controlnet-that-is-not-cached")


def test_a_controlnet_of_another_base_is_refused(tiny_base, tmp_path):
    ControlNetModel(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D",) * 2,
                    cross_attention_dim=32, layers_per_block=1, attention_head_dim=8,
                    norm_num_groups=32).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not fit the base model"):
        load_controlnet_pipeline(tiny_base, tmp_path)


def test_ensure_controlnet_keeps_an_existing_one_and_never_trains_sd15(untrained_controlnet, tmp_path):
    assert ensure_controlnet("tiny", untrained_controlnet) == untrained_controlnet
    with pytest.raises(FileNotFoundError, match="sd15"):
        ensure_controlnet("sd15", tmp_path / "missing")


def test_nan_pixels_become_a_black_image_and_float32_decoding_matches(pipeline):
    with np.errstate(invalid="ignore"):
        nan_image = pipeline.image_processor.postprocess(torch.full((1, 3, 8, 8), float("nan")))[0]
    assert is_black(nan_image)
    example = held_out_examples(1)[0]
    latents = pipeline(example["text"], example["conditioning_image"], generator=torch.Generator().manual_seed(0),
                       output_type="latent", **STEPS).images
    pipeline.vae.to(torch.bfloat16)
    try:
        decoded = decode_in_float32(pipeline, latents)
        assert pipeline.vae.dtype == torch.bfloat16  # restored for the pipeline's own calls
    finally:
        pipeline.vae.to(torch.float32)
    direct = pipeline(example["text"], example["conditioning_image"], generator=torch.Generator().manual_seed(0),
                      **STEPS).images
    assert np.abs(as_array(decoded) - as_array(direct)).max() <= 1
    assert not is_black(decoded[0])


@pytest.mark.parametrize("start, end", [(0.0, 1.0), (0.0, 0.5), (0.5, 1.0)])
def test_active_control_steps_are_those_the_pipeline_scales_up(pipeline, start, end):
    scales = []
    hook = pipeline.controlnet.register_forward_pre_hook(
        lambda module, args, kwargs: scales.append(kwargs["conditioning_scale"]), with_kwargs=True)
    try:
        generate(pipeline, held_out_examples(1), num_inference_steps=4, control_guidance_start=start,
                 control_guidance_end=end)
    finally:
        hook.remove()
    assert [i for i, scale in enumerate(scales) if scale > 0] == active_control_steps(4, start, end)


def test_iou_by_group_is_the_with_controlnet_column_of_the_breakdown(tiny_base, active_controlnet):
    n, pipe = 4, load_controlnet_pipeline(tiny_base, active_controlnet)
    table = evaluate_breakdown(pipe, n=n, **STEPS)
    examples, circles = held_out_examples(n, placement="anywhere"), held_out_circles(n, placement="anywhere")
    by_group = iou_by_group(pipe, examples, circles, seed=10_000, guidance_scale=7.5, **STEPS)
    assert list(by_group) == list(table.index)
    assert all(by_group[g] == table.loc[g, "with ControlNet"] or (by_group[g] is None and table.loc[g, "n"] == 0)
               for g in by_group)


def test_loading_the_pipeline_shows_no_progress_bar_and_leaves_diffusers_setting_as_it_was(tiny_base,
                                                                                       active_controlnet, capsys):
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.enable_progress_bar()
    load_controlnet_pipeline(tiny_base, active_controlnet)
    assert "Loading pipeline components" not in capsys.readouterr().err
    assert diffusers_logging.is_progress_bar_enabled()
    load_controlnet_pipeline(tiny_base, active_controlnet, progress_bar=True)
    assert "Loading pipeline components" in capsys.readouterr().err
