"""A ControlNet made from the UNet: what is copied, the zero convolutions, loading weights (notebook 02)."""

import pytest
import torch

from cnhelpers.course.anatomy import (
    condition_share,
    copied_and_new_parameters,
    demo_inputs,
    gradient_flow_steps,
    parameter_groups,
    zero_convolution_check,
    zero_convolutions,
)
from cnhelpers.course.tiny_bases import sd15_unet_and_controlnet_on_meta
from cnhelpers.course.fill import fill_example
from cnhelpers.families.sd import check_controlnet_fits, init_conditioning_embedding, make_controlnet
from cnhelpers.losses import predict_noise
from cnhelpers.model_info import conditioning_downsampling, count_parameters, vae_scale_factor

pytestmark = pytest.mark.colab


@pytest.fixture(scope="module")
def unet(tiny_base):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")


@pytest.fixture
def controlnet(unet):
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(unet)


@pytest.fixture(scope="module")
def inputs(unet):
    return demo_inputs(unet, resolution=64, batch_size=1, seed=0, sequence_length=8)


def _top_level(names):
    return {name.split(".")[0] for name in names}


def test_from_unet_copies_the_encoder_and_adds_zero_convolutions(unet, controlnet):
    kinds = copied_and_new_parameters(unet, controlnet)
    assert _top_level(kinds["copied"]) == {"conv_in", "time_embedding", "down_blocks", "mid_block"}
    assert _top_level(kinds["new_zero"]) == {"controlnet_down_blocks", "controlnet_mid_block",
                                             "controlnet_cond_embedding"}
    assert all(n.startswith("controlnet_cond_embedding.conv_out.") for n in kinds["new_zero"]
               if n.startswith("controlnet_cond_embedding"))
    assert _top_level(kinds["new"]) == {"controlnet_cond_embedding"}
    assert _top_level(kinds["unet_only"]) == {"up_blocks", "conv_norm_out", "conv_out"}
    assert kinds["changed"] == []


def test_a_changed_copy_is_reported_as_changed(unet, controlnet):
    with torch.no_grad():
        controlnet.mid_block.resnets[0].conv1.weight.add_(1.0)
    kinds = copied_and_new_parameters(unet, controlnet)
    assert kinds["changed"] == ["mid_block.resnets.0.conv1.weight"]


def test_parameter_groups_add_up_to_both_models(unet, controlnet):
    rows = parameter_groups(unet, controlnet)
    in_controlnet = sum(count for _, kind, count in rows if kind != "unet_only")
    in_unet = sum(count for _, kind, count in rows if kind in ("copied", "unet_only"))
    assert in_controlnet == count_parameters(controlnet)
    assert in_unet == count_parameters(unet)
    # the zero conv that ends the conditioning embedding: 3x3 from its last 256 channels to the UNet's first
    channels = unet.config.block_out_channels[0]
    assert ("controlnet_cond_embedding.conv_out", "new_zero", 256 * channels * 9 + channels) in rows


def test_sd15_counts_on_the_meta_device_without_weights():
    unet, controlnet = sd15_unet_and_controlnet_on_meta()
    assert count_parameters(unet) == 859_520_964
    assert count_parameters(controlnet) == 361_279_120
    assert {p.device.type for p in controlnet.parameters()} == {"meta"}
    kinds = copied_and_new_parameters(unet, controlnet)
    # by name on the meta device: the zero convolutions (notebook 02 colours them red, as on the tiny model)
    assert _top_level(kinds["new_zero"]) == {"controlnet_cond_embedding", "controlnet_down_blocks",
                                             "controlnet_mid_block"}
    assert _top_level(kinds["new"]) == {"controlnet_cond_embedding"}
    assert all(".conv_out." in name for name in kinds["new_zero"] if name.startswith("controlnet_cond_embedding"))


def test_the_zero_initialised_names_are_the_new_zero_valued_parameters(unet, controlnet):
    from cnhelpers.course.anatomy import ZERO_INITIALISED

    unet_names = {name for name, _ in unet.named_parameters()}
    new = [(name, p) for name, p in controlnet.named_parameters() if name not in unet_names]
    by_name = {name for name, _ in new if name.startswith(ZERO_INITIALISED)}
    assert by_name and by_name == {name for name, p in new if not p.any()}


def test_the_zero_convolutions_are_found_by_their_values(controlnet):
    assert zero_convolutions(controlnet) == [
        "controlnet_cond_embedding.conv_out",
        *[f"controlnet_down_blocks.{i}" for i in range(len(controlnet.controlnet_down_blocks))],
        "controlnet_mid_block",
    ]


def test_at_initialisation_the_unet_output_is_unchanged(unet, controlnet, inputs):
    result = zero_convolution_check(unet, controlnet, inputs)
    assert result["max_residual"] == 0.0 and result["identical"]
    assert "exactly zero" in result["verdict"]


def outlines(n=4):
    import numpy as np

    return torch.stack([torch.from_numpy(np.asarray(fill_example(seed=10_000, index=i, resolution=64)
                                                    ["conditioning_image"].convert("RGB"), dtype=np.float32) / 255)
                        .permute(2, 0, 1) for i in range(n)])


def test_the_default_conditioning_embedding_all_but_erases_the_outline_and_kaiming_keeps_it(controlnet):
    torch.manual_seed(0)
    default = condition_share(controlnet.controlnet_cond_embedding, outlines())
    init_conditioning_embedding(controlnet, "kaiming")
    kaiming = condition_share(controlnet.controlnet_cond_embedding, outlines())
    assert len(default) == len(kaiming) == 1 + len(controlnet.controlnet_cond_embedding.blocks)
    assert default[0] > 0.3 and default[-1] < 0.01  # each default layer shrinks the outline's part of the features
    assert min(kaiming) > 0.5


def test_a_kaiming_conditioning_embedding_still_starts_as_the_base(unet, controlnet, inputs):
    torch.manual_seed(0)
    init_conditioning_embedding(controlnet, "kaiming")
    embedding = controlnet.controlnet_cond_embedding
    assert all(torch.all(conv.bias == 0) for conv in (embedding.conv_in, *embedding.blocks))
    assert torch.all(controlnet.controlnet_cond_embedding.conv_out.weight == 0)
    result = zero_convolution_check(unet, controlnet, inputs)
    assert result["max_residual"] == 0.0 and result["identical"]


def test_an_unknown_conditioning_embedding_init_is_refused(controlnet):
    with pytest.raises(ValueError, match="choose one of default, kaiming"):
        init_conditioning_embedding(controlnet, "xavier")


def test_a_nonzero_zero_convolution_changes_the_unet_output(unet, controlnet, inputs):
    with torch.no_grad():
        controlnet.controlnet_mid_block.bias.fill_(0.5)
    result = zero_convolution_check(unet, controlnet, inputs)
    assert result["max_residual"] == 0.5 and not result["identical"]
    assert "changes" in result["verdict"]


def test_the_gradient_reaches_one_zero_layer_deeper_per_step(unet, controlnet, inputs):
    before = {k: v.clone() for k, v in controlnet.state_dict().items()}
    history = gradient_flow_steps(unet, controlnet, inputs, steps=3)
    zero_convs, encoder, cond_out, cond_rest = (
        "zero convolutions (controlnet_down_blocks, controlnet_mid_block)",
        "copied encoder (conv_in, time_embedding, down_blocks, mid_block)",
        "conditioning embedding: conv_out (zero)", "conditioning embedding: other layers")
    first, second, third = history
    assert first[zero_convs] > 0 and first[encoder] == first[cond_out] == first[cond_rest] == 0
    assert first["max_residual"] == 0
    assert second[encoder] > 0 and second[cond_out] > 0 and second[cond_rest] == 0
    assert second["max_residual"] > 0
    assert third[cond_rest] > 0
    assert all(torch.equal(before[k], v) for k, v in controlnet.state_dict().items())  # trained a copy


def test_saved_weights_load_back_as_controlnet_model_name_or_path_does(unet, controlnet, tmp_path):
    with torch.no_grad():
        controlnet.controlnet_mid_block.bias.fill_(0.25)  # as if trained
    controlnet.save_pretrained(tmp_path / "controlnet")
    loaded = make_controlnet(unet, tmp_path / "controlnet")
    assert loaded.state_dict().keys() == controlnet.state_dict().keys()
    assert all(torch.equal(v, controlnet.state_dict()[k]) for k, v in loaded.state_dict().items())
    fresh = make_controlnet(unet, None)
    assert copied_and_new_parameters(unet, fresh)["changed"] == []
    assert not fresh.controlnet_mid_block.bias.detach().any()


@pytest.mark.parametrize("channels, factor", [((16, 32, 96, 256), 8), ((16, 32, 96), 4), ((16, 32, 64, 96, 256), 16)])
def test_conditioning_downsampling_is_two_per_extra_entry(channels, factor):
    assert conditioning_downsampling(channels) == factor


def test_tiny_vae_factor_is_8(tiny_base):
    from diffusers import AutoencoderKL

    assert vae_scale_factor(AutoencoderKL.from_pretrained(tiny_base, subfolder="vae")) == 8


def test_a_conditioning_embedding_that_downsamples_4x_fails_in_the_forward_pass(unet, inputs):
    from diffusers import ControlNetModel

    wrong = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 96))
    with pytest.raises(RuntimeError, match="must match the size of tensor b"):
        predict_noise(unet, wrong, inputs)
    with pytest.raises(ValueError, match="shrinks the conditioning image 4x .* but the VAE shrinks images 8x"):
        check_controlnet_fits(wrong, unet, vae_factor=8)


def test_a_controlnet_for_another_base_is_refused(unet, controlnet):
    from diffusers import ControlNetModel, UNet2DConditionModel

    check_controlnet_fits(controlnet, unet, vae_factor=8)  # made from this UNet: fits
    other = UNet2DConditionModel(**{**unet.config, "block_out_channels": (32, 32)})
    with pytest.raises(ValueError, match=r"its block_out_channels is \(32, 32\), the base UNet's is \[64, 64\]"):
        check_controlnet_fits(ControlNetModel.from_unet(other), unet, vae_factor=8)



def test_conditioning_size_check_accepts_the_right_answer_and_explains_wrong_ones(capsys):
    from cnhelpers.course.checks import check_conditioning_size

    assert check_conditioning_size(16, 1024)
    assert not check_conditioning_size(8, 512)
    out = capsys.readouterr().out
    assert "✅ Correct" in out and "stride-2 convolution" in out and "must equal 64" in out
