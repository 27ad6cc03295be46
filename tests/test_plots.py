"""Pictures leave what they draw as it was."""

import matplotlib
import pytest

matplotlib.use("Agg")

from diffusers import DDPMScheduler  # noqa: E402

from cnhelpers.course.plots import plot_min_snr_weights  # noqa: E402

pytestmark = pytest.mark.colab


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

    from cnhelpers.course.plots import draw_controlnet, residual_shapes
    from cnhelpers.course.tiny_bases import sd15_unet_and_controlnet_on_meta

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


def test_round_log_values_are_the_1_2_5_steps_of_the_range():
    from cnhelpers.course.widgets import round_log_values

    assert round_log_values(0.1, 100) == [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]
    assert round_log_values(0.3, 7) == [0.5, 1, 2, 5]


def test_a_widget_is_displayed_with_its_picture_and_a_plain_text_beside_its_view():
    import base64

    import ipywidgets as widgets

    from cnhelpers.course.widgets import WIDGET_VIEW, WithStaticForm

    slider = widgets.IntSlider(value=3, description="n")
    bundle = WithStaticForm(slider, b"\x89PNG fake", "n = 3")._repr_mimebundle_()
    assert bundle[WIDGET_VIEW]["model_id"] == slider.model_id
    assert base64.b64decode(bundle["image/png"]) == b"\x89PNG fake" and bundle["text/plain"] == "n = 3"


def test_the_gamma_slider_reads_round_values_and_each_step_redraws_its_picture():
    from cnhelpers.course.plots import min_snr_widget

    widget = min_snr_widget(DDPMScheduler(), gamma=5.0)
    slider, picture = widget.children
    assert slider.label == "5" and [label for label, _ in slider.options][:4] == ["0.1", "0.2", "0.5", "1"]
    assert widget.picture == picture.value and "γ = 5" in widget.text  # the static form: the default's figure
    seen = {picture.value}
    for value in (10.0, 20.0, 0.1):
        slider.value = value
        seen.add(picture.value)
    assert len(seen) == 4 and slider.label == "0.1"


def test_the_live_loss_plot_redraws_an_image_widget():
    from cnhelpers.course.plots import LiveLossPlot

    plot = LiveLossPlot(total_steps=20, every=10)
    assert not plot.picture.value
    plot({"step": 10, "loss": 0.5})
    first = plot.picture.value
    plot({"step": 20, "loss": 0.25})
    assert bytes(first).startswith(b"\x89PNG") and plot.picture.value != first
