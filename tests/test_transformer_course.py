"""Notebook 08's machinery: the residual-reuse rule it draws against the transformer's own additions, and a
ControlNet of a transformer family through the course's inference and held-out scoring (the base family's pipeline,
ControlNet class and sampler)."""

import pytest
import torch

from cnhelpers.course.anatomy import measured_residual_reuse
from cnhelpers.course.plots import residual_for_block

pytestmark = pytest.mark.colab


@pytest.fixture(scope="module")
def sd3_base(tmp_path_factory):
    from cnhelpers.course.tiny_transformers import build_tiny_sd3_base

    return build_tiny_sd3_base(tmp_path_factory.mktemp("models") / "tiny-sd3", seed=0)


def test_the_drawn_sd3_rule_is_what_the_transformer_adds():
    from diffusers import SD3Transformer2DModel

    from cnhelpers.course.tiny_transformers import TINY_SD3_TRANSFORMER_CONFIG

    config = dict(TINY_SD3_TRANSFORMER_CONFIG, num_layers=6)
    transformer = SD3Transformer2DModel(**config)
    inputs = dict(hidden_states=torch.randn(1, 4, 8, 8), timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, 5, config["joint_attention_dim"]),
                  pooled_projections=torch.randn(1, config["pooled_projection_dim"]))
    for residuals in (1, 2, 4, 5, 6):
        measured = measured_residual_reuse(transformer, residuals, inputs)
        assert measured == [residual_for_block(b, 6, residuals, "sd3") for b in range(6)], residuals
    # 6/4 = 1.5 blocks a residual: block 4 adds int(4 / 1.5) = 2, and the last block none, so residual 3 is unused
    assert measured_residual_reuse(transformer, 4, inputs) == [0, 0, 1, 2, 2, None]


def test_the_flux_rule_rounds_the_interval_up():
    # diffusers' FluxTransformer2DModel: index_block // int(np.ceil(blocks / residuals))
    assert [residual_for_block(b, 24, 7, "flux") for b in (0, 3, 4, 22, 23)] == [0, 0, 1, 5, 5]
    assert [residual_for_block(b, 24, 7, "sd3") for b in (0, 3, 4, 22, 23)] == [0, 0, 1, 6, None]


def test_a_transformer_controlnet_scores_through_the_course_inference(sd3_base, tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3ControlNetModel, SD3Transformer2DModel

    from cnhelpers.course.evaluation import held_out_scores
    from cnhelpers.course.held_out import held_out_examples
    from cnhelpers.families.sd3 import FAMILY
    from cnhelpers.inference import load_controlnet_pipeline

    transformer = SD3Transformer2DModel.from_pretrained(sd3_base, subfolder="transformer")
    FAMILY.make_controlnet(transformer).save_pretrained(tmp_path / "controlnet")
    pipeline = load_controlnet_pipeline(sd3_base, tmp_path / "controlnet")
    assert type(pipeline).__name__ == "StableDiffusion3ControlNetPipeline"
    assert isinstance(pipeline.controlnet, SD3ControlNetModel)
    assert isinstance(pipeline.scheduler, FlowMatchEulerDiscreteScheduler)  # not UniPC, the UNet families' sampler
    examples = held_out_examples(2, resolution=64)
    scores = held_out_scores(pipeline, examples, 0, num_inference_steps=2, guidance_scale=1.0,
                             runs=(("with", 1.0), ("without", 0.0)), max_sequence_length=16)
    assert [len(scores["with"]), len(scores["without"])] == [2, 2]
    # a new ControlNet's residuals are zero: its scale changes no pixel
    assert scores["with"] == scores["without"]
