"""Inference with a trained ControlNet: load it into a pipeline, generate, check the pictures.

- :func:`load_controlnet_pipeline`: base model + ControlNet(s) -> the base family's ControlNet pipeline
  (``StableDiffusionControlNetPipeline`` for SD 1.5) with the UniPC scheduler, from local folders or hub ids, with clear errors for what is missing.
- :func:`generate`: a batch of images, one seeded generator per image, so each picture is reproducible
  whatever the batch size and whatever else is in the batch.
- :func:`is_black` and :func:`decode_in_float32`: spotting and fixing the fp16 VAE's black images.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import numpy as np
import torch

from .families import detect_family
from .hub import resolve_base
from .loading import dtype_kwargs, load_controlnet


def load_controlnet_pipeline(base, controlnet, dtype: torch.dtype | None = None, device=None,
                             progress_bar: bool = False):
    """The ControlNet pipeline of ``base``'s family (``StableDiffusionControlNetPipeline`` for SD 1.5, without a
    safety checker) with ``controlnet`` and the UniPC scheduler.

    ``base``: a folder in diffusers' pipeline layout or a hub id. ``controlnet``: a folder, a hub id or a ControlNetModel, or a
    list of them for a MultiControlNet. ``dtype=torch.float16`` with ``device="cuda"`` is the usual
    GPU set-up. Progress bars (loading the pipeline's parts, and sampling) are off unless ``progress_bar`` is True.
    """
    import diffusers

    folder = resolve_base(base)
    family = detect_family(folder)
    if isinstance(controlnet, (list, tuple)):
        nets = [load_controlnet(c, dtype, family.controlnet_class) for c in controlnet]
    else:
        nets = load_controlnet(controlnet, dtype, family.controlnet_class)
    with diffusers_progress_bars(progress_bar):
        pipeline = getattr(diffusers, family.pipeline_name).from_pretrained(
            folder, controlnet=nets, **family.pipeline_kwargs, **dtype_kwargs(dtype))
    for net in nets if isinstance(nets, list) else [nets]:
        family.check_controlnet_fits(net, getattr(pipeline, family.denoiser_name), pipeline.vae_scale_factor)
    # The family's sampler: UniPC for the UNet families, a multistep solver that gives good pictures in 20-25 steps
    # (the PNDM default needs ~50); flow matching's Euler for SD3 and Flux.
    pipeline.scheduler = family.validation_scheduler(pipeline.scheduler)
    pipeline.set_progress_bar_config(disable=not progress_bar)
    return pipeline.to(device) if device is not None else pipeline


@contextmanager
def diffusers_progress_bars(shown: bool):
    """diffusers' own progress bars (e.g. "Loading pipeline components") shown or not inside the block, as they
    were after it."""
    from diffusers.utils import logging as diffusers_logging

    was_shown = diffusers_logging.is_progress_bar_enabled()
    (diffusers_logging.enable_progress_bar if shown else diffusers_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (diffusers_logging.enable_progress_bar if was_shown else diffusers_logging.disable_progress_bar)()


def image_generators(seed: int, n: int) -> list[torch.Generator]:
    """One CPU generator per image, seeded ``seed, seed + 1, ...``: the same noise on any device."""
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]


def generate(pipeline, examples_or_prompts, conditions=None, seed: int = 0, batch_size: int = 8, **pipeline_kwargs):
    """Generate one image per prompt, in batches; image ``i`` always uses the generator seeded ``seed + i``.

    Pass fill examples (dicts with ``text`` and ``conditioning_image``), or prompts and conditions. For a
    MultiControlNet, each condition is a list with one image per ControlNet. Other keyword arguments go
    to the pipeline (``controlnet_conditioning_scale``, ``guess_mode``, ``num_inference_steps``, ...); a
    ``negative_prompt`` string applies to every image.
    """
    if conditions is None:
        prompts = [example["text"] for example in examples_or_prompts]
        conditions = [example["conditioning_image"] for example in examples_or_prompts]
    else:
        prompts = list(examples_or_prompts)
    if len(prompts) != len(conditions):
        raise ValueError(f"{len(prompts)} prompts but {len(conditions)} conditions: give one condition per prompt")
    negative_prompts = pipeline_kwargs.pop("negative_prompt", None)
    if isinstance(negative_prompts, str):  # the pipeline wants a list when the prompts are a list
        negative_prompts = [negative_prompts] * len(prompts)
    # the conditioning images' keyword: SD3's and Flux's pipelines call it control_image
    condition = "control_image" if "control_image" in inspect.signature(pipeline.__call__).parameters else "image"
    generators = image_generators(seed, len(prompts))
    images = []
    for start in range(0, len(prompts), batch_size):
        batch = slice(start, start + batch_size)
        images += pipeline(prompts[batch], **{condition: [list(c) if isinstance(c, tuple) else c
                                                          for c in conditions[batch]]},
                           negative_prompt=None if negative_prompts is None else negative_prompts[batch],
                           generator=generators[batch], **pipeline_kwargs).images
    return images


def active_control_steps(num_inference_steps: int, control_guidance_start: float = 0.0,
                         control_guidance_end: float = 1.0) -> list[int]:
    """The denoising steps (0 = the noisiest) in which the ControlNet acts, for a start/end pair.

    Step ``i`` of ``n`` covers the fraction ``[i/n, (i+1)/n]`` of the schedule; the ControlNet acts when that
    lies within ``[start, end]``, as in ``StableDiffusionControlNetPipeline``.
    """
    n = num_inference_steps
    return [i for i in range(n) if i / n >= control_guidance_start and (i + 1) / n <= control_guidance_end]


def is_black(image, tolerance: int = 0) -> bool:
    """True when every pixel of ``image`` is black (at most ``tolerance``): what a NaN becomes in a PIL image."""
    return bool(np.asarray(image).max() <= tolerance)


@torch.no_grad()
def decode_in_float32(pipeline, latents: torch.Tensor):
    """Decode latents (``output_type="latent"``) with the VAE in float32: the fix for fp16 black images.

    The VAE's decoder has activations beyond float16's range (65504); they overflow to inf, then NaN, and
    NaN pixels turn black. Running only the VAE in float32 costs little; the UNet and ControlNet stay fp16.
    """
    vae = pipeline.vae
    dtype = vae.dtype
    vae.to(torch.float32)
    try:
        decoded = vae.decode(latents.to(torch.float32) / vae.config.scaling_factor, return_dict=False)[0]
    finally:
        vae.to(dtype)  # the pipeline's own calls expect the VAE in the UNet's dtype
    return pipeline.image_processor.postprocess(decoded, output_type="pil")


def scheduler_names(pipeline) -> list[str]:
    """Names of the schedulers that can replace the pipeline's (``pipeline.scheduler.compatibles``), sorted."""
    return sorted(cls.__name__ for cls in pipeline.scheduler.compatibles)
