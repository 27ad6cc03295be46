"""The course on its real paths, on a CPU: notebooks 00, 01, 03 and 06 with ``CN_PROFILE=sd15``, and 07 with
``CN_PROFILE=sdxl``, loading ``stable-diffusion-v1-5/stable-diffusion-v1-5``, ``stabilityai/stable-diffusion-xl-
base-1.0``, ``madebyollin/sdxl-vae-fp16-fix`` and ``fusing/fill50k`` over HTTP from the loopback test Hub
(``hub_server.py``: the real file trees, the course's tiny weights).

Run by ``make test-real-paths``: it builds and starts the server, points ``HF_ENDPOINT`` at it, runs nbval on the
notebooks and stops the server. The profiles are made small for a CPU (``CN_PROFILE_OVERRIDES``: 64 px, a few
steps, no fp16, which needs a GPU); their stored outputs are the tiny profile's, so outputs are not compared
here (``real_paths_sanitize.cfg`` blanks them): every cell must run without an error.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from hub_repos import serving  # noqa: E402

SMALL = "resolution=64, mixed_precision=no, course_train_steps=4, max_train_steps=4, num_generated_examples=64"
LEGS = (("sd15", ["00_setup.ipynb", "01_dataset_transforms.ipynb", "03_training_loop.ipynb", "06_inference.ipynb"]),
        ("sdxl", ["07_sdxl.ipynb"]))


def main() -> int:
    build = ROOT / "build" / "real-paths"
    build.mkdir(parents=True, exist_ok=True)
    status = 0
    with serving(build / "hub-root") as hub, tempfile.TemporaryDirectory() as hf_home:
        for profile, notebooks in LEGS:
            env = hub.env(hf_home, CN_PROFILE=profile, CN_PROFILE_OVERRIDES=SMALL,
                          CN_BUILD_DIR=str(build / profile), PYTHONPATH=str(ROOT))
            command = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
                       "--nbval-sanitize-with", str(HERE / "real_paths_sanitize.cfg"),
                       *[str(ROOT / "notebooks" / name) for name in notebooks]]
            print(f"== CN_PROFILE={profile} ({SMALL}) against {hub.url}", flush=True)
            status = subprocess.run(command, env=env, cwd=ROOT).returncode or status  # every leg runs
    return status


if __name__ == "__main__":
    sys.exit(main())
