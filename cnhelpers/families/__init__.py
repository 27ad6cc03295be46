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

A family's own flags (``flags``: SD's ``--snr_gamma``, SD3's ``--precondition_outputs``, Flux's
``--num_single_layers``...) are refused on a base of another family (:func:`check_family_flags`), and a ControlNet
made for another family is refused before it loads (:func:`check_controlnet_family`).

Adding a family: a new module here with its ``FAMILY``, and one line in :data:`FAMILIES` (most specific first).
"""

from __future__ import annotations

import json
from pathlib import Path

from .family import Family, Models, StepConstants, StepMemory
from .flux import FAMILY as FLUX
from .sd import FAMILY as SD
from .sd3 import FAMILY as SD3
from .sdxl import FAMILY as SDXL

#: Every family, asked in this order (most specific first) which one a base belongs to.
FAMILIES: tuple[Family, ...] = (FLUX, SD3, SDXL, SD)

__all__ = ["FAMILIES", "Family", "Models", "StepConstants", "StepMemory", "check_controlnet_family",
           "check_family_flags", "detect_family", "family_named"]


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


def flag_applies(family: Family, name: str) -> bool:
    """Whether the flag ``--name`` applies to a ``family`` base: a flag no family lists applies to every family, one
    that families list applies to those alone (``--snr_gamma`` to SD 1.5 and SDXL, not to SD3 or Flux)."""
    owners = [f for f in FAMILIES if name in f.flags]
    return not owners or family in owners


def check_family_flags(family: Family, changed: dict) -> None:
    """Refuse, in one line, a flag changed from its default (``changed``: name -> value) that belongs to other
    families and not to ``family``, the base's (e.g. ``--num_single_layers`` on an SD 1.5 base): it would be
    silently ignored. Flags no family lists apply to every family."""
    for name in changed:
        owners = [f for f in FAMILIES if name in f.flags]
        if not flag_applies(family, name):
            note = family.flag_notes.get(name)
            raise ValueError(f"--{name} does not apply to a {family.label} base: it is a flag of "
                             f"{', '.join(dict.fromkeys(f.label for f in owners))}"
                             + (f" ({note})" if note else "") + f". Leave out --{name} for this base.")


def check_controlnet_family(family: Family, folder: str | Path) -> None:
    """Refuse, in one line naming the fix, a ControlNet folder (its ``config.json``) whose class is not ``family``'s
    (an SD 1.5 ControlNet for an SD3 base, a Flux one for SDXL...), before its weights are read."""
    config = Path(folder) / "config.json"
    class_name = json.loads(config.read_text()).get("_class_name") if config.is_file() else None
    if class_name is None or class_name == family.controlnet_class:
        return
    made_for = [f.label for f in FAMILIES if f.controlnet_class == class_name]
    what = f"a {class_name}" + (f" (made for a {' or '.join(dict.fromkeys(made_for))} base)" if made_for else "")
    raise ValueError(f"--controlnet_model_name_or_path {folder} is {what}, but the base is {family.label}, whose "
                     f"ControlNet is a {family.controlnet_class}: pass a ControlNet trained for this base, or leave "
                     "out --controlnet_model_name_or_path to make one from the base's "
                     f"{family.denoiser_name}.")
