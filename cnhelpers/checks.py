"""Self-checks for the notebooks' exercises: each returns True or False and prints why."""

from __future__ import annotations

from .losses import min_snr_weights


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

    expected = float(min_snr_weights(noise_scheduler, torch.tensor([timestep]), snr_gamma)[0])
    return verdict(
        abs(float(answer) - expected) <= 1e-3 * max(1.0, abs(expected)),
        f"The weight at t={timestep} is {expected:.4f}.",
        f"You answered {float(answer):.4f}. Compute SNR(t) = ᾱ_t / (1 - ᾱ_t) from "
        "noise_scheduler.alphas_cumprod[t], then min(SNR, γ) / SNR for epsilon (or / (SNR + 1) for v-prediction).",
    )


# --- 01_dataset_transforms ---------------------------------------------------------------------------

def check_transform_answer(pixel_values_shape, pixel_values_range, conditioning_range, resolution: int = 512) -> bool:
    """Exercise (notebook 01): a 768 x 512 (width x height) photo goes through the training transforms at
    ``resolution``. Give the shape of its ``pixel_values`` tensor, and the (min, max) value range of
    ``pixel_values`` and of ``conditioning_pixel_values``."""
    shape_ok = tuple(pixel_values_shape) == (3, resolution, resolution)
    pixel_ok = tuple(pixel_values_range) == (-1, 1)
    conditioning_ok = tuple(conditioning_range) == (0, 1)
    hints = []
    if not shape_ok:
        hints.append(f"shape {tuple(pixel_values_shape)}: Resize({resolution}) scales the SHORT side to {resolution} "
                     f"(768 x 512 -> {768 * resolution // 512} x {resolution}), then CenterCrop({resolution}) keeps "
                     "a square; ToTensor puts channels first")
    if not pixel_ok:
        hints.append(f"pixel_values range {tuple(pixel_values_range)}: Normalize([0.5], [0.5]) maps [0, 1] to ...?")
    if not conditioning_ok:
        hints.append(f"conditioning range {tuple(conditioning_range)}: the conditioning transform has no Normalize")
    return verdict(
        shape_ok and pixel_ok and conditioning_ok,
        f"The crop gives (3, {resolution}, {resolution}); targets are in [-1, 1] for the VAE, conditioning images "
        "stay in [0, 1].",
        "; ".join(hints) + ".",
    )


# --- 02_controlnet_from_unet -------------------------------------------------------------------------

def check_conditioning_size(downsampling, conditioning_side, conditioning_embedding_out_channels=(16, 32, 64, 128, 256),
                            latent_side: int = 64) -> bool:
    """Exercise (notebook 02): for a ControlNet with these ``conditioning_embedding_out_channels``, how many
    times does the conditioning embedding shrink the conditioning image, and what side (in pixels) must the
    conditioning image have so that its embedding matches ``latent_side`` x ``latent_side`` latents?"""
    expected_factor = 2 ** (len(conditioning_embedding_out_channels) - 1)
    expected_side = latent_side * expected_factor
    factor_ok, side_ok = downsampling == expected_factor, conditioning_side == expected_side
    hints = []
    if not factor_ok:
        hints.append(f"downsampling {downsampling}: each entry after the first adds one stride-2 convolution "
                     f"({len(conditioning_embedding_out_channels)} entries)")
    if not side_ok:
        hints.append(f"side {conditioning_side}: the embedding is the image side divided by the downsampling, and it "
                     f"must equal {latent_side}")
    return verdict(
        factor_ok and side_ok,
        f"{len(conditioning_embedding_out_channels)} entries give {len(conditioning_embedding_out_channels) - 1} "
        f"stride-2 convolutions, {expected_factor}x; {expected_side} px / {expected_factor} = {latent_side}. With "
        "SD's 8x VAE, that ControlNet would need 1024 px conditioning images for 512 px training images, "
        "which is why it must shrink exactly as much as the VAE.",
        "; ".join(hints) + ".",
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


# --- notebook 04: memory tricks -------------------------------------------------------------------


def check_optimizer_state_gb(fp32_adam_gb: float, adam_8bit_gb: float, controlnet_params: int) -> bool:
    """Exercise (notebook 04): the ControlNet's AdamW state in GB, with fp32 moments and with 8-bit ones."""
    expected = (controlnet_params * 8 / 1e9, controlnet_params * 2 / 1e9)
    close = all(abs(a - e) <= 0.02 * e for a, e in zip((fp32_adam_gb, adam_8bit_gb), expected))
    return verdict(
        close,
        f"AdamW keeps two moments per parameter: {expected[0]:.2f} GB in fp32, {expected[1]:.2f} GB in 8 bits.",
        f"You answered {fp32_adam_gb:.2f} and {adam_8bit_gb:.2f} GB. AdamW stores two moments per parameter: "
        "4 bytes each in fp32, 1 byte each in 8-bit AdamW. Multiply by the parameter count, divide by 1e9.",
    )


# --- 07_sdxl ------------------------------------------------------------------------------------------

def check_sdxl_added_embedding_width(answer, pooled_dim: int = 1280, addition_time_embed_dim: int = 256) -> bool:
    """Exercise (notebook 07): the width of the vector SDXL's UNet adds to its timestep embedding
    (``projection_class_embeddings_input_dim``), for a pooled text embedding of ``pooled_dim`` numbers and
    ``add_time_ids`` whose six numbers are each embedded into ``addition_time_embed_dim`` (SDXL: 1280, 256)."""
    expected = pooled_dim + 6 * addition_time_embed_dim
    return verdict(
        int(answer) == expected,
        f"{pooled_dim} (pooled text) + 6 x {addition_time_embed_dim} (original size, crop corner, target size, "
        f"each number embedded) = {expected}.",
        f"You answered {answer}. The UNet concatenates the pooled text embedding ({pooled_dim} numbers) with "
        f"the sinusoidal embedding of each of the 6 add_time_ids ({addition_time_embed_dim} numbers each).",
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


# --- notebook 04: the optimizer step in backward --------------------------------------------------


def check_live_gradients_mb(usual_mb: float, in_backward_mb: float, parameter_numels: list[int]) -> bool:
    """Exercise (notebook 04): the most fp32 gradient MB alive at once, with the usual step and with the step
    in backward, for parameters of ``parameter_numels`` values each."""
    expected = (sum(parameter_numels) * 4 / 1e6, max(parameter_numels) * 4 / 1e6)
    close = all(abs(a - e) <= 0.01 * e for a, e in zip((usual_mb, in_backward_mb), expected))
    return verdict(
        close,
        f"The usual step holds every gradient at the end of backward: {expected[0]:.1f} MB. The step in backward "
        f"frees each one as soon as it is used, so at most the largest is alive: {expected[1]:.1f} MB.",
        f"You answered {usual_mb:.1f} and {in_backward_mb:.1f} MB. An fp32 gradient takes 4 bytes a value: the "
        "usual step keeps them all (sum the sizes); the step in backward one at a time (the largest).",
    )
