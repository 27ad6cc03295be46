"""Profiles: one place that says which base model, which data and which sizes the course uses.

- ``tiny`` (the default): a tiny SD-layout model and generated fill data, built locally; offline, CPU.
- ``sd15``: Stable Diffusion 1.5 and ``fusing/fill50k`` at 512 px, for a GPU with internet access.
- ``sdxl``: SDXL base 1.0 and ``fusing/fill50k`` at 1024 px, for a large GPU (notebook 07; on the CPU,
  notebook 07 uses the tiny SDXL-layout base of :mod:`cnhelpers.course.tiny_sdxl`).
- ``sd3`` and ``flux``: SD3.5 medium at 1024 px and FLUX.1-dev at 512 px, upstream's README recipes for an 80 GB
  GPU (notebook 08's section 10; on the CPU, notebook 08 trains tiny stand-ins).

Pick one with the ``CN_PROFILE`` environment variable, or pass a name to :func:`get_profile` (the
notebooks' parameter cells do). Plain data: :func:`cnhelpers.course.tiny_bases.base_model_path` and
:func:`cnhelpers.course.fill.load_train_dataset` turn a profile into a model folder and a data set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

DEFAULT_PROFILE = "tiny"


@dataclass(frozen=True)
class Profile:
    """Everything that differs between the CPU course and the real GPU run."""

    name: str
    description: str
    #: Hub id or local folder of the base model; ``None`` means the locally built tiny base.
    pretrained_model_name_or_path: str | None
    #: Hub id or local folder of the data; ``None`` means generated fill data.
    dataset_name: str | None
    resolution: int
    train_batch_size: int
    learning_rate: float
    max_train_steps: int
    #: diffusers' ``get_scheduler`` name for the learning rate over the run (train_controlnet.py's ``--lr_scheduler``).
    lr_scheduler: str = "constant"
    #: How many examples to generate for the tiny profile's data set.
    num_generated_examples: int = 0
    #: ``"no"``, ``"fp16"`` or ``"bf16"``: what accelerate should use on this profile's hardware.
    mixed_precision: str = "no"
    #: Classifier-free guidance for this profile's base: SD 1.5's usual 7.5; lower for the tiny base, whose
    #: colours saturate past the palette at 7.5.
    guidance_scale: float = 7.5
    #: Micro-batches per optimizer step: the effective batch is ``train_batch_size`` times this.
    gradient_accumulation_steps: int = 1
    #: The memory flags that make a training step fit ``target_gpu_gb`` (names of train_controlnet.py's flags,
    #: chosen from the measured ladder: ``benchmarks/results``), and that card's memory.
    memory_flags: tuple = ()
    target_gpu_gb: float | None = None
    #: A VAE to use instead of the base's (SDXL's own overflows in fp16).
    pretrained_vae_model_name_or_path: str | None = None
    #: Steps of notebook 03's default run (``make course``): on the tiny profile, half of ``max_train_steps`` (its
    #: run starts the conditioning embedding He-initialised, which follows the outline sooner); a short run that
    #: shows the loop working on the GPU profiles (set MAX_TRAIN_STEPS for the full run).
    course_train_steps: int = 0
    #: ``--conditioning_embedding_init`` of notebook 03's main run: ``kaiming`` on the tiny profile, where it was
    #: measured (``benchmarks/results/time-to-control-tiny-cpu-2026-12-06.md``, round 3); the GPU profiles keep
    #: ``from_unet``'s embedding, as upstream's script does (not measured on SD 1.5 here).
    course_conditioning_embedding_init: str = "default"
    #: Steps of notebook 09's run on your own data set (the CLI, a few CPU minutes on the tiny profile); 0 on the GPU
    #: profiles, whose run notebook 09 shows without running it.
    own_data_train_steps: int = 0
    #: Steps of each of notebooks 07's and 08's runs on the pretrained tiny SDXL, SD3 and Flux bases (``make outputs``;
    #: CI runs fewer through ``CN_PROFILE_OVERRIDES``); 0 on the GPU profiles, whose runs those notebooks only show.
    family_train_steps: int = 0


PROFILES: dict[str, Profile] = {
    "tiny": Profile(
        name="tiny",
        description="tiny SD-layout model and generated fill data, offline, CPU-friendly (minutes)",
        pretrained_model_name_or_path=None,
        dataset_name=None,
        resolution=64,
        train_batch_size=16,
        # A small ControlNet on a small base learns at 20x SD's 1e-4; a cosine decay to 0 lets the run end settled,
        # so its control holds anywhere in the frame, not only where the training circles were. 1,200 steps: the
        # recipe tuned for time to control, half the 2,400 of the recipe before, for a few hundredths of final IoU
        # (benchmarks/results/controlnet-recipes-time-tiny-cpu-2026-12-05.md; the recipes compared before:
        # controlnet-recipes-tiny-cpu-2026-12-01.md).
        learning_rate=2e-3,
        lr_scheduler="cosine",
        max_train_steps=1200,
        num_generated_examples=2048,
        guidance_scale=3.0,
        course_train_steps=600,
        course_conditioning_embedding_init="kaiming",
        own_data_train_steps=400,
        family_train_steps=1200,
    ),
    "sd15": Profile(
        name="sd15",
        description="Stable Diffusion 1.5 and fusing/fill50k at 512 px, for a GPU (hours)",
        pretrained_model_name_or_path="stable-diffusion-v1-5/stable-diffusion-v1-5",
        dataset_name="fusing/fill50k",
        resolution=512,
        # The memory ladder's rung 4, the guide's "12 GB" flags (batch 1 x 4 accumulated, ControlNet checkpointing,
        # 8-bit AdamW, grads to None), with fp16 and cached latents, which only lower its peak: so a 16 GB T4 holds
        # it without also checkpointing the frozen UNet (--checkpoint_frozen_unet), which would slow every step.
        # The peaks and the slowdown measured: benchmarks/results/figures-moved-from-comments.md.
        train_batch_size=1,
        gradient_accumulation_steps=4,
        learning_rate=1e-5,
        max_train_steps=15000,
        mixed_precision="fp16",
        memory_flags=("gradient_checkpointing", "use_8bit_adam", "set_grads_to_none"),
        target_gpu_gb=16.0,
        course_train_steps=300,
    ),
    "sdxl": Profile(
        name="sdxl",
        description="SDXL base 1.0 and fusing/fill50k at 1024 px, for a large GPU (hours)",
        pretrained_model_name_or_path="stabilityai/stable-diffusion-xl-base-1.0",
        dataset_name="fusing/fill50k",
        resolution=1024,
        # The same flags as sd15's, for a 24 GB card (the SDXL guide's recipe; not measured by the course), and
        # the fp16-fix VAE: SDXL's own VAE overflows in fp16.
        train_batch_size=1,
        gradient_accumulation_steps=4,
        learning_rate=1e-5,
        max_train_steps=15000,
        mixed_precision="fp16",
        memory_flags=("gradient_checkpointing", "use_8bit_adam", "set_grads_to_none"),
        target_gpu_gb=24.0,
        pretrained_vae_model_name_or_path="madebyollin/sdxl-vae-fp16-fix",
        course_train_steps=100,
    ),
    # The transformer bases (notebook 08's section 10): upstream's README recipes, figure by figure, for one large
    # GPU. Not measured by the course (no GPU was lent); notebook 08 trains their tiny stand-ins on the CPU.
    "sd3": Profile(
        name="sd3",
        description="Stable Diffusion 3.5 medium and fusing/fill50k at 1024 px, for an 80 GB GPU (hours)",
        pretrained_model_name_or_path="stabilityai/stable-diffusion-3.5-medium",
        dataset_name="fusing/fill50k",
        # diffusers examples/controlnet/README_sd3.md's command: --resolution=1024 --learning_rate=1e-5
        # --max_train_steps=15000 --train_batch_size=1 --gradient_accumulation_steps=4, no mixed-precision or memory
        # flag. Its "GPU usage" note recommends "one GPU with at least 80GB of memory": diffusers issue #10055 runs out
        # of memory with that command on a 40 GB A100, and #11225 at validation on an 80 GB one with two validation
        # images (validate on one).
        resolution=1024,
        train_batch_size=1,
        gradient_accumulation_steps=4,
        learning_rate=1e-5,
        max_train_steps=15000,
        target_gpu_gb=80.0,
        # StableDiffusion3Pipeline's default guidance.
        guidance_scale=7.0,
    ),
    "flux": Profile(
        name="flux",
        description="FLUX.1-dev (gated: accept its licence, then hf auth login) and fusing/fill50k at 512 px, "
                    "for an 80 GB GPU (hours)",
        pretrained_model_name_or_path="black-forest-labs/FLUX.1-dev",
        dataset_name="fusing/fill50k",
        # diffusers examples/controlnet/README_flux.md's command: --mixed_precision="bf16" --resolution=512
        # --learning_rate=1e-5 --max_train_steps=15000 --train_batch_size=1 --gradient_accumulation_steps=16
        # --lr_scheduler="cosine" (and --num_double_layers=4 --num_single_layers=0, flags of the run, not of a profile).
        # Its table, on one 80 GB A100: about 58 GB while training, 71 GB while validating. For 8 x A100-40GB its
        # ZeRO-3 recipe is cnhelpers.course.memory.FLUX_ZERO3 (write_deepspeed_config writes its accelerate config);
        # benchmarks/results/transformer-ladder-counted-cpu-2026-12-06.md counts each memory rung.
        resolution=512,
        train_batch_size=1,
        gradient_accumulation_steps=16,
        learning_rate=1e-5,
        lr_scheduler="cosine",
        max_train_steps=15000,
        mixed_precision="bf16",
        target_gpu_gb=80.0,
        # The README's inference example, and the guidance embedding's value while training (FLUX.1-dev's 3.5).
        guidance_scale=3.5,
    ),
}


def get_profile(name: str | None = None, **overrides) -> Profile:
    """The profile called ``name``, else the one ``CN_PROFILE`` names, else ``tiny``.

    ``CN_PROFILE_OVERRIDES="resolution=64, max_train_steps=3, mixed_precision=no"`` replaces single fields
    (CI runs the GPU profiles small on a CPU this way), and so do keyword arguments, which win:
    ``get_profile("tiny", resolution=128)``.
    """
    chosen = (name or os.environ.get("CN_PROFILE") or DEFAULT_PROFILE).strip().lower()
    if chosen not in PROFILES:
        raise ValueError(
            f"Unknown profile {chosen!r}: choose one of {', '.join(PROFILES)} "
            "(set CN_PROFILE or the notebook's PROFILE parameter)"
        )
    overrides = environment_overrides() | overrides
    return replace(PROFILES[chosen], **overrides) if overrides else PROFILES[chosen]


def environment_overrides(text: str | None = None) -> dict:
    """The fields ``CN_PROFILE_OVERRIDES`` (or ``text``) sets: ``name=value`` pairs, comma-separated, each value
    converted to the field's type (``none`` for None, ``a|b`` for a tuple)."""
    text = os.environ.get("CN_PROFILE_OVERRIDES", "") if text is None else text
    types = {f.name: f.type for f in fields(Profile)}
    overrides = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = (part.strip() for part in pair.partition("="))
        if name not in types or not _:
            raise ValueError(f"CN_PROFILE_OVERRIDES: {pair!r} is not field=value with a field of Profile "
                             f"({', '.join(types)})")
        kind = str(types[name])
        if value.lower() == "none":
            overrides[name] = None
        elif kind.startswith("int"):
            overrides[name] = int(value)
        elif kind.startswith("float"):
            overrides[name] = float(value)
        elif kind.startswith("tuple"):
            overrides[name] = tuple(filter(None, value.split("|")))
        else:
            overrides[name] = value
    return overrides
