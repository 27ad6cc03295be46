"""A JupyterLab server on loopback and a headless Chromium driving it (``make test-browser``).

The server runs from this Python's environment (the course venv) on 127.0.0.1, a free port and a random token,
over a copy of ``notebooks/`` in ``build/browser/notebooks`` (the stored notebooks are never touched), with its
own settings, workspaces and runtime folders. Its kernels get ``CN_PROFILE=tiny``, this checkout on
``PYTHONPATH``, their own build folder (``build/browser/work``) and a small data set (``CN_PROFILE_OVERRIDES``);
notebook 03's copy trains a few steps (its ``parameters`` cell). The server is stopped by its own process id.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from notebooks_twice import SHORT_RUN  # noqa: E402

BROWSER_BUILD = ROOT / "build" / "browser"
SCREENSHOTS = BROWSER_BUILD / "screenshots"
CHROMIUM = os.environ.get("CN_CHROMIUM", "/usr/bin/chromium")
#: A small generated data set (the tiny profile's 2,048 examples are encoded again by every training run).
#: The browser test checks that every cell runs and renders, not what is learned (nbval checks outputs).
PROFILE_OVERRIDES = "num_generated_examples=64"
#: Values for the ``parameters`` cells of the copies: the short runs of the doubled notebooks' second runs
#: (tests/notebooks_twice.py), the smallest that still show every widget: notebook 03 trains a few steps, 06
#: draws its pictures in a few steps and scores a few outlines.
PARAMETERS = {f"{stem}.ipynb": values for stem, values in SHORT_RUN.items()}
# 06's drawing widget needs a ControlNet that follows a stroke: the one the course ships, not the 4 steps 03 trains
# here (their picture did not change when a stroke was drawn)
PARAMETERS["06_inference.ipynb"] = {**PARAMETERS["06_inference.ipynb"],
                                    "CONTROLNET": str(ROOT / "cnhelpers" / "assets" / "tiny-controlnet")}
#: Every cell in the DOM, in view or not (JupyterLab's default windowing attaches only the cells in view).
LAB_SETTINGS = {"@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
                # No "Would you like to get notified about Jupyter news?" toast over the notebook
                "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                                   "checkForUpdates": False}}


def free_port() -> int:
    """A TCP port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Lab:
    """A running JupyterLab server: its base URL, token and process."""

    def __init__(self, url: str, token: str, process: subprocess.Popen, root_dir: Path, log: Path):
        self.url, self.token, self.process, self.root_dir, self.log = url, token, process, root_dir, log

    def api(self, path: str, method: str = "GET"):
        """The JSON answer of the server's REST API at ``path`` (None for an empty answer)."""
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def notebook_url(self, name: str, workspace: str) -> str:
        """The address that opens notebook ``name`` in JupyterLab, logged in with the token, in a workspace of its
        own (the default one would reopen the notebooks opened before it, each starting a kernel)."""
        return f"{self.url}/lab/workspaces/{workspace}/tree/{name}?token={self.token}"

    def shut_down_kernels(self):
        """Shut down every session's kernel (one notebook's kernel must not hold memory through the next)."""
        for session in self.api("/api/sessions") if self.process.poll() is None else []:
            self.api(f"/api/sessions/{session['id']}", method="DELETE")


def set_parameters(path: Path, values: dict):
    """Set ``values`` in the notebook's ``parameters`` cell (as papermill would), each name having to be there."""
    notebook = json.loads(path.read_text())
    cell = next(c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    lines = "".join(cell["source"]).splitlines(keepends=True)
    for name, value in values.items():
        found = [i for i, line in enumerate(lines) if re.match(rf"{name}\s*=", line)]
        if not found:
            raise ValueError(f"{path.name}: its parameters cell sets no {name}")
        lines[found[0]] = f"{name} = {value!r}  # set by tests_browser\n"
    cell["source"] = lines
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")


def write_lab_settings(settings_dir: Path):
    for relative, values in LAB_SETTINGS.items():
        path = settings_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def wait_until_serving(lab: Lab, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with status {lab.process.returncode}; see {lab.log}")
        try:
            lab.api("/api/status")
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s; see {lab.log}")


def stop(process: subprocess.Popen, grace: float = 20):
    """Stop ``process`` by its id: SIGTERM (JupyterLab then shuts its kernels down), SIGKILL after ``grace`` s."""
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


def interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def lab():
    """JupyterLab on 127.0.0.1 over a copy of the notebooks, stopped by its process id at the end."""
    notebooks = BROWSER_BUILD / "notebooks"
    shutil.rmtree(BROWSER_BUILD, ignore_errors=True)
    shutil.copytree(ROOT / "notebooks", notebooks)
    for name, values in PARAMETERS.items():
        set_parameters(notebooks / name, values)
    for folder in ("settings", "workspaces", "runtime", "config", "work"):
        (BROWSER_BUILD / folder).mkdir(parents=True)
    write_lab_settings(BROWSER_BUILD / "settings")
    SCREENSHOTS.mkdir(parents=True)
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # kernel "python3"
           "PYTHONPATH": str(ROOT), "CN_PROFILE": "tiny", "CN_PROFILE_OVERRIDES": PROFILE_OVERRIDES,
           "CN_BUILD_DIR": str(BROWSER_BUILD / "work"),
           # One thread per kernel: the tiny models gain nothing from more, and a busy CI machine loses a lot.
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "JUPYTERLAB_SETTINGS_DIR": str(BROWSER_BUILD / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(BROWSER_BUILD / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(BROWSER_BUILD / "runtime"),
           "JUPYTER_CONFIG_DIR": str(BROWSER_BUILD / "config")}
    log = BROWSER_BUILD / "jupyterlab.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={notebooks}", "--LabApp.expose_app_in_browser=True",
               "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False"]
    if os.geteuid() == 0:  # CI containers run as root
        command.append("--allow-root")
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, env=env, cwd=notebooks, stdout=log_file, stderr=subprocess.STDOUT)
    server = Lab(f"http://127.0.0.1:{port}", token, process, notebooks, log)
    previous = signal.signal(signal.SIGTERM, interrupt)  # a CI timeout's SIGTERM still stops the server
    try:
        wait_until_serving(server)
        yield server
    finally:
        stop(process)
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium, headless, driven by Playwright (no browser is downloaded)."""
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"No Chromium at {CHROMIUM}: install it (apt-get install chromium), or set CN_CHROMIUM.")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()
