"""Pictures leave what they draw as it was."""

import matplotlib

matplotlib.use("Agg")

from diffusers import DDPMScheduler  # noqa: E402

from cnhelpers.plots import plot_min_snr_weights  # noqa: E402


def test_the_min_snr_plot_leaves_the_callers_scheduler_as_it_was():
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    figure = plot_min_snr_weights(scheduler)
    assert scheduler.config.prediction_type == "v_prediction"
    epsilon, velocity = figure.axes[:2]
    assert epsilon.get_title() == "epsilon" and velocity.get_title() == "v_prediction"
    # the two panels really differ: min(SNR, γ)/SNR vs min(SNR, γ)/(SNR + 1) at the easy end
    assert epsilon.lines[0].get_ydata()[0] != velocity.lines[0].get_ydata()[0]


def test_the_drawn_residual_shapes_are_the_controlnets_real_ones(tiny_base):
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from cnhelpers.base_models import sd15_unet_and_controlnet_on_meta
    from cnhelpers.plots import draw_controlnet, residual_shapes

    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    controlnet = ControlNetModel.from_unet(unet)
    down, mid = controlnet(torch.randn(1, 4, 8, 8), torch.tensor([10]), encoder_hidden_states=torch.randn(1, 77, 64),
                           controlnet_cond=torch.rand(1, 3, 64, 64), return_dict=False)
    assert residual_shapes(controlnet, 64) == [tuple(r.shape[1:]) for r in (*down, mid)]
    _, sd15 = sd15_unet_and_controlnet_on_meta()
    shapes = residual_shapes(sd15, 512)
    assert len(shapes) == 13 and shapes[0] == (320, 64, 64) and shapes[-1] == (1280, 8, 8)
    figure = draw_controlnet(sd15, 512)
    assert "13 residuals" in " ".join(t.get_text() for t in figure.axes[0].texts)
