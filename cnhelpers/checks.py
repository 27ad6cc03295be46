"""Self-checks for the notebooks' exercises: each returns True or False and prints why."""

from __future__ import annotations


def verdict(correct: bool, right: str, wrong: str) -> bool:
    """Print a clear message for a right or a wrong answer, and return whether it was right."""
    print(("✅ Correct. " + right) if correct else ("❌ Not yet. " + wrong))
    return bool(correct)


def check_latent_shape(answer, resolution: int = 64, latent_channels: int = 4, vae_scale_factor: int = 8) -> bool:
    """Exercise (notebook 00): the shape of one image's latents, as a tuple (channels, height, width)."""
    expected = (latent_channels, resolution // vae_scale_factor, resolution // vae_scale_factor)
    return verdict(
        tuple(answer) == expected,
        f"A {resolution} px image becomes {expected}: the VAE shrinks each side {vae_scale_factor}x "
        f"into {latent_channels} channels.",
        f"You answered {tuple(answer)}. Divide the side by the VAE factor ({vae_scale_factor}) and remember the "
        "latent channels.",
    )


# --- notebook 03: the training loop ---------------------------------------------------------------


def check_min_snr_weight(answer: float, noise_scheduler, timestep: int, snr_gamma: float) -> bool:
    """Exercise (notebook 03): the Min-SNR weight of one timestep, for the scheduler's prediction type."""
    import torch

    from .training import min_snr_weights

    expected = float(min_snr_weights(noise_scheduler, torch.tensor([timestep]), snr_gamma)[0])
    return verdict(
        abs(float(answer) - expected) <= 1e-3 * max(1.0, abs(expected)),
        f"The weight at t={timestep} is {expected:.4f}.",
        f"You answered {float(answer):.4f}. Compute SNR(t) = ᾱ_t / (1 - ᾱ_t) from "
        "noise_scheduler.alphas_cumprod[t], then min(SNR, γ) / SNR for epsilon (or / (SNR + 1) for v-prediction).",
    )


# --- notebook 06: inference and control fidelity --------------------------------------------------


def check_shifted_disc_iou(answer: float) -> bool:
    """Exercise (notebook 06): the IoU of two equal discs whose centres are one radius apart."""
    import math

    # The lens two discs of radius r share, centres d apart: 2r²·acos(d/2r) − (d/2)·√(4r² − d²); here d = r.
    lens = 2 * math.acos(0.5) - 0.5 * math.sqrt(3)  # in units of r²
    expected = lens / (2 * math.pi - lens)
    return verdict(
        abs(float(answer) - expected) <= 0.01,
        f"The IoU is {expected:.3f}: a circle of the right size, one radius off, keeps only about a quarter of "
        "the score. IoU punishes misplacement hard, which is why it measures control.",
        f"You answered {float(answer):.3f}. Intersection: the lens the two discs share; union: both areas minus "
        "the lens. With pixel masks, make the discs large (r = 100 px) and shift one by exactly r.",
    )
