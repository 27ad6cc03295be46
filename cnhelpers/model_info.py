"""Sizes read off the models: parameter counts, how much the VAE shrinks an image, how much the ControlNet's
conditioning embedding shrinks the conditioning image. Plain functions of a model (or its config), for any base.
"""

from __future__ import annotations

import torch


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def vae_scale_factor(vae) -> int:
    """How much the VAE shrinks each image side: 2 per downsampling, one fewer than its blocks (8 for SD)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def conditioning_downsampling(controlnet_or_channels) -> int:
    """How much the ControlNet's conditioning embedding shrinks the conditioning image (8 by default).

    Takes a ControlNet or its ``conditioning_embedding_out_channels``: each entry after the first adds a
    stride-2 convolution.
    """
    channels = getattr(getattr(controlnet_or_channels, "config", None), "conditioning_embedding_out_channels",
                       controlnet_or_channels)
    return 2 ** (len(channels) - 1)
