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


# --------------------------------------------------------------------------------------------------
# Notebook 05 (Flax on TPUs)
# --------------------------------------------------------------------------------------------------

def check_min_snr_loss(loss_fn) -> bool:
    """Exercise (notebook 05): ``loss_fn(prediction, target, weights)`` weights each sample's error once.

    ``prediction`` and ``target`` are (B, C, H, W), ``weights`` is (B,); the answer must equal the mean
    over samples of ``weights[i] * mean((prediction[i] - target[i]) ** 2)``. It is tried where the
    latent width equals the batch (where a plain ``(B, C, H, W) * (B,)`` broadcast runs but weights
    columns instead of samples) and where it does not (where that broadcast fails).
    """
    import numpy as np

    rng = np.random.default_rng(5)
    for batch, width in ((8, 8), (4, 8), (2, 64)):
        prediction = rng.standard_normal((batch, 4, 8, width)).astype(np.float32)
        target = rng.standard_normal((batch, 4, 8, width)).astype(np.float32)
        weights = rng.uniform(0.05, 1.0, batch).astype(np.float32)
        expected = float(np.mean(weights * ((prediction - target) ** 2).mean(axis=(1, 2, 3))))
        try:
            got = float(np.asarray(loss_fn(prediction, target, weights)))
        except Exception as error:
            return verdict(False, "", f"With a batch of {batch} and latents {width} wide your function raised "
                           f"{type(error).__name__}: {error}. Reduce each sample's error to one number before "
                           "weighting it, or give the weights shape (B, 1, 1, 1).")
        if not np.isclose(got, expected, rtol=1e-4, atol=1e-6):
            return verdict(False, "", f"With a batch of {batch} and latents {width} wide you get {got:.5f}, but "
                           f"weighting each sample gives {expected:.5f}. A (B, C, H, W) * (B,) product lines the "
                           "weights up with the last axis (width), not with the samples.")
    return verdict(True, "Each sample's mean error is weighted by its own Min-SNR weight, for any batch size "
                   "and latent size.", "")
