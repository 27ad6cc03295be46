"""The fast path: latents (the VAE posterior's mean and std) and text embeddings computed once.

A latent is still *sampled* from the cached posterior every step (upstream samples ``latent_dist`` every step
too, so the training signal is the same); text embeddings are computed once for every caption and for the
empty prompt; conditioning images are kept as uint8 tensors, so a step does no PIL work, or, for a family whose
ControlNet reads the condition's latents (SD3, Flux), as their posterior's mean and std, sampled every step too. The cache is encoded
in batches of the training batch size, so building it needs no more memory than an uncached step.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .data import collate_fn
from .env import available_memory, format_bytes


class CachedExamples(torch.utils.data.Dataset):
    """Training examples prepared once: VAE posterior mean and std, conditioning image (uint8, or its latents'
    posterior mean and std: ``condition_std`` given), caption index."""

    def __init__(self, latent_mean, latent_std, conditioning, caption_index, condition_std=None):
        self.latent_mean, self.latent_std = latent_mean, latent_std
        self.conditioning, self.caption_index, self.condition_std = conditioning, caption_index, condition_std

    def __len__(self):
        return len(self.caption_index)

    def __getitem__(self, i):
        item = {"latent_mean": self.latent_mean[i], "latent_std": self.latent_std[i]}
        if self.condition_std is None:
            item["conditioning_uint8"] = self.conditioning[i]
        else:
            item["condition_mean"], item["condition_std"] = self.conditioning[i], self.condition_std[i]
        item["caption_index"] = self.caption_index[i]
        return item


def estimated_cache_bytes(num_examples: int, resolution: int, num_captions: int, text_shape,
                          latent_channels: int = 4, vae_scale_factor: int = 8, condition_latents: bool = False) -> int:
    """Memory the cache would take: float32 latent mean+std, uint8 conditioning (or its latents' float32 mean+std),
    float32 text table."""
    side = resolution // vae_scale_factor
    latents = num_examples * 2 * latent_channels * side * side * 4
    conditioning = latents if condition_latents else num_examples * 3 * resolution * resolution
    text = (num_captions + 1) * math.prod(text_shape) * 4
    return latents + conditioning + text


CACHE_AUTO_LIMIT_BYTES = 4 * 2**30


@torch.no_grad()
def build_cache(train_dataset, captions, encode_prompts, vae, device, batch_size=4, disable_progress=False,
                encode_condition=None):
    """Encode every example once: VAE posterior (mean, std), uint8 conditioning, text embeddings.

    ``encode_condition(pixels)``, when given, is the VAE posterior of a batch of conditioning images in [0, 1], or
    ``None`` (the base's family knows: :meth:`cnhelpers.families.Family.encode_condition`); a posterior is stored as
    its mean and std instead of the uint8 images.

    ``encode_prompts(prompts)`` returns the text conditioning of a list of prompts as a tuple of tensors (one for
    SD 1.5, the text and the pooled text for SDXL): the base's family knows it (``models.encode_prompts``).
    ``train`` passes the training batch size as ``batch_size``: the encoders then never see a larger batch than an
    uncached step would, so caching costs no more memory than the cache itself.

    Returns ``(CachedExamples, text_tables)``: one table per tensor ``encode_prompts`` returns, where row ``i``
    is caption ``i``'s and the last row the empty prompt's.
    """
    unique = sorted(set(captions))
    index_of = {caption: i for i, caption in enumerate(unique)}
    text_tables = []
    for start in range(0, len(unique) + 1, batch_size):
        chunk = (unique + [""])[start:start + batch_size]
        text_tables.append(tuple(part.float().cpu() for part in encode_prompts(chunk)))
    text_tables = tuple(map(torch.cat, zip(*text_tables)))

    loader = torch.utils.data.DataLoader(train_dataset, batch_size=batch_size, collate_fn=collate_fn)
    means = stds = conditioning = condition_stds = None
    start = 0
    for batch in tqdm(loader, desc="Caching latents", disable=disable_progress):
        posterior = vae.encode(batch["pixel_values"].to(device, vae.dtype)).latent_dist
        condition = encode_condition(batch["conditioning_pixel_values"].to(device)) if encode_condition else None
        if means is None:  # allocated once, filled batch by batch: no second copy from concatenating
            means = torch.empty((len(train_dataset), *posterior.mean.shape[1:]))
            stds = torch.empty_like(means)
            if condition is None:
                conditioning = torch.empty((len(train_dataset), *batch["conditioning_pixel_values"].shape[1:]),
                                           dtype=torch.uint8)
            else:
                conditioning = torch.empty((len(train_dataset), *condition.mean.shape[1:]))
                condition_stds = torch.empty_like(conditioning)
        end = start + len(posterior.mean)
        means[start:end] = posterior.mean
        stds[start:end] = posterior.std
        if condition is None:
            conditioning[start:end] = (batch["conditioning_pixel_values"] * 255).round()
        else:
            conditioning[start:end], condition_stds[start:end] = condition.mean, condition.std
        start = end
    examples = CachedExamples(means, stds, conditioning, torch.tensor([index_of[c] for c in captions]),
                              condition_stds)
    return examples, text_tables


def use_cache(mode: str, raw, *, caption_column: str, resolution: int, text_shape,
              max_train_samples: int | None = None, latent_channels: int = 4, condition_latents: bool = False,
              examples_read: int | None = None) -> bool:
    """Whether to take the fast path: ``mode`` ``"always"`` (refused when the cache cannot fit in the available
    RAM), ``"never"``, or ``"auto"`` when the run reads every example at least once and the cache fits in
    :data:`CACHE_AUTO_LIMIT_BYTES` and in half the available RAM.

    ``raw`` is the data set before transforms; ``text_shape`` the shape of one prompt's text embedding (the base's
    family knows it: ``family.text_shape(models)``), ``latent_channels`` the VAE's, ``condition_latents`` whether the
    conditioning images are cached as latents (SD3, Flux). ``examples_read`` is how many examples one process
    reads in the whole run (steps x batch size x accumulation; ``None``: whole epochs). Building the cache encodes
    every example once, a step without it encodes the examples it reads: a run that reads fewer examples than the
    data set holds (a short run on a large set) is faster without it. The whole run counts, not what is left of
    it, so a resumed run takes the path its start took.
    """
    if mode == "never":
        return False
    captions = raw[caption_column] if caption_column in raw.column_names else []
    strings = all(isinstance(c, str) for c in captions)
    if not strings:
        if mode == "always":
            raise ValueError("--cache always needs one string caption per example; this data set has lists "
                             "of captions. Use --cache never (captions are then drawn per step).")
        return False
    n = min(len(raw), max_train_samples or len(raw))
    if mode == "auto" and examples_read is not None and examples_read < n:
        return False
    size = estimated_cache_bytes(n, resolution, len(set(captions)), text_shape, latent_channels,
                                 condition_latents=condition_latents)
    available, limit = available_memory("cpu")
    if mode == "always":
        if size > available:
            raise ValueError(f"--cache always: the cache of {n} examples at --resolution {resolution} would take "
                             f"{format_bytes(size)}, but {limit} is {format_bytes(available)}. Use --cache never "
                             "(or auto), fewer examples (--max_train_samples) or a smaller --resolution.")
        return True
    return size <= min(CACHE_AUTO_LIMIT_BYTES, available // 2)
