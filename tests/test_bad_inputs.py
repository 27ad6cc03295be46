"""The bad-input and fault matrix of ``python -m cnhelpers.train``: one row per input.

Each row calls ``cnhelpers.train.main(argv)``, the CLI's own function, in this process (a few run the real CLI in
a subprocess: SUBPROCESS says which and why) with the tiny base and 8 fill examples at 64 px, and checks the
standard: exit status 2 (143 for SIGTERM), the last line of stderr is ``error: ...`` naming the problem and the
fix, no traceback, and nothing written or lost (a previous run's checkpoints and ``train_log.jsonl`` as they were;
no checkpoint and no ``config.json`` in a fresh output_dir). A few rows are inputs that must work (a corrupt newest
checkpoint is skipped, pictures of different sizes but the same shape): they check the run and its warning line.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnhelpers.checkpoints import checkpoint_problem, find_checkpoint, list_checkpoints
from cnhelpers.course.fill import write_fill_imagefolder
from cnhelpers.tokenizer import BOS, EOS, write_clip_tokenizer

#: Colab's leg runs the rows whose error comes through a library (datasets, PIL, accelerate's checkpoints,
#: diffusers' and transformers' loading, the Hub client: ``colab=True``); the rest are the course's own checks of
#: flags, paths and memory, and the SIGTERM handling, the same code on either stack.
pytestmark = pytest.mark.not_colab(reason="the rows refused by the course's own checks; the rows whose error comes "
                                          "through a library are marked colab one by one")

ROOT = Path(__file__).resolve().parents[1]
#: Every run: 2 steps of batch 2 at 64 px, no trackers, no checkpoint (unless a row asks for one).
COMMON = ["--resolution", "64", "--train_batch_size", "2", "--max_train_steps", "2", "--report_to", "none",
          "--checkpointing_steps", "1000", "--seed", "0", "--learning_rate", "1e-4", "--lr_warmup_steps", "0"]


def cli_env(**extra) -> dict:
    """The environment of a CLI run: this checkout's cnhelpers, one thread, offline."""
    return os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                         "HF_HUB_OFFLINE": "1", **extra}


def run_cli(argv, timeout=120, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnhelpers.train", *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, env=cli_env(**env))


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (or the file itself) with its size and modification time."""
    if folder.is_file():
        return {".": (folder.stat().st_size, folder.stat().st_mtime_ns, folder.read_bytes())}
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def logged_steps(output_dir: Path) -> list[int]:
    """The steps of train_log.jsonl (a line still being written is left out)."""
    steps = []
    for line in (output_dir / "train_log.jsonl").read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except json.JSONDecodeError:
            pass
    return steps


def controlnet_state(folder) -> dict:
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(folder).state_dict()


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


# --- What the rows share: the tiny base, 8 examples, a previous run, and the odd inputs ----------------------

@pytest.fixture(scope="module")
def world(tiny_base, tmp_path_factory):
    """Everything the rows read, made once: data sets, a previous run (finished, and interrupted before its
    final save), a ControlNet of another base, odd tokenizers and images."""
    root = tmp_path_factory.mktemp("bad-inputs")
    data = write_fill_imagefolder(root / "fill", 8, 64, seed=0)
    w = {"base": Path(tiny_base), "data": data, "root": root}

    # a previous run: 4 steps, checkpoints 2 and 4, its log
    finished = root / "finished"
    done = run_cli(["--pretrained_model_name_or_path", tiny_base, "--train_data_dir", data, "--output_dir", finished,
                    *COMMON, "--max_train_steps", "4", "--checkpointing_steps", "2"])
    assert done.returncode == 0, done.stderr[-3000:]
    w["finished"] = finished
    w["finished_state"] = controlnet_state(finished)
    interrupted = root / "interrupted"  # as if killed after checkpoint-4, before the final save
    shutil.copytree(finished, interrupted)
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "README.md"):
        (interrupted / name).unlink()
    w["interrupted"] = interrupted

    # a ControlNet made for a base with other channels
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    other = UNet2DConditionModel(**{**unet.config, "block_out_channels": (32, 32), "norm_num_groups": 16})
    ControlNetModel.from_unet(other).save_pretrained(root / "other-controlnet")
    w["other_controlnet"] = root / "other-controlnet"

    # a tokenizer that knows no caption word (nor the byte alphabet: every caption becomes unknown tokens)
    unknown = root / "unknown-tokenizer"
    unknown.mkdir()
    (unknown / "vocab.json").write_text(json.dumps({"h": 0, "i</w>": 1, "hi</w>": 2, BOS: 3, EOS: 4}))
    (unknown / "merges.txt").write_text("#version: 0.2\nh i</w>\n")
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy(Path(tiny_base) / "tokenizer" / name, unknown / name)
    w["unknown_tokenizer"] = unknown
    # a tokenizer with more tokens than the tiny text encoder has embeddings
    from cnhelpers.course.fill import caption_words

    w["big_tokenizer"] = write_clip_tokenizer(root / "big-tokenizer",
                                              caption_words() + [f"word{i}" for i in range(300)])

    Image.new("RGB", (64, 64)).save(root / "outline.png")
    (root / "not-an-image.png").write_text("this is text")
    (root / "a-file").write_text("not a folder")
    return w


def variant(world, name: str, edit) -> Path:
    """A copy of the 8-example data set changed by ``edit(folder)`` (made once per name)."""
    folder = world["root"] / name
    if not folder.exists():
        shutil.copytree(world["data"], folder)
        edit(folder)
    return folder


def rewrite_metadata(folder: Path, change) -> None:
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):
        change(i, row)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def empty_data(folder):
    (folder / "metadata.jsonl").write_text("")


def truncated_png(folder):
    truncate(folder / "images" / "00003.png")


def resized_condition(size):
    def edit(folder):
        for name in ("00001.png", "00005.png"):
            path = folder / "conditioning_images" / name
            Image.open(path).convert("RGB").resize(size).save(path)
    return edit


def captions_of(value):
    def edit(folder):
        rewrite_metadata(folder, lambda i, row: row.update(text=value(i, row["text"])))
    return edit


# --- The rows --------------------------------------------------------------------------------------------

@dataclass
class Row:
    """One bad input: the flags added to a run, the phrases its error line must contain (regexes: the problem
    and the fix), and how its output_dir starts (``interrupted``: a previous run's checkpoints and log, which
    must survive untouched; ``fresh``: nothing, and nothing may appear)."""

    name: str
    flags: list
    phrases: list
    code: int = 2
    output: str = "interrupted"
    data: object = None  # (name, edit) of a data-set variant
    env: dict = field(default_factory=dict)
    in_process: bool = True  # main(argv) here; False (SUBPROCESS): the real CLI in a subprocess
    prepare: object = None  # prepare(output_dir, world, monkeypatch) before the run
    check: object = None  # check(output_dir, world, stdout, stderr) after it


def _corrupt_newest(out, world, monkeypatch):
    truncate(out / "checkpoint-4" / "controlnet" / "diffusion_pytorch_model.safetensors")


def _corrupt_all(out, world, monkeypatch):
    for checkpoint in list_checkpoints(out):
        truncate(checkpoint / "optimizer.bin")


def _resumed_from_the_good_one(out, world, stdout, stderr):
    # warned about checkpoint-4 by name, resumed from checkpoint-2, trained 3 and 4 again, re-saved checkpoint-4
    assert re.search(r"warning: .*checkpoint-4 is incomplete or corrupt \(controlnet/diffusion_pytorch_model"
                     r"\.safetensors is \d+ bytes, checkpoint\.json says \d+\)", stderr)
    assert re.search(r"Resuming from .*checkpoint-2\b", stdout)
    assert logged_steps(out) == [1, 2, 3, 4]
    assert checkpoint_problem(out / "checkpoint-4") is None
    resumed = controlnet_state(out)
    assert all(torch.equal(world["finished_state"][k], resumed[k]) for k in resumed)  # as if never corrupt


def _trained(out, world, stdout, stderr):
    assert "Trained 2 steps" in stdout and (out / "config.json").is_file()


def _skipped_the_bad_image(out, world, stdout, stderr):
    assert re.search(r"warning: --skip_bad_images: left out Row 3: cannot read the 'image' image "
                     r"\(.*00003\.png\)", stderr)
    assert "left out 1 of 8 rows" in stderr
    _trained(out, world, stdout, stderr)


def _disk_full(monkeypatch):
    """accelerate's writer fills the disk half-way through checkpoint-4's optimizer state."""
    import accelerate.checkpointing

    real = accelerate.checkpointing.save

    def save(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f):
            Path(f).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(accelerate.checkpointing, "save", save)


def _disk_full_lost_nothing(out, world, stdout, stderr):
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert checkpoint_problem(out / "checkpoint-2") is None
    assert not list(out.glob("checkpoint-4*")) and not list(out.glob(".final-*"))
    assert find_checkpoint(out, "latest").name == "checkpoint-2"  # (no warning: nothing partial is left)
    assert logged_steps(out) == [1, 2, 3, 4]  # the log of every step done is kept


def _memory_limit(monkeypatch):
    import cnhelpers.loading

    monkeypatch.setattr(cnhelpers.loading, "available_memory", lambda device: (256 * 2**20, "the available RAM"))


CPU_ONLY = not torch.cuda.is_available()

ROWS = [
    # flags: each refused by check_args, before anything is loaded
    Row("resolution-not-a-multiple-of-8", ["--resolution", "100"],
        [r"resolution=100 is not a positive multiple of 8", r"Use 96 or 104"]),
    Row("batch-size-0", ["--train_batch_size", "0"], [r"--train_batch_size must be at least 1, got 0"]),
    Row("accumulation-0", ["--gradient_accumulation_steps", "0"],
        [r"--gradient_accumulation_steps must be at least 1, got 0"]),
    Row("checkpointing-steps-0", ["--checkpointing_steps", "0"], [r"--checkpointing_steps must be at least 1"]),
    Row("learning-rate-0", ["--learning_rate", "0"], [r"--learning_rate must be positive, got 0", r"about 1e-5"]),
    Row("learning-rate-negative", ["--learning_rate", "-1e-4"],
        [r"--learning_rate must be positive, got -0\.0001", r"about 1e-5"]),
    Row("negative-snr-gamma", ["--snr_gamma", "-5"], [r"--snr_gamma must be positive", r"5\.0 is usual"]),
    Row("new-embedding-init-for-a-loaded-controlnet",
        ["--conditioning_embedding_init", "kaiming", "--controlnet_model_name_or_path", "{other_controlnet}"],
        [r"--conditioning_embedding_init kaiming starts a new ControlNet", r"leave one of them out"]),
    Row("max-train-samples-0", ["--max_train_samples", "0"],
        [r"--max_train_samples must be at least 1, got 0", r"leave it out"]),
    Row("max-train-steps-0", ["--max_train_steps", "0"],
        [r"--max_train_steps must be at least 1, got 0", r"leave it out for --num_train_epochs"]),
    Row("validation-count-mismatch",
        ["--validation_prompt", "a", "b", "--validation_image", "x.png", "y.png", "z.png"],
        [r"2 validation prompts but 3 validation images", r"give as many of each"]),
    Row("unknown-flag", ["--snr_gama", "5"], [r"unknown flags: --snr_gama \(did you mean --snr_gamma\?\)", r"--help"]),
    Row("compile-mode-without-inductor", ["--torch_compile", "aot_eager", "--torch_compile_mode", "max-autotune"],
        [r"--torch_compile_mode max-autotune sets a mode of inductor", r"add --torch_compile"]),
    # speed flags that cannot run here: refused in setup, before the models are loaded
    Row("unknown-compile-backend", ["--torch_compile", "no-such-backend"],
        [r"--torch_compile no-such-backend: not a torch\.compile backend", r"use one of .*\binductor\b"]),
    Row("inductor-on-a-cpu-without-a-cxx-compiler", ["--torch_compile"],
        [r"--torch_compile on a CPU needs a C\+\+ compiler .* none is on PATH", r"apt install g\+\+",
         r"without --torch_compile"], env={"PATH": "/nonexistent-bin"}),
    pytest.param(Row("fp16-on-a-cpu", ["--mixed_precision", "fp16"],
                     [r"fp16 needs a CUDA GPU", r"--mixed_precision no"]),
                 marks=pytest.mark.skipif(not CPU_ONLY, reason="fp16 is allowed on a GPU")),
    # paths: refused in setup, before the models are loaded
    Row("output-dir-is-a-file", ["--output_dir", "{root}/a-file"], [r"is a file, not a folder", r"pass a folder"],
        output="none"),
    Row("output-dir-under-a-file", ["--output_dir", "{root}/a-file/run"], [r"cannot be made: .*a-file is a file"],
        output="none"),
    Row("missing-train-data-dir", ["--train_data_dir", "{root}/nowhere"],
        [r"--train_data_dir .*nowhere does not exist", r"pass an imagefolder"]),
    Row("missing-validation-image", ["--validation_prompt", "red circle", "--validation_image", "{root}/none.png"],
        [r"--validation_image .*none\.png does not exist", r"pass the path of a conditioning image"]),
    Row("validation-image-not-an-image",
        ["--validation_prompt", "red circle", "--validation_image", "{root}/not-an-image.png"],
        [r"not-an-image\.png is not a readable image", r"pass a PNG or JPEG"]),
    Row("missing-checkpoint", ["--resume_from_checkpoint", "checkpoint-7"],
        [r"'checkpoint-7' does not exist", r"checkpoints there: checkpoint-2, checkpoint-4; or pass 'latest'"]),
    Row("named-checkpoint-corrupt", ["--resume_from_checkpoint", "checkpoint-4"],
        [r"checkpoint-4 is incomplete or corrupt \(controlnet/diffusion_pytorch_model\.safetensors is \d+ bytes",
         r"resume from another checkpoint \(checkpoint-2\) or 'latest'"], prepare=_corrupt_newest),
    # memory: refused once the models are loaded, before anything is allocated for a step
    Row("resolution-too-large", ["--resolution", "100000"],  # (a subprocess: it must not be killed for memory)
        [r"--resolution 100000 with --train_batch_size 2 needs at least [\d.]+ TiB",
         r"(available RAM|free memory of GPU|container's memory limit) .*is [\d.]+ [GT]iB",
         r"use --resolution \d+ or less|Use --train_batch_size \d+"]),
    Row("resolution-fits-no-machine", ["--resolution", "1000000", "--train_batch_size", "1"],
        [r"needs at least [\d.]+ TiB", r"Even --train_batch_size 1 does not fit: use --resolution \d+ or less"]),
    Row("batch-too-large-for-the-memory", ["--resolution", "512", "--train_batch_size", "8"],
        [r"needs at least [\d.]+ MiB .* but the available RAM is 256\.0 MiB",
         r"Use --train_batch_size [1-7] \(with --gradient_accumulation_steps \d+ to keep the effective batch\)"], prepare=lambda out, world, mp: _memory_limit(mp)),
    # models (each loads the tiny base)
    Row("missing-base-model", ["--pretrained_model_name_or_path", "{root}/no-base"],
        [r"no-base' is not an existing folder, nor a hub id", r"check the path"]),
    Row("hub-id-offline", ["--pretrained_model_name_or_path", "owner/some-base"],
        [r"Cannot get the model 'owner/some-base' .*HF_HUB_OFFLINE is set", r"pass a local folder"]),
    Row("controlnet-of-another-base", ["--controlnet_model_name_or_path", "{other_controlnet}"],
        [r"does not fit the base model: its block_out_channels is \[32, 32\], the base UNet's is \[64, 64\]",
         r"leave out --controlnet_model_name_or_path"]),  # (a subprocess: the real CLI's fit check)
    Row("tokenizer-knows-no-caption-word", ["--tokenizer_name", "{unknown_tokenizer}"],
        [r"turns \d+ of the captions' \d+ tokens into its unknown token \(words such as 'background'",
         r"mostly unknown tokens", r"leave out --tokenizer_name"]),
    Row("tokenizer-larger-than-the-text-encoder", ["--tokenizer_name", "{big_tokenizer}"],
        [r"has \d+ tokens, but the text encoder has only \d+ embeddings", r"leave out --tokenizer_name"]),
    # data: refused before the first example is transformed (a broken image: when it is read, here while caching)
    Row("empty-data-set", [], [r"is empty \(metadata\.jsonl has no rows\)", r"add examples"],
        data=("empty", empty_data)),
    Row("unknown-image-column", ["--image_column", "img"],
        [r"--image_column 'img' is not a column", r"image, conditioning_image, text", r"Pass --image_column"]),
    Row("integer-captions", [], [r"Row 0: the caption \('text' column\) is \d+ \(int\), not text",
                                 r"give every example a string caption"],
        data=("int-captions", captions_of(lambda i, text: i))),
    Row("missing-captions", [], [r"Row 2: the caption \('text' column\) is None", r"string caption"],
        data=("none-captions", captions_of(lambda i, text: None if i == 2 else text))),
    Row("truncated-png", [], [r"Row 3: cannot read the 'image' image \(.*images/00003\.png\)",
                              r"pass --skip_bad_images"],
        data=("truncated", truncated_png)),
    Row("different-aspect-ratios", [], [r"Row \d: the image is 64x64 but the conditioning image is 128x64",
                                        r"Crop or pad one to the other's aspect ratio"],
        data=("aspect", resized_condition((128, 64)))),
    Row("every-checkpoint-corrupt", ["--resume_from_checkpoint", "latest"],
        [r"Every checkpoint in .* is incomplete or corrupt \(checkpoint-4, checkpoint-2\)", r"delete them"],
        prepare=_corrupt_all),
    # faults while training
    Row("disk-full-during-a-checkpoint", ["--max_train_steps", "4", "--checkpointing_steps", "2"],
        [r"No space left on device while saving checkpoint-4", r"checkpoint-2 is intact", r"free space",
         r"--output_dir on another disk"],
        output="fresh", prepare=lambda out, world, mp: _disk_full(mp), check=_disk_full_lost_nothing),
    # inputs that must work
    Row("truncated-png-skipped", ["--skip_bad_images"], [], code=0, output="fresh",
        data=("truncated", truncated_png), check=_skipped_the_bad_image),
    Row("same-aspect-different-sizes", [], [], code=0, output="fresh", data=("sizes", resized_condition((128, 128))),
        check=_trained),
    Row("newest-checkpoint-corrupt-resume-latest",  # (a subprocess: the real CLI resumes)
        ["--resume_from_checkpoint", "latest", "--max_train_steps", "4", "--checkpointing_steps", "2"], [], code=0,
        prepare=_corrupt_newest, check=_resumed_from_the_good_one),
]


#: The rows run as the real CLI in a subprocess, and why; the others call ``cnhelpers.train.main(argv)`` in this
#: process (the same function the CLI calls, without a Python start-up and torch's import per row).
SUBPROCESS = {
    "unknown-flag": "argparse's exit, as the CLI ends",
    "resolution-too-large": "it must not be killed for memory",
    "controlnet-of-another-base": "the real CLI's fit check",
    "truncated-png": "PIL reading a broken file in a fresh process",
    "newest-checkpoint-corrupt-resume-latest": "the real CLI resumes",
}
#: The rows whose error comes through a library that Colab pins at another version (datasets, PIL, accelerate's
#: and safetensors' checkpoints, diffusers' and transformers' loading, the Hub client): Colab's leg runs these.
THROUGH_A_LIBRARY = {
    "validation-image-not-an-image", "named-checkpoint-corrupt", "missing-base-model", "hub-id-offline",
    "controlnet-of-another-base", "tokenizer-knows-no-caption-word", "tokenizer-larger-than-the-text-encoder",
    "empty-data-set", "unknown-image-column", "integer-captions", "missing-captions", "truncated-png",
    "different-aspect-ratios", "every-checkpoint-corrupt", "disk-full-during-a-checkpoint", "truncated-png-skipped",
    "same-aspect-different-sizes", "newest-checkpoint-corrupt-resume-latest",
}


def _placed(row):
    """A row with its process (SUBPROCESS) and its Colab mark (THROUGH_A_LIBRARY)."""
    if not isinstance(row, Row):
        return row  # already a pytest.param (fp16-on-a-cpu: this machine's, not a library's)
    row.in_process = row.name not in SUBPROCESS
    return pytest.param(row, marks=[pytest.mark.colab] if row.name in THROUGH_A_LIBRARY else [], id=row.name)


ROWS = [_placed(row) for row in ROWS]

def row_id(row):
    return row.name


@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_bad_input(row, world, tmp_path, monkeypatch, capsys):
    places = {k: str(v) for k, v in world.items() if isinstance(v, Path)}
    out = tmp_path / "out"
    if row.output == "interrupted":
        shutil.copytree(world["interrupted"], out)
    data = variant(world, *row.data) if row.data else world["data"]
    flags = [str(f).format(**places) for f in row.flags]
    argv = ["--pretrained_model_name_or_path", world["base"], "--train_data_dir", data, "--output_dir", out,
            *COMMON, *flags]
    if row.prepare is not None:
        row.prepare(out, world, monkeypatch)
    target = Path(flags[flags.index("--output_dir") + 1]) if "--output_dir" in flags else out
    before = snapshot(target)

    if row.in_process:
        from cnhelpers.train import main

        for name, value in row.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        capsys.readouterr()
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        stdout, stderr = captured.out, captured.err
    else:
        done = run_cli(argv, **row.env)
        code, stdout, stderr = done.returncode, done.stdout, done.stderr

    assert "Traceback" not in stderr, stderr[-3000:]
    assert code == row.code, stderr[-3000:]
    if row.code:
        line = last_line(stderr)
        assert line.startswith("error: "), stderr[-3000:]
        for phrase in row.phrases:
            assert re.search(phrase, line), f"{phrase!r} not in {line!r}"
        if row.check is None:  # nothing written, nothing lost
            assert snapshot(target) == before
            if row.output == "fresh":
                assert not list(out.glob("checkpoint-*")) and not (out / "config.json").exists()
    if row.check is not None:
        row.check(out, world, stdout, stderr)


def test_the_matrix_has_a_row_for_every_required_input():
    names = {(r.values[0] if hasattr(r, "values") else r).name for r in ROWS}
    assert len(names) == len(ROWS) >= 22
    assert set(SUBPROCESS) | THROUGH_A_LIBRARY <= names  # no name there that is no row's


# --- SIGTERM while a checkpoint is being written -----------------------------------------------------------

def sigterm_run(world, out, wait_for):
    """Start an 8-step run checkpointing every step, wait until ``wait_for()`` holds, send SIGTERM, and return
    (exit status, stderr, the flags)."""
    argv = ["--pretrained_model_name_or_path", world["base"], "--train_data_dir", world["data"], "--output_dir",
            out, *COMMON, "--max_train_steps", "8", "--checkpointing_steps", "1"]
    process = subprocess.Popen([sys.executable, "-m", "cnhelpers.train", *map(str, argv)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=cli_env())
    deadline = time.monotonic() + 120
    while not wait_for() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert process.poll() is None, "the run ended before the signal"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr, argv


def check_stopped_cleanly_and_resumes(out, code, stderr, argv):
    """What SIGTERM must leave: one line, 143, complete checkpoints only (none partial), a log of the steps up
    to the newest one at least, and a resume that ends with every step logged once."""
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr
    line = last_line(stderr)
    assert re.fullmatch(r"error: stopped by SIGTERM after step \d; the newest checkpoint is checkpoint-\d: resume "
                        r"with --resume_from_checkpoint latest \(the steps after it are trained again\)\.", line), line
    assert all(checkpoint_problem(p) is None for p in list_checkpoints(out))
    assert not list(out.glob("*.partial")) and not (out / "config.json").exists()
    newest = find_checkpoint(out, "latest")
    assert logged_steps(out)[:int(newest.name.split("-")[1])] == list(range(1, int(newest.name.split("-")[1]) + 1))
    resumed = run_cli([*argv, "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {newest}" in resumed.stdout
    assert logged_steps(out) == list(range(1, 9))
    return line, newest


def test_sigterm_during_a_checkpoint_finishes_it_then_stops_with_one_line(world, tmp_path):
    out = tmp_path / "out"
    k = random.Random(17).randint(2, 5)  # the checkpoint being written when SIGTERM arrives
    code, stderr, argv = sigterm_run(world, out, (out / f"checkpoint-{k}.partial").exists)
    line, newest = check_stopped_cleanly_and_resumes(out, code, stderr, argv)
    # the checkpoint being written was finished, and the run stopped right after it
    assert newest.name == f"checkpoint-{k}" and f"after step {k};" in line


def test_sigterm_at_a_random_time_leaves_only_complete_checkpoints(world, tmp_path):
    out = tmp_path / "out"
    # a seeded moment after step k, within about a step (~50 ms here): in a step, or in a checkpoint
    rng = random.Random(23)
    k, delay, start = rng.randint(1, 5), rng.uniform(0, 0.05), []

    def ready():
        if not start and (out / "train_log.jsonl").is_file() and k in logged_steps(out):
            start.append(time.monotonic())
        return bool(start) and time.monotonic() - start[0] > delay

    check_stopped_cleanly_and_resumes(out, *sigterm_run(world, out, ready))


# --- The checks themselves -----------------------------------------------------------------------------------

def test_the_memory_bound_refuses_no_real_run():
    """The bound counts only what certainly coexists: SD 1.5 at 512 px, batch 4, in float32, stays far below any
    GPU the course trains it on (it is AdamW's 2.9 GB and a little), so nothing that could run is refused."""
    from types import SimpleNamespace

    from cnhelpers.course.tiny_bases import sd15_unet_and_controlnet_on_meta
    from cnhelpers.families.sd import step_memory

    unet, controlnet = sd15_unet_and_controlnet_on_meta()
    need = step_memory(SimpleNamespace(denoiser=unet, controlnet=controlnet, vae=None), 512)
    total = 4 * (need.host_per_example + need.device_per_example) + need.device_fixed
    assert 2.8 * 2**30 < total < 4 * 2**30
    # and it grows with the pixels: at 100000 px no machine has it
    huge = step_memory(SimpleNamespace(denoiser=unet, controlnet=controlnet, vae=None), 100000)
    assert huge.device_per_example > 2**40


def test_available_memory_names_its_limit():
    from cnhelpers.env import available_memory, format_bytes

    available, limit = available_memory("cpu")
    assert available > 0 and ("RAM" in limit or "limit" in limit)
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(3 * 2**40) == "3.0 TiB" and format_bytes(12) == "12 B"


def test_a_tokenizer_that_loses_a_few_words_warns_naming_them(world):
    from transformers import AutoTokenizer

    from cnhelpers.tokenizer import check_tokenizer_fits

    tokenizer = AutoTokenizer.from_pretrained(world["unknown_tokenizer"])
    with pytest.warns(UserWarning, match=r"turns 3 of the captions' 7 tokens into its unknown token \(words such as "
                                         r"'red'\): the text encoder cannot tell those words apart"):
        check_tokenizer_fits(tokenizer, ["hi hi hi hi red"], vocab_size=5, name="this tokenizer")
    with pytest.raises(ValueError, match=r"has 5 tokens, but the text encoder has only 4 embeddings"):
        check_tokenizer_fits(tokenizer, ["hi"], vocab_size=4)
