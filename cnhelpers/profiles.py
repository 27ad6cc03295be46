"""Profiles: one place that says which base model, which data and which sizes the course uses.

- ``tiny`` (the default): a tiny SD-layout model and generated fill data, built locally; offline, CPU.
- ``sd15``: Stable Diffusion 1.5 and ``fusing/fill50k`` at 512 px, for a GPU with internet access.
- ``sdxl``: SDXL base 1.0 and ``fusing/fill50k`` at 1024 px, for a large GPU (notebook 07; on the CPU,
  notebook 07 uses the tiny SDXL-layout base of :mod:`cnhelpers.sdxl`).

Pick one with the ``CN_PROFILE`` environment variable, or pass a name to :func:`get_profile` (the
notebooks' parameter cells do). Plain data: :func:`cnhelpers.base_models.base_model_path` and
:func:`cnhelpers.data.load_train_dataset` turn a profile into a model folder and a data set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

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
    #: How many examples to generate for the tiny profile's data set.
    num_generated_examples: int = 0
    #: ``"no"``, ``"fp16"`` or ``"bf16"``: what accelerate should use on this profile's hardware.
    mixed_precision: str = "no"
    #: Classifier-free guidance for this profile's base: SD 1.5's usual 7.5; lower for the tiny base, whose
    #: colours saturate past the palette at 7.5.
    guidance_scale: float = 7.5


PROFILES: dict[str, Profile] = {
    "tiny": Profile(
        name="tiny",
        description="tiny SD-layout model and generated fill data, offline, CPU-friendly (minutes)",
        pretrained_model_name_or_path=None,
        dataset_name=None,
        resolution=64,
        train_batch_size=16,
        learning_rate=1e-3,  # a small ControlNet on a small base: 10x SD's 1e-4 converges within the budget
        max_train_steps=1200,
        num_generated_examples=2048,
        guidance_scale=3.0,
    ),
    "sd15": Profile(
        name="sd15",
        description="Stable Diffusion 1.5 and fusing/fill50k at 512 px, for a GPU (hours)",
        pretrained_model_name_or_path="stable-diffusion-v1-5/stable-diffusion-v1-5",
        dataset_name="fusing/fill50k",
        resolution=512,
        train_batch_size=4,
        learning_rate=1e-5,
        max_train_steps=15000,
        mixed_precision="fp16",
    ),
    "sdxl": Profile(
        name="sdxl",
        description="SDXL base 1.0 and fusing/fill50k at 1024 px, for a large GPU (hours)",
        pretrained_model_name_or_path="stabilityai/stable-diffusion-xl-base-1.0",
        dataset_name="fusing/fill50k",
        resolution=1024,
        train_batch_size=1,
        learning_rate=1e-5,
        max_train_steps=15000,
        mixed_precision="fp16",
    ),
}


def get_profile(name: str | None = None, **overrides) -> Profile:
    """The profile called ``name``, else the one ``CN_PROFILE`` names, else ``tiny``.

    Keyword arguments replace single fields, e.g. ``get_profile("tiny", resolution=128)``.
    """
    chosen = (name or os.environ.get("CN_PROFILE") or DEFAULT_PROFILE).strip().lower()
    if chosen not in PROFILES:
        raise ValueError(
            f"Unknown profile {chosen!r}: choose one of {', '.join(PROFILES)} "
            "(set CN_PROFILE or the notebook's PROFILE parameter)"
        )
    return replace(PROFILES[chosen], **overrides) if overrides else PROFILES[chosen]
