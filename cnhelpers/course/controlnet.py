"""The course's ControlNet: where notebook 03 saves it, the trained one the course ships, and which of the two a
later notebook (06, the drawing widget) uses.

The choice is made here, once: notebook 03's own run (``build/controlnet-tiny``) when the learner has made it, else,
on the tiny profile, the ControlNet shipped in ``cnhelpers/assets/tiny-controlnet`` (trained with notebook 03's
recipe; its model card says how, its held-out IoU and its size), so that notebook 06 and a workshop start at once.
"""

from __future__ import annotations

from pathlib import Path

from ..config import training_args
from ..loading import is_controlnet_folder
from ..outputs import log_validation
from ..paths import build_dir, shown_path
from ..training import prepare_models, setup, train
from .profiles import get_profile
from .recipes import course_training_args, how_to_make_controlnet
from .tiny_bases import base_model_path

#: Where notebook 03 saves its ControlNet, under the build folder.
CONTROLNET_DIRNAME = "controlnet-tiny"

#: The trained tiny ControlNet shipped with the course, beside the tiny base (``assets/tiny-sd``).
SHIPPED_CONTROLNET = Path(__file__).resolve().parent.parent / "assets" / "tiny-controlnet"


def default_controlnet_path() -> Path:
    """``build/controlnet-tiny``: where notebook 03 puts its ControlNet."""

    return build_dir() / CONTROLNET_DIRNAME


def controlnet_origin(path: str | Path) -> str:
    """Which ControlNet ``path`` is, in words: notebook 03's run, the one shipped with the course, or yours."""
    path = Path(path)
    if path.resolve() == SHIPPED_CONTROLNET.resolve():
        return (f"the course's shipped ControlNet ({shown_path(path)}, trained with the course's 1,200-step recipe; run "
                "notebook 03 and this notebook uses yours)")
    if path.resolve() == default_controlnet_path().resolve():
        return f"notebook 03's run ({shown_path(path)})"
    return f"yours ({shown_path(path)})"


def ensure_controlnet(profile=None, path: str | Path | None = None, max_train_steps: int | None = None,
                      seed: int = 0) -> Path:
    """The ControlNet a later notebook uses.

    Without ``path``: notebook 03's (``build/controlnet-tiny``) when it has been run, else, on the tiny profile,
    the shipped one (:data:`SHIPPED_CONTROLNET`); nothing is trained. On the GPU profiles a missing ControlNet
    raises FileNotFoundError saying how to make it.

    With ``path``: that folder. If it is missing and ``max_train_steps`` is given (tiny profile only), a run of the
    course's recipe that long is trained there first (benchmarks use this); otherwise FileNotFoundError.
    """
    profile = get_profile(profile) if profile is None or isinstance(profile, str) else profile
    if path is None:
        if is_controlnet_folder(default_controlnet_path()):
            return default_controlnet_path()
        if profile.pretrained_model_name_or_path is None and is_controlnet_folder(SHIPPED_CONTROLNET):
            return SHIPPED_CONTROLNET
        path = default_controlnet_path()
    path = Path(path)
    if is_controlnet_folder(path):
        return path
    if profile.pretrained_model_name_or_path is not None:
        raise FileNotFoundError(f"No ControlNet at {path} for the {profile.name} profile. Train it with notebook 03 "
                                f"(CN_PROFILE={profile.name}), or pass the folder or hub id of yours.")
    if max_train_steps is None:
        raise FileNotFoundError(f"No ControlNet at {path}, and the shipped one ({SHIPPED_CONTROLNET}) is missing "
                                f"too (a stripped install?).\n{how_to_make_controlnet(path, profile)}")
    print(f"No ControlNet at {path}: training one with the course's recipe for {max_train_steps} steps.")
    train(course_training_args(profile, base_model_path(profile), path, max_train_steps=max_train_steps, seed=seed))
    return path


def step_zero_validation(args, output_dir) -> dict:
    """The validation grid of ``args``'s run before its first step (the new ControlNet, whose zero convolutions
    add nothing: the base alone), made by the run's own code (``setup``, ``prepare_models``, ``log_validation``),
    its grid written under ``output_dir``. Returns its validation record (``step`` 0, ``grid``, ``prompts``)."""
    flags = {**vars(args), "output_dir": str(output_dir), "report_to": "none"}
    run_args, accelerator = setup(training_args(**flags))
    step_setup = prepare_models(run_args, accelerator)
    return log_validation(accelerator, run_args, step_setup.models, step_setup.weight_dtype, 0)
