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
