"""Flow matching, the objective of the transformer families (SD3 and Flux): timesteps drawn from a density, a
straight path from the clean latents to noise, the velocity (or, preconditioned, the clean latents) as the target.
"""

from __future__ import annotations

import torch

from ..losses import Noised


#: ``--weighting_scheme``'s choices (upstream's SD3 and Flux scripts'): how timesteps are drawn (logit_normal, mode)
#: or how the loss is weighted (sigma_sqrt, cosmap); none draws uniformly and weights nothing.
WEIGHTING_SCHEMES = ("sigma_sqrt", "logit_normal", "mode", "cosmap", "none")


class FlowMatchingObjective:
    """Flow matching (rectified flow), as upstream's train_controlnet_sd3.py and train_controlnet_flux.py have it.

    - **Timesteps**: ``u`` drawn by ``compute_density_for_timestep_sampling`` (``--weighting_scheme``: logit-normal
      with ``--logit_mean``/``--logit_std``, the ``mode`` density with ``--mode_scale``, else uniform), turned into
      indices into the scheduler's training timesteps; each index's sigma is looked up.
    - **Forward process**: ``x_t = (1 - sigma) x0 + sigma noise``, a straight line from the clean latents to noise.
    - **Target**: the line's velocity ``noise - x0``; with ``precondition_outputs`` (SD3's ``--precondition_outputs``,
      EDM's section 5) the prediction is mapped to ``pred * (-sigma) + x_t`` and compared with ``x0``.
    - **Loss**: squared error weighted by ``compute_loss_weighting_for_sd3`` (``weighted=True``: SD3's script; sigma_sqrt
      and cosmap weight, the other schemes give ones), mean per sample, then over the batch. Flux's script takes the
      plain mean squared error (``weighted=False``).

    Min-SNR (``--snr_gamma``) is a DDPM weighting and does not apply here: the families that use this objective
    refuse the flag, and :meth:`loss` refuses a ``snr_gamma`` too.

    The scheduler's timesteps and sigmas are copied when the objective is made (upstream's ``noise_scheduler_copy``):
    a validation pipeline that sets its own timesteps on a scheduler changes nothing here. Every draw comes from the
    step's generator (the noise, then ``u``), so a run is reproducible and a resumed run continues exactly.
    """

    def __init__(self, noise_scheduler, weighting_scheme: str = "logit_normal", logit_mean: float = 0.0,
                 logit_std: float = 1.0, mode_scale: float = 1.29, precondition_outputs: bool = False,
                 weighted: bool = True):
        if weighting_scheme not in WEIGHTING_SCHEMES:
            raise ValueError(f"--weighting_scheme {weighting_scheme!r} is not one of {', '.join(WEIGHTING_SCHEMES)}.")
        self.num_train_timesteps = noise_scheduler.config.num_train_timesteps
        self.timesteps = noise_scheduler.timesteps.clone()
        self.sigmas = noise_scheduler.sigmas.clone()
        self.weighting_scheme, self.logit_mean, self.logit_std = weighting_scheme, logit_mean, logit_std
        self.mode_scale, self.precondition_outputs, self.weighted = mode_scale, bool(precondition_outputs), weighted

    def noised(self, latents: torch.Tensor, generator: torch.Generator) -> Noised:
        """The forward process on clean ``latents``; draws the noise, then ``u``, from ``generator``."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        u = compute_density_for_timestep_sampling(self.weighting_scheme, latents.shape[0], logit_mean=self.logit_mean,
                                                  logit_std=self.logit_std, mode_scale=self.mode_scale,
                                                  device=latents.device, generator=generator)
        # (u is below 1 in theory; a sigmoid rounded to 1.0 in float32 would index past the schedule)
        indices = (u * self.num_train_timesteps).long().clamp(max=len(self.timesteps) - 1).cpu()
        timesteps = self.timesteps[indices].to(latents.device)
        sigmas = self.sigmas[indices].to(latents.device, latents.dtype).reshape(-1, *[1] * (latents.ndim - 1))
        noisy = (1.0 - sigmas) * latents + sigmas * noise
        target = latents if self.precondition_outputs else noise - latents
        return Noised(noisy, timesteps, target, sigmas)

    def loss(self, prediction: torch.Tensor, noised: Noised, snr_gamma: float | None = None) -> torch.Tensor:
        """The step's loss for the denoiser's ``prediction`` (the velocity) from ``noised``."""
        # (diffusers names it after SD3, whose paper it comes from; Flux's objective asks for no weighting)
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        if snr_gamma is not None:
            raise ValueError("--snr_gamma (Min-SNR) weights a DDPM objective; flow matching is weighted by "
                             "--weighting_scheme instead: leave --snr_gamma out.")
        if self.precondition_outputs:
            prediction = prediction * (-noised.sigmas) + noised.latents
        weighting = compute_loss_weighting_for_sd3(self.weighting_scheme if self.weighted else "none",
                                                   sigmas=noised.sigmas)
        squared = weighting.float() * (prediction.float() - noised.target.float()) ** 2
        return squared.reshape(len(squared), -1).mean(dim=1).mean()
