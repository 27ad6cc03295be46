"""The training objectives and the UNet's prediction with the ControlNet's residuals.

- The UNet families' (SD 1.5, SDXL): DDPM noising, the epsilon or v target, the Min-SNR weights, the loss
  (:class:`DDPMObjective` puts them together), and ``predict_noise`` (the one that the SD families, notebook 02 and
  the tests call).
- The transformer families' (SD3, Flux): flow matching (:class:`FlowMatchingObjective`), a straight line from the
  clean latents to the noise whose velocity the transformer predicts, with SD3's timestep densities and loss
  weightings from ``diffusers.training_utils``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Noised:
    """Clean latents after the forward process: the denoiser's input, its timesteps, and what it must predict."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    #: Flow matching's noise level of each example, broadcastable to the latents (``None`` for DDPM).
    sigmas: torch.Tensor | None = None


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, snr_gamma: float) -> torch.Tensor:
    """Per-sample Min-SNR-γ loss weights (Hang et al., 2023), shape ``(batch,)``.

    ``min(SNR(t), γ) / SNR(t)`` for epsilon prediction, ``min(SNR(t), γ) / (SNR(t) + 1)`` for v-prediction:
    easy, low-noise timesteps (large SNR) stop dominating the loss.
    """
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    clipped = torch.clamp(snr, max=snr_gamma)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    raise ValueError(f"Min-SNR weighting needs epsilon or v_prediction, not {prediction_type!r}")


def diffusion_target(noise_scheduler, latents, noise, timesteps):
    """What the UNet must predict: the noise (epsilon) or the velocity (v_prediction)."""
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"Unknown prediction type {prediction_type!r}: use epsilon or v_prediction")


def controlnet_loss(model_pred, target, timesteps=None, noise_scheduler=None, snr_gamma: float | None = None):
    """Mean squared error, per sample then over the batch; Min-SNR-weighted when ``snr_gamma`` is set.

    The per-sample loss has shape ``(batch,)`` before weighting, so ``(batch,)`` weights multiply the right
    axis (upstream's Flax script multiplies a ``(B, C, H, W)`` loss by ``(B,)`` weights instead).
    """
    per_sample = F.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma is None:
        return per_sample.mean()
    return (per_sample * min_snr_weights(noise_scheduler, timesteps, snr_gamma)).mean()


class DDPMObjective:
    """DDPM's objective, as upstream's train_controlnet.py has it: noise drawn from the step's generator, a
    timestep drawn uniformly, ``noise_scheduler.add_noise``; the target is the noise or the velocity (the scheduler's
    ``prediction_type``); the loss is the mean squared error, Min-SNR-weighted with ``snr_gamma``."""

    def __init__(self, noise_scheduler):
        self.noise_scheduler = noise_scheduler

    def noised(self, latents: torch.Tensor, generator: torch.Generator) -> Noised:
        """The forward process on clean ``latents``; draws the noise, then the timesteps, from ``generator``."""
        scheduler = self.noise_scheduler
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator, device=latents.device).long()
        return Noised(scheduler.add_noise(latents, noise, timesteps), timesteps,
                      diffusion_target(scheduler, latents, noise, timesteps))

    def loss(self, prediction: torch.Tensor, noised: Noised, snr_gamma: float | None = None) -> torch.Tensor:
        """The step's loss for the denoiser's ``prediction`` from ``noised``."""
        return controlnet_loss(prediction, noised.target, noised.timesteps, self.noise_scheduler, snr_gamma)


def controlnet_residuals(controlnet, inputs: dict, conditioning_scale: float = 1.0):
    """The ControlNet's residuals for ``inputs``: one per skip connection of the UNet's encoder (12 on SD 1.5),
    and one for the mid block.

    ``inputs`` holds ``latents`` (noisy), ``timesteps``, ``encoder_hidden_states`` and ``conditioning`` (the
    conditioning image in [0, 1]); an SDXL base also needs ``added_cond_kwargs`` (pooled text and size ids).
    """
    return controlnet(inputs["latents"], inputs["timesteps"], encoder_hidden_states=inputs["encoder_hidden_states"],
                      controlnet_cond=inputs["conditioning"], conditioning_scale=conditioning_scale,
                      added_cond_kwargs=inputs.get("added_cond_kwargs"), return_dict=False)


def predict_noise(unet, controlnet, inputs: dict, residuals=None):
    """The UNet's prediction with the ControlNet's residuals added to its skip connections (``controlnet=None``:
    the base alone).

    Pass ``residuals`` (from :func:`controlnet_residuals`) to reuse ones already computed. The residuals are cast
    to the UNet's dtype: under mixed precision the frozen UNet runs in half precision while the trained
    ControlNet keeps float32 weights.
    """
    extra = {}
    if controlnet is not None or residuals is not None:
        down, mid = residuals if residuals is not None else controlnet_residuals(controlnet, inputs)
        # The dtype of the UNet's first weight: ``unet.dtype`` walks every submodule on each read (about 1 ms on
        # the tiny UNet, 5 ms a training step when read once per residual).
        dtype = next(unet.parameters()).dtype
        extra = {"down_block_additional_residuals": [r.to(dtype) for r in down],
                 "mid_block_additional_residual": mid.to(dtype)}
    return unet(inputs["latents"], inputs["timesteps"], encoder_hidden_states=inputs["encoder_hidden_states"],
                added_cond_kwargs=inputs.get("added_cond_kwargs"), **extra).sample
