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
