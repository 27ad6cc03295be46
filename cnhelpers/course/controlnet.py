"""The course's ControlNet: where notebook 03 saves it, and a short run of the course's recipe when a later
notebook (06) needs it and it is missing.
"""

from __future__ import annotations

from pathlib import Path

from ..loading import is_controlnet_folder
from ..paths import build_dir
from ..training import train
from .profiles import get_profile
from .recipes import course_training_args, how_to_make_controlnet
from .tiny_bases import base_model_path

#: Where notebook 03 saves its ControlNet, under the build folder.
CONTROLNET_DIRNAME = "controlnet-tiny"


def default_controlnet_path() -> Path:
    """``build/controlnet-tiny``: where notebook 03 (and :func:`ensure_controlnet`) put the ControlNet."""

    return build_dir() / CONTROLNET_DIRNAME


def ensure_controlnet(profile=None, path: str | Path | None = None, max_train_steps: int = 50,
                      seed: int = 0) -> Path:
    """The ControlNet at ``path`` (default ``build/controlnet-tiny``); train a short one first if it is missing.

    On the tiny profile a missing ControlNet is trained with the course's recipe for ``max_train_steps`` steps
    (well under a minute), after printing how to make the real one (notebook 03). On other profiles a short
    run would be useless, so a missing ControlNet raises FileNotFoundError with the same advice.
    """
    profile = get_profile(profile) if profile is None or isinstance(profile, str) else profile
    path = Path(path) if path is not None else default_controlnet_path()
    if is_controlnet_folder(path):
        return path
    if profile.pretrained_model_name_or_path is not None:
        raise FileNotFoundError(f"No ControlNet at {path} for the {profile.name} profile. Train it with notebook 03 "
                                f"(CN_PROFILE={profile.name}), or pass the folder or hub id of yours.")
    print(f"No ControlNet at {path}.\n{how_to_make_controlnet(path, profile)}\n"
          f"Training a short one now ({max_train_steps} steps) so that this notebook can run; notebook 03 trains "
          "longer.")
    train(course_training_args(profile, base_model_path(profile), path, max_train_steps=max_train_steps, seed=seed))
    return path
