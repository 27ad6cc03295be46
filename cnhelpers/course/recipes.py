"""The course's training recipe, written once: a profile's flags (the ControlNet shipped in
``cnhelpers/assets/tiny-controlnet`` was trained with the tiny profile's), the command line that trains the same
ControlNet, and notebook 03's run of it (:func:`notebook_run_args`: the profile's steps and conditioning-embedding
init for that run, plus its checkpoints and validation).
"""

from __future__ import annotations

from pathlib import Path

from ..config import training_args
from ..families import flag_applies
from ..paths import build_dir, shown_path
from .fill import ensure_fill_dataset, fill_dataset_path, fill_example
from .pretrain_families import T5_LENGTH
from .profiles import Profile, get_profile
from .tiny_sdxl import PRETRAINED_TINY_SDXL_BASE
from .tiny_transformers import PRETRAINED_TINY_FLUX_BASE, PRETRAINED_TINY_SD3_BASE

#: What the course adds to a profile's batch size, learning rate and steps: Min-SNR γ = 5 (the paper's
#: choice), 10 % empty prompts (so classifier-free guidance works at inference), no warm-up, seed 0.
COURSE_FLAGS = dict(snr_gamma=5.0, proportion_empty_prompts=0.1, lr_warmup_steps=0, seed=0, report_to="none")


def course_flags(profile: Profile, base, output_dir, family=None, **overrides) -> dict:
    """The course's recipe for ``profile`` as a dict: its data, resolution, batch size, learning
    rate and its schedule, steps and guidance scale (for validation images), its precision, accumulation and
    memory flags (the GPU profiles'), plus :data:`COURSE_FLAGS` (those that apply to ``family``, the base's, when
    given: no ``--snr_gamma`` for SD3 or Flux). ``overrides`` replace any of them (e.g. validation or checkpoint
    flags)."""
    course = {name: value for name, value in COURSE_FLAGS.items() if family is None or flag_applies(family, name)}
    flags = dict(pretrained_model_name_or_path=str(base), output_dir=str(output_dir), resolution=profile.resolution,
                 train_batch_size=profile.train_batch_size, learning_rate=profile.learning_rate,
                 lr_scheduler=profile.lr_scheduler,
                 max_train_steps=profile.max_train_steps, validation_guidance_scale=profile.guidance_scale,
                 **course)
    # The GPU profiles' recipe for their target card: precision, accumulation, memory flags, a fixed VAE.
    flags["mixed_precision"] = profile.mixed_precision
    if profile.gradient_accumulation_steps > 1:
        flags["gradient_accumulation_steps"] = profile.gradient_accumulation_steps
    flags.update(dict.fromkeys(profile.memory_flags, True))
    if profile.pretrained_vae_model_name_or_path:
        flags["pretrained_vae_model_name_or_path"] = profile.pretrained_vae_model_name_or_path
    if {"train_data_dir", "dataset_name"}.isdisjoint(overrides):  # the profile's data, generated if need be
        if profile.dataset_name is None:
            flags["train_data_dir"] = str(ensure_fill_dataset(profile.num_generated_examples, profile.resolution))
        else:
            flags["dataset_name"] = profile.dataset_name
    return flags | overrides


def describe_recipe(profile: Profile) -> str:
    """One line saying what the profile's recipe is for: the card it fits, the batch, precision and memory flags."""
    target = f"a {profile.target_gpu_gb:g} GB GPU" if profile.target_gpu_gb else "a CPU"
    batch = f"batch {profile.train_batch_size}" + (
        f" x {profile.gradient_accumulation_steps} accumulated" if profile.gradient_accumulation_steps > 1 else "")
    flags = ", ".join(f"--{flag}" for flag in profile.memory_flags) or "no memory flags"
    return f"{profile.name} recipe for {target}: {batch}, mixed precision {profile.mixed_precision}, {flags}"


def course_training_args(profile: Profile, base, output_dir, **overrides):
    """:func:`course_flags` as the checked Namespace that ``train`` takes."""
    return training_args(**course_flags(profile, base, output_dir, **overrides))


def command_line(flags: dict) -> str:
    """The ``python -m cnhelpers.train`` command that trains with ``flags``.

    Paths inside the course checkout are written relative to it (run the command from its root).
    """
    def word(value) -> str:
        if isinstance(value, float):
            return f"{value:g}"
        return shown_path(value) if isinstance(value, Path) or str(value).startswith("/") else str(value)

    words = ["python -m cnhelpers.train"]
    for name, value in flags.items():
        if value is None or value is False:
            continue
        words.append(f"--{name}")
        if value is not True:
            words.extend(map(word, value) if isinstance(value, (list, tuple)) else [word(value)])
    return " ".join(words)


def how_to_make_controlnet(path: str | Path, profile: Profile | None = None) -> str:
    """The advice printed when no ControlNet is at ``path``: run notebook 03, or its command line.

    Nothing is built to say it: the tiny base and data are named by where they will be.
    """
    profile = profile or get_profile("tiny")
    base = profile.pretrained_model_name_or_path or build_dir() / "tiny-sd"
    data = {} if profile.dataset_name else {"train_data_dir": str(fill_dataset_path(
        profile.num_generated_examples, profile.resolution))}
    flags = course_flags(profile, base, path, **data)
    return (f"Make it by running notebook 03 (03_training_loop.ipynb), or from a shell:\n  {command_line(flags)}\n"
            "(cnhelpers.course.controlnet.ensure_controlnet(path=..., max_train_steps=N) trains a run N steps long).")


#: The seed of notebook 03's validation outlines: notebook 06's held-out seed, which the training data never uses.
VALIDATION_SEED = 10_000


def notebook_run_args(profile: Profile, base, output_dir, steps: int, seed: int = 0, validations: int = 4,
                      checkpoints: int = 10):
    """The flags of notebook 03's main run: the course's recipe for ``steps`` steps, with the profile's
    ``course_conditioning_embedding_init`` (the tiny profile's run starts its conditioning embedding He-initialised),
    plus its plumbing.

    That is: ``checkpoints`` checkpoints over the run (the newest two kept), ``validations`` validation rounds
    (two held-out outlines, whose PNGs are written to ``output_dir``'s sibling ``validation-outlines/``, three
    images each) and TensorBoard logs.
    """
    outline_dir = Path(output_dir).parent / "validation-outlines"
    outline_dir.mkdir(parents=True, exist_ok=True)
    prompts, images = [], []
    for index in range(2):
        example = fill_example(seed=VALIDATION_SEED, index=index, resolution=profile.resolution)
        example["conditioning_image"].save(outline_dir / f"outline-{index}.png")
        prompts.append(example["text"])
        images.append(outline_dir / f"outline-{index}.png")
    initialised = ({"conditioning_embedding_init": profile.course_conditioning_embedding_init}
                   if profile.course_conditioning_embedding_init != "default" else {})
    return course_training_args(profile, base, output_dir, max_train_steps=steps, seed=seed, **initialised,
                                checkpointing_steps=max(steps // checkpoints, 1), checkpoints_total_limit=2,
                                validation_prompt=prompts, validation_image=images, num_validation_images=3,
                                validation_steps=max(steps // validations, 1), report_to="tensorboard")



#: The pretrained tiny bases of the other families, shipped with the package (notebooks 07 and 08).
FAMILY_BASES = {"sdxl": PRETRAINED_TINY_SDXL_BASE, "sd3": PRETRAINED_TINY_SD3_BASE, "flux": PRETRAINED_TINY_FLUX_BASE}

#: What each family's run adds to the course's batch, learning rate and cosine schedule (notebooks 07 and 08,
#: ``benchmarks/family_control.py``): SDXL keeps Min-SNR (an epsilon-prediction base); SD3 and Flux read T5's
#: states at the length their bases were pretrained with, and draw timesteps logit-normal (upstream's SD3 default;
#: Flux's script draws them the same way); Flux's ControlNet copies both of the tiny base's 2 double-stream blocks
#: and 2 of its 4 single-stream ones, and its guidance embedding reads FLUX.1-dev's 3.5.
FAMILY_FLAGS = {
    "sdxl": dict(snr_gamma=5.0),
    "sd3": dict(weighting_scheme="logit_normal", max_sequence_length=T5_LENGTH),
    "flux": dict(weighting_scheme="logit_normal", max_sequence_length=T5_LENGTH, num_double_layers=2,
                 num_single_layers=2, guidance_scale=3.5),
}


def family_run_flags(family: str, base, output_dir, profile: Profile, steps: int | None = None, seed: int = 0,
                     checkpoints: int = 10) -> dict:
    """The flags of notebook 07's (SDXL) and 08's (SD3, Flux) runs on a tiny base: the course's recipe (batch,
    learning rate, cosine schedule, 10 % empty prompts, the fill data) with :data:`FAMILY_FLAGS`, ``checkpoints``
    checkpoints over the run (the newest kept) and no validation rounds (the notebooks score the checkpoints)."""
    steps = steps or profile.family_train_steps
    course = {name: value for name, value in COURSE_FLAGS.items() if name != "snr_gamma"}
    return dict(pretrained_model_name_or_path=str(base), output_dir=str(output_dir), resolution=profile.resolution,
                train_data_dir=str(ensure_fill_dataset(profile.num_generated_examples, profile.resolution)),
                train_batch_size=profile.train_batch_size, learning_rate=profile.learning_rate,
                lr_scheduler=profile.lr_scheduler, max_train_steps=steps,
                checkpointing_steps=max(steps // checkpoints, 1), checkpoints_total_limit=1,
                **course, **FAMILY_FLAGS[family]) | {"seed": seed}


def family_sampling(family: str, profile: Profile) -> dict:
    """How the notebooks sample a family's tiny base: the guidance its base was trained for (Flux's pipeline reads
    its ``guidance_scale`` as the guidance embedding's, 3.5) and T5's length, as
    :class:`cnhelpers.course.evaluation.CheckpointIoU`'s keyword arguments."""
    flags = FAMILY_FLAGS[family]
    kwargs = {"height": profile.resolution, "width": profile.resolution}
    if "max_sequence_length" in flags:
        kwargs["max_sequence_length"] = flags["max_sequence_length"]
    return {"guidance_scale": flags.get("guidance_scale", profile.guidance_scale), "pipeline_kwargs": kwargs}
