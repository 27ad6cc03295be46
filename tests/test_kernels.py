"""The course's Jupyter kernels belong to one checkout, and the runner's kernels start quietly.

``make setup``/``setup-flax`` install ``cn-course`` and ``cn-flax`` into the checkout's own venvs (``--sys-prefix``),
and the Makefile's ``JUPYTER_PATH`` puts those before any user-wide kernel, so a CI clone and a learner's checkout
never run each other's Python; the notebooks store the plain names. ``python -m cnhelpers.course.runner`` starts
kernels with CurveZMQ keys, so ipykernel's "running over TCP without encryption" warning is not printed.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.not_colab(reason="the Makefile's kernel set-up and the runner of this checkout's .venv")

ROOT = Path(__file__).resolve().parents[1]


def _make(*args: str) -> str:
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True,
                          text=True, check=True).stdout


def test_make_setup_installs_the_kernels_into_this_checkouts_venvs():
    commands = [line for line in _make("-n", "-B", "setup", "setup-flax").splitlines()
                if "ipykernel install" in line]
    assert len(commands) == 2, commands
    for command, venv, name in zip(commands, (".venv", ".venv-flax"), ("cn-course", "cn-flax")):
        assert f"{ROOT}/{venv}/bin/python -m ipykernel install --sys-prefix --name {name} " in command, command
        assert "--user" not in command, command
    jupyter_path = _make("--eval", "show-jupyter-path: ; @echo $$JUPYTER_PATH", "show-jupyter-path").split()[0]
    assert jupyter_path.split(":")[:2] == [f"{ROOT}/.venv/share/jupyter", f"{ROOT}/.venv-flax/share/jupyter"]


def test_the_notebooks_store_the_plain_kernel_names():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        spec = json.loads(path.read_text())["metadata"]["kernelspec"]
        assert spec["name"] in ("cn-course", "cn-flax"), (path.name, spec)
        assert "/" not in spec["display_name"] and str(ROOT) not in json.dumps(spec), (path.name, spec)


def test_the_runner_starts_kernels_without_the_plain_tcp_warning(tmp_path):
    import nbformat

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "00_quiet.ipynb")
    result = subprocess.run([sys.executable, "-m", "cnhelpers.course.runner", "--notebooks", str(tmp_path),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "00_quiet.ipynb" in result.stdout and " ok" in result.stdout, result.stdout
    assert "without encryption" not in result.stderr + result.stdout, result.stderr
    executed = nbformat.read(tmp_path / "out" / "00_quiet.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "42\n"
