"""What a run leaves behind: validation grids (and TensorBoard images), the final ControlNet and its model card.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from .consistency import validation_consistency
from .hub import HubUnavailableError
from .images import image_grid
from .lora import ADAPTER_FILE, FULL_MODULES_FILE, LORA_FOLDER, save_controlnet
from .messages import error_summary


def validation_pairs(args) -> list[tuple[str, str]]:
    """(prompt, conditioning image path) pairs: one image for all prompts, one prompt for all images, or 1:1."""
    prompts, images = args.validation_prompt or [], args.validation_image or []
    if len(images) == 1:
        images = images * len(prompts)
    elif len(prompts) == 1:
        prompts = prompts * len(images)
    return list(zip(prompts, images))


@torch.no_grad()
def log_validation(accelerator, args, models, weight_dtype, step: int) -> dict:
    """Generate ``num_validation_images`` per (prompt, image) with UniPC; log them and save a grid PNG.

    ``models`` is the run's :class:`cnhelpers.families.Models`; its family builds its ControlNet pipeline from them.
    """
    from PIL import Image

    controlnet = accelerator.unwrap_model(models.controlnet)
    vae = models.vae
    encoders_device = vae.device
    vae.to(accelerator.device)  # offloaded while training from the cache
    for encoder in models.text_encoders.values():
        encoder.to(accelerator.device)
    was_training = controlnet.training
    controlnet.eval()
    scheduler = models.family.validation_scheduler(models.noise_scheduler)  # (SD: UniPC; SD3, Flux: flow matching)
    pipeline = models.family.validation_pipeline(models, controlnet, scheduler)
    pipeline.set_progress_bar_config(disable=True)
    if args.enable_xformers_memory_efficient_attention:
        pipeline.enable_xformers_memory_efficient_attention()

    def draw(conditioning_scale: float | None = None) -> list[dict]:
        """The validation pictures, each (prompt, image) pair's from the run's seed; ``conditioning_scale=0``: the
        base alone, the same prompts and seeds."""
        generator = None if args.seed is None else torch.Generator(accelerator.device).manual_seed(args.seed)
        rows = []
        for prompt, image_path in validation_pairs(args):
            condition = Image.open(image_path).convert("RGB").resize((args.resolution, args.resolution))
            with torch.autocast(accelerator.device.type, dtype=weight_dtype,
                                enabled=weight_dtype != torch.float32):
                n = args.num_validation_images  # the image by name: SDXL's pipeline takes prompt_2 second
                inputs = dict(height=args.resolution, width=args.resolution, generator=generator,
                              num_inference_steps=args.num_validation_inference_steps,
                              guidance_scale=args.validation_guidance_scale)
                # the family names the conditioning argument and what else must match training (SD3's T5 length...)
                inputs |= models.family.pipeline_inputs(models, [condition] * n)
                if conditioning_scale is not None:
                    inputs["controlnet_conditioning_scale"] = conditioning_scale
                images = pipeline([prompt] * n, **inputs).images
            rows.append({"prompt": prompt, "condition": condition, "images": images})
        return rows

    rows = draw()
    log_path = Path(args.output_dir) / "train_log.jsonl"
    scored = getattr(args, "validation_condition", None)
    # the floor the score rises from: the base alone on the same validation, once a run (a resumed run logged it)
    baseline_rows = draw(conditioning_scale=0.0) if scored and not logged_baseline(log_path) else None
    controlnet.train(was_training)
    vae.to(encoders_device)
    for encoder in models.text_encoders.values():
        encoder.to(encoders_device)

    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            for row in rows:
                stacked = np.stack([np.asarray(im) for im in [row["condition"], *row["images"]]])
                tracker.writer.add_images(row["prompt"], stacked, step, dataformats="NHWC")
    grid = image_grid([[row["condition"], *row["images"]] for row in rows])
    path = Path(args.output_dir) / "validation" / f"step-{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    record = {"step": step, "grid": str(path), "prompts": [row["prompt"] for row in rows]}
    if scored:  # --validation_condition: ControlNet++'s controllability
        record["consistency"] = validation_consistency(args.validation_condition, rows)
        entries = [{"step": step, "consistency": record["consistency"]}]
        if baseline_rows is not None:
            record["consistency_without_controlnet"] = validation_consistency(args.validation_condition, baseline_rows)
            entries.append({"step": step, "consistency_without_controlnet": record["consistency_without_controlnet"]})
        with open(log_path, "a") as log:
            for entry in entries:
                log.write(json.dumps(entry | {"validation_condition": args.validation_condition}) + "\n")
        accelerator.log({f"validation/{key}": value for entry in entries for key, value in entry.items()
                         if key != "step"}, step=step)
    return record


def logged_baseline(log_path) -> bool:
    """Whether ``train_log.jsonl`` already holds the base-alone consistency (``consistency_without_controlnet``)."""
    return any("consistency_without_controlnet" in entry for entry in read_log(log_path))


def read_log(log_path) -> list[dict]:
    """The entries of a ``train_log.jsonl`` (none if it does not exist), skipping a line a crash cut short."""
    entries = []
    if Path(log_path).is_file():
        for line in Path(log_path).read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return entries


MODEL_CARD = """\
---
base_model: {base}
library_name: diffusers
tags: [{tags}]
---

# ControlNet trained with the ControlNet course

Trained with `python -m cnhelpers.train` (same flags as diffusers' train_controlnet.py) on `{data}`.

| setting | value |
| --- | --- |
| base model | `{base}` |
| steps | {steps} |
| batch size (per device x processes x accumulation) | {batch} |
| learning rate | {lr} |
| resolution | {resolution} |
| Min-SNR γ | {snr_gamma} |
| mixed precision | {mixed_precision} |
| seed | {seed} |
{lora}
{validation}{consistency}
```python
from diffusers import {controlnet_class}, {pipeline}
controlnet = {controlnet_class}.from_pretrained("{output_dir}")
pipe = {pipeline}.from_pretrained("{base}", controlnet=controlnet)
```
"""


def lora_card_text(args, family) -> str:
    """The model card's lines for a LoRA ControlNet (``--lora_rank``): its rank and alpha, and how to load its adapters
    (none for a ControlNet trained in full)."""
    if args.lora_rank is None:
        return ""
    alpha = args.lora_alpha if args.lora_alpha is not None else args.lora_rank
    return (f"| LoRA rank (alpha) | {args.lora_rank} ({alpha:g}) |\n\n"
            f"A LoRA ControlNet: adapters of rank {args.lora_rank} on the blocks copied from the base, the conditioning "
            "embedding and zero convolutions trained in full. The weights here have the adapters merged in; "
            f"`{LORA_FOLDER}/` holds the adapters alone (`{ADAPTER_FILE}`, diffusers' `save_lora_adapter` format) and the "
            f"fully trained modules (`{FULL_MODULES_FILE}`): `cnhelpers.lora.load_lora_controlnet(unet, folder)` makes the "
            f"ControlNet from the base's {family.denoiser_name} and loads them (`load_lora_adapter`).\n")


def consistency_card_text(log_path) -> str:
    """The model card's table of the condition-consistency score logged at each validation (``--validation_condition``:
    ControlNet++'s controllability, :mod:`cnhelpers.consistency`) and the base alone's, read from ``train_log.jsonl``;
    empty when none was logged."""
    entries = read_log(log_path)
    rows = [entry for entry in entries if "consistency" in entry]
    if not rows:
        return ""
    table = "".join(f"| {entry['step']} | {entry['consistency']:.3f} |\n" for entry in rows)
    floor = [entry["consistency_without_controlnet"] for entry in entries if "consistency_without_controlnet" in entry]
    without = (f"\nWithout the ControlNet (the base alone: conditioning scale 0, the same prompts and seeds): "
               f"{floor[-1]:.3f}.\n" if floor else "")
    return (f"\nCondition consistency at each validation (`--validation_condition {rows[-1].get('validation_condition')}`: "
            "the condition extracted again from each validation picture and compared with the one it was given; 1 is "
            "perfect, and a ControlNet that ignores its condition stays where the base alone scores):\n\n"
            f"| step | consistency |\n| --- | --- |\n{table}{without}")


def save_final_controlnet(controlnet, args, global_step: int, total_batch_size: int, validation: dict | None,
                          family):
    """Write the trained ControlNet (diffusers format) and a model card into ``output_dir``; ``family`` (the base's,
    :mod:`cnhelpers.families`) names the pipeline and the tags of the card.

    Files go to a temporary folder first (removed if writing fails, e.g. on a full disk) and are moved into
    place one by one (each move is atomic).
    """
    output_dir = Path(args.output_dir)
    staging = Path(tempfile.mkdtemp(prefix=".final-", dir=output_dir))
    try:
        save_controlnet(controlnet, staging)  # (a LoRA ControlNet: merged, and its adapters in lora/)
        grid = ""
        if validation:
            grid = (f"Validation at step {validation['step']}:\n\n"
                    f"![validation]({Path(validation['grid']).relative_to(output_dir)})\n")
        (staging / "README.md").write_text(MODEL_CARD.format(
            base=args.pretrained_model_name_or_path, data=args.dataset_name or args.train_data_dir,
            steps=global_step, batch=total_batch_size, lr=args.learning_rate, resolution=args.resolution,
            snr_gamma=args.snr_gamma, mixed_precision=args.mixed_precision or "no", seed=args.seed,
            validation=grid, consistency=consistency_card_text(output_dir / "train_log.jsonl"), output_dir=output_dir,
            pipeline=family.pipeline_name, tags=", ".join(family.card_tags()),
            controlnet_class=family.controlnet_class, lora=lora_card_text(args, family)))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not (staging / LORA_FOLDER).exists() and (output_dir / LORA_FOLDER).is_dir():
        shutil.rmtree(output_dir / LORA_FOLDER)  # a LoRA run's adapters, which these weights no longer match
    for item in staging.iterdir():
        if item.is_dir() and (output_dir / item.name).is_dir():  # (a folder is replaced whole: an earlier run's lora/)
            shutil.rmtree(output_dir / item.name)
        os.replace(item, output_dir / item.name)
    staging.rmdir()


class TrainLog:
    """``train_log.jsonl``: one JSON line per optimizer step, appended (and flushed) as the step ends.

    A run resumed from step N keeps the lines of steps 1..N and drops any later ones (steps a crash lost with
    the weights they had made), so the file of a finished run holds every step once. The file is rewritten when
    the first step ends, not before: a run that stops before it (an unreadable image in its first batch) leaves
    the log it found as it was.
    """

    def __init__(self, path, resumed_step: int = 0, enabled: bool = True):
        self.path, self.enabled, self.resumed_step = Path(path), enabled, resumed_step
        self._started = False

    def _kept_lines(self) -> list[str]:
        """The lines a resumed run keeps: steps 1..resumed_step (none for a new run)."""
        kept = []
        if self.resumed_step and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a crash
                    continue
                if entry.get("step", 0) <= self.resumed_step:
                    kept.append(line + "\n")
        return kept

    def append(self, entry: dict) -> None:
        if not self.enabled:
            return
        if not self._started:  # the kept lines and this step's, in place of the old file at once
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(self._kept_lines()) + json.dumps(entry) + "\n")
            os.replace(tmp, self.path)
            self._started = True
            return
        with open(self.path, "a") as log:
            log.write(json.dumps(entry) + "\n")


def push_to_hub(args) -> str:
    """Upload ``output_dir`` (not its checkpoints) to ``--hub_model_id`` (default: the folder's name)."""
    from huggingface_hub import create_repo, upload_folder

    output_dir = Path(args.output_dir)
    repo_id = args.hub_model_id or output_dir.name
    ignore = ["step_*", "epoch_*", "checkpoint-*", ".run.lock"]
    try:
        repo_id = create_repo(repo_id, exist_ok=True, token=args.hub_token).repo_id
        upload_folder(repo_id=repo_id, folder_path=output_dir, commit_message="End of training",
                      ignore_patterns=list(ignore), token=args.hub_token)  # (it appends to the list)
    except Exception as error:  # an HTTP error, a lost connection: the run itself is complete and saved
        excludes = " ".join(f"--exclude '{pattern}'" for pattern in ignore)
        raise HubUnavailableError(
            f"The upload to the Hugging Face Hub failed ({error_summary(error)}), but the training is complete and "
            f"saved in {output_dir}. Upload it once the Hub answers with `hf upload {repo_id} {output_dir} "
            f"{excludes}` (run again, it sends only what is missing).") from error
    return repo_id
