"""Exact resume at every point, through the real CLI: a run killed with SIGKILL between checkpoints and resumed
with ``--resume_from_checkpoint latest`` ends with the weights of an uninterrupted run, bit for bit, and a log
that holds every step once; what makes a checkpoint complete (its manifest, or for older checkpoints whole
files). Resuming a finished run changes nothing: tests/test_training.py, in process."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from diffusers import ControlNetModel

from cnhelpers.checkpoints import MANIFEST, checkpoint_problem, find_checkpoint, list_checkpoints
from cnhelpers.course.fill import write_fill_imagefolder

pytestmark = pytest.mark.not_colab(
    reason="exact resume rests on the loop's own seeding and checkpoint manifests; accelerate's saving and loading "
           "of state runs on Colab's versions in test_training's resume test and notebook 03")

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 12, 3  # 8 examples in batches of 2: 4 steps an epoch, so the run crosses two epochs


def command(base, data, output_dir, *extra):
    flags = ["--pretrained_model_name_or_path", base, "--train_data_dir", data, "--output_dir", output_dir,
             "--resolution", "64", "--train_batch_size", "2", "--max_train_steps", str(STEPS),
             "--checkpointing_steps", str(EVERY), "--seed", "0", "--learning_rate", "1e-4", "--lr_warmup_steps", "0",
             "--snr_gamma", "5", "--proportion_empty_prompts", "0.3", "--report_to", "none", *extra]
    return [sys.executable, "-m", "cnhelpers.train", *map(str, flags)]


ENV = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


def run(argv) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def logged_steps(output_dir: Path) -> list[int]:
    """The steps of train_log.jsonl (a last line cut short by a kill is left out)."""
    steps = []
    path = output_dir / "train_log.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            steps.append(json.loads(line)["step"])
        except json.JSONDecodeError:
            pass
    return steps


@pytest.fixture(scope="module")
def straight(tiny_base, tmp_path_factory):
    """The data, and an uninterrupted run of STEPS steps (checkpoints every EVERY)."""
    root = tmp_path_factory.mktemp("resume")
    data = write_fill_imagefolder(root / "fill", 8, 64, seed=0)
    run(command(tiny_base, data, root / "straight"))
    return {"base": tiny_base, "data": data, "out": root / "straight"}


def test_a_run_killed_between_checkpoints_resumes_to_the_same_weights_and_logs_every_step_once(straight, tmp_path):
    kill_after = random.Random(1717).choice([s for s in range(4, STEPS - 1) if s % EVERY])  # between checkpoints
    out = tmp_path / "killed"
    process = subprocess.Popen(command(straight["base"], straight["data"], out), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 120
    while (not logged_steps(out) or logged_steps(out)[-1] < kill_after) and process.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    before = logged_steps(out)
    newest = find_checkpoint(out, "latest")
    assert before[-1] < STEPS and not (out / "config.json").exists()  # killed mid-run, before the final save
    assert newest is not None and checkpoint_problem(newest) is None
    assert int(newest.name.split("-")[1]) == before[-1] // EVERY * EVERY or before[-1] % EVERY == 0

    resumed = run(command(straight["base"], straight["data"], out, "--resume_from_checkpoint", "latest"))
    assert f"Resuming from {newest}" in resumed.stdout
    assert logged_steps(out) == list(range(1, STEPS + 1))  # the steps after the checkpoint logged once, again
    expected = ControlNetModel.from_pretrained(straight["out"]).state_dict()
    got = ControlNetModel.from_pretrained(out).state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    # the log's losses too: the resumed steps computed exactly what the uninterrupted run computed
    lines = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    straight_lines = [json.loads(line) for line in (straight["out"] / "train_log.jsonl").read_text().splitlines()]
    assert lines == straight_lines


# --- What makes a checkpoint complete ----------------------------------------------------------------------

def test_every_checkpoint_has_a_manifest_of_its_files(straight):
    for checkpoint in list_checkpoints(straight["out"]):
        manifest = json.loads((checkpoint / MANIFEST).read_text())
        files = {p.relative_to(checkpoint).as_posix(): p.stat().st_size for p in checkpoint.rglob("*")
                 if p.is_file() and p.name != MANIFEST}
        # and the run's choices that a resumed run repeats (the fast path: tests/test_cache.py)
        assert manifest == {"step": int(checkpoint.name.split("-")[1]), "files": files, "cached": True}
        assert "controlnet/diffusion_pytorch_model.safetensors" in files and "optimizer.bin" in files


def test_a_checkpoint_from_before_the_manifest_is_accepted_while_its_files_are_whole(straight, tmp_path):
    old = tmp_path / "checkpoint-12"
    shutil.copytree(straight["out"] / "checkpoint-12", old)
    (old / MANIFEST).unlink()
    assert checkpoint_problem(old) is None
    data = (old / "optimizer.bin").read_bytes()
    (old / "optimizer.bin").write_bytes(data[:len(data) // 2])
    assert checkpoint_problem(old) == f"optimizer.bin is not a whole torch archive ({len(data) // 2} bytes)"


@pytest.mark.parametrize("victim, problem", [
    ("controlnet/diffusion_pytorch_model.safetensors", r"controlnet/diffusion_pytorch_model\.safetensors is \d+ "
                                                       r"bytes, checkpoint\.json says \d+"),
    ("random_states_0.pkl", r"random_states_0\.pkl is \d+ bytes, checkpoint\.json says \d+"),
])
def test_latest_skips_a_cut_checkpoint_with_a_warning_naming_it(straight, tmp_path, victim, problem):
    out = tmp_path / "run"
    shutil.copytree(straight["out"], out)
    path = out / "checkpoint-12" / victim
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match=rf"checkpoint-12 is incomplete or corrupt \({problem}\): skipping it"):
        assert find_checkpoint(out, "latest") == out / "checkpoint-9"
    with pytest.raises(ValueError, match=r"checkpoint-12 is incomplete or corrupt .* resume from another checkpoint "
                                         r"\(checkpoint-3, checkpoint-6, checkpoint-9\)"):
        find_checkpoint(out, "checkpoint-12")


def test_a_partial_checkpoint_is_never_latest(straight, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(straight["out"], out)
    shutil.copytree(out / "checkpoint-12", out / "checkpoint-15.partial")
    assert find_checkpoint(out, "latest") == out / "checkpoint-12"


@pytest.mark.parametrize("family", ["flux", "sdxl"])
def test_a_flux_or_sdxl_run_resumed_from_step_2_ends_with_the_weights_of_an_uninterrupted_run(family, fill_dir,
                                                                                              tmp_path):
    """Exact resume through each family's own step (SD 1.5's: above; SD3's: tests/test_sd3.py)."""
    from safetensors.torch import load_file

    from cnhelpers.config import training_args
    from cnhelpers.course.tiny_sdxl import build_tiny_sdxl_base
    from cnhelpers.course.tiny_transformers import build_tiny_flux_base
    from cnhelpers.training import train

    base = {"flux": build_tiny_flux_base, "sdxl": build_tiny_sdxl_base}[family](tmp_path / "base", seed=0)
    flags = dict(pretrained_model_name_or_path=base, train_data_dir=fill_dir, resolution=64, train_batch_size=4,
                 learning_rate=1e-3, lr_warmup_steps=0, seed=0, report_to="none", checkpointing_steps=1000,
                 cache="never", **({"max_sequence_length": 16} if family == "flux" else {}))
    train(training_args(**flags, output_dir=tmp_path / "whole", max_train_steps=4))
    halves = flags | dict(output_dir=tmp_path / "halves", checkpointing_steps=2)
    train(training_args(**halves, max_train_steps=2))
    resumed = train(training_args(**halves, max_train_steps=4, resume_from_checkpoint="latest"))
    assert resumed.global_step == 4
    whole, halved = (load_file(tmp_path / run / "diffusion_pytorch_model.safetensors") for run in ("whole", "halves"))
    assert whole.keys() == halved.keys() and all(torch.equal(whole[key], halved[key]) for key in whole)
    zero_initialised = [key for key in whole if key.startswith(("controlnet_blocks", "controlnet_down_blocks"))]
    assert zero_initialised and any(whole[key].abs().max() > 0 for key in zero_initialised)  # the run trained
