"""Base families: one module each, the one place that knows its family; the loop asks the family, never its name.

A family module provides a subclass of :class:`cnhelpers.families.family.Family` and an instance ``FAMILY``:

- ``claims(model_index, folder)``: whether a base folder is this family's (from its ``model_index.json``);
- ``components``: the folders of a base it loads (and so the files a Hub snapshot fetches);
- ``load(...)``: the frozen parts and the ControlNet, made from the denoiser (``from_unet``) or loaded;
- ``encode_prompts`` / ``encode_batch_text`` / ``text_shape``: how prompts become conditioning;
- ``step_constants``, ``noised``, ``step_inputs``, ``predict``, ``loss``: how a clean latent becomes a noisy
  input and a target, what the ControlNet and the denoiser read, and the weighted loss;
- ``step_memory``, ``vae_in_float32``: memory facts; ``validation_pipeline``, ``pipeline_name``, ``card_tags``:
  what validation, inference and the model card use.

Adding a family: a new module here with its ``FAMILY``, and one line in :data:`FAMILIES` (most specific first).
"""

from __future__ import annotations

import json
from pathlib import Path

from .family import Family, Models, StepConstants, StepMemory
from .sd import FAMILY as SD
from .sdxl import FAMILY as SDXL

#: Every family, asked in this order (most specific first) which one a base belongs to.
FAMILIES: tuple[Family, ...] = (SDXL, SD)

__all__ = ["FAMILIES", "Family", "Models", "StepConstants", "StepMemory", "detect_family", "family_named"]


def read_model_index(folder: str | Path) -> dict:
    """A base folder's ``model_index.json`` as a dict (``{}`` when it has none)."""
    index = Path(folder) / "model_index.json"
    return json.loads(index.read_text()) if index.is_file() else {}


def detect_family(folder: str | Path) -> Family:
    """The family of the base in ``folder`` (a local folder holding at least its ``model_index.json``), from the
    pipeline class its ``model_index.json`` names (or, without one, from its parts)."""
    folder = Path(folder)
    index = read_model_index(folder)
    for family in FAMILIES:
        if family.claims(index, folder):
            return family
    what = f"its model_index.json names {index.get('_class_name')!r}" if index else "it has no model_index.json"
    raise ValueError(f"{folder} is not a base the course can train a ControlNet for ({what}). Known families: "
                     + ", ".join(f"{f.name} ({', '.join(getattr(f, 'pipelines', ()))})" for f in FAMILIES)
                     + ". Pass a base in diffusers' layout with one of those pipelines.")


def family_named(name: str) -> Family:
    """The family called ``name`` ("sd", "sdxl")."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ValueError(f"No base family {name!r}: the families are {', '.join(f.name for f in FAMILIES)}.")
