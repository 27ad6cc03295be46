"""Notebook 09's walkthrough: a folder of "your own pictures" (generated fill pictures written as a user's folder
would be, with a caption in a ``.txt`` file beside each, the LoRA trainers' convention; one wide picture, the crop to
show; one file that is not a picture, the skip log to show), held-out pictures of another seed to validate on, and
the course's commands run as a shell runs them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

from ..paths import project_root
from .fill import fill_example
from .held_out import HELD_OUT_SEED

#: How much wider than tall the wide picture is: the centre crop drops this share of its width.
WIDE_RATIO = 1.5
#: The file written as a picture that no reader can open (``make_dataset`` skips it and lists it in skipped.txt).
BROKEN_NAME = "scan_0013.png"


def widened(picture: Image.Image, ratio: float = WIDE_RATIO) -> Image.Image:
    """``picture`` on a canvas ``ratio`` times as wide, the extra width filled with its top-left pixel's colour (the
    background of a fill picture), the picture in the middle: a landscape photo of the same scene."""
    width, height = picture.size
    wide = Image.new(picture.mode, (round(width * ratio), height), picture.getpixel((0, 0)))
    wide.paste(picture, ((wide.width - width) // 2, 0))
    return wide


def write_own_pictures(folder: str | Path, num_pictures: int, resolution: int = 64, seed: int = 0) -> dict:
    """Write ``num_pictures`` fill pictures to ``folder`` (emptied first) as ``photo_0000.png`` ... with their captions
    in ``photo_0000.txt`` ...; the first picture is written ``WIDE_RATIO`` times as wide (:func:`widened`), and
    :data:`BROKEN_NAME` holds bytes that are not a picture. Returns ``{"folder", "pictures", "wide", "broken"}``."""
    if num_pictures < 1:
        raise ValueError(f"num_pictures must be at least 1, got {num_pictures}")
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for index in range(num_pictures):
        example = fill_example(seed, index, resolution)
        picture = widened(example["image"]) if index == 0 else example["image"]
        picture.save(folder / f"photo_{index:04d}.png")
        (folder / f"photo_{index:04d}.txt").write_text(example["text"] + "\n")
    (folder / BROKEN_NAME).write_bytes(b"this file was cut short by a failed copy\n")
    return {"folder": folder, "pictures": num_pictures, "wide": folder / "photo_0000.png",
            "broken": folder / BROKEN_NAME}


def held_out_pictures(n: int, resolution: int = 64, seed: int = HELD_OUT_SEED) -> list[dict]:
    """``n`` fill examples (``image``, ``text``) of a seed the training pictures do not use, to validate on."""
    return [fill_example(seed, index, resolution) for index in range(n)]


def run_command(words: list[str]) -> str:
    """Run ``python -m ...`` (``words``, from ``python`` on) from the course's root, as a shell there would, with this
    process's environment (the local Hub's, once :func:`cnhelpers.course.hub_server.local_hub` ran), and return its
    standard output without progress bars. A command that fails raises a RuntimeError ending with its last
    ``error:`` line."""
    if not words or words[0] != "python":
        raise ValueError(f"run_command runs python commands: got {shlex.join(words)!r}")
    done = subprocess.run([sys.executable, *words[1:]], cwd=project_root() or Path.cwd(), capture_output=True,
                          text=True, env=dict(os.environ), check=False)
    if done.returncode != 0:
        last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or [f"exit status {done.returncode}"]
        raise RuntimeError(f"{shlex.join(words)} failed: {last[0]}")
    return "\n".join(line for line in done.stdout.splitlines() if "\r" not in line and "it/s" not in line)


def command_words(flags: dict, module: str = "cnhelpers.train") -> list[str]:
    """``python -m module`` and ``flags`` as the words of a command (a list value gives several words, True a bare
    flag, None and False nothing): what :func:`run_command` runs, and ``shlex.join`` shows."""
    words = ["python", "-m", module]
    for name, value in flags.items():
        if value is None or value is False:
            continue
        words.append(f"--{name}")
        if value is not True:
            values = value if isinstance(value, (list, tuple)) else [value]
            words.extend(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
    return words


def shown_command(words: list[str]) -> str:
    """A command as a shell takes it, one flag per line: quoted where a word needs it, lines ending in ``\\``."""
    return shlex.join(words).replace(" --", " \\\n  --")


def latest_result(pattern: str) -> dict:
    """The newest ``benchmarks/results/`` JSON file whose name matches ``pattern`` (the date in the name orders
    them), read, with its file name under ``"file"``; a FileNotFoundError naming the benchmark if there is none."""
    import json

    root = project_root()
    found = sorted((root / "benchmarks" / "results").glob(pattern)) if root else []
    if not found:
        raise FileNotFoundError(f"no benchmarks/results/{pattern} in this checkout: run the benchmark that writes it "
                                "(benchmarks/README.md)")
    return json.loads(found[-1].read_text()) | {"file": f"benchmarks/results/{found[-1].name}"}
