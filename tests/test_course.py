"""The notebooks and the course runner."""

import json
from pathlib import Path

import nbformat
import pytest

from cnhelpers.course.runner import course_notebooks, run_notebook

pytestmark = pytest.mark.colab

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_the_runner_takes_numbered_notebooks_in_order_and_nothing_else(tmp_path):
    for name in ("10_sdxl.ipynb", "02_data.ipynb", "00_setup.ipynb", "notes.ipynb", "1_short.ipynb", "03_x.txt"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in course_notebooks(tmp_path)] == ["00_setup.ipynb", "02_data.ipynb", "10_sdxl.ipynb"]
    assert course_notebooks(NOTEBOOKS)[0].name == "00_setup.ipynb"


def test_stored_notebooks_have_no_errors_and_nbval_can_read_them():
    for path in course_notebooks(NOTEBOOKS):
        nb = json.loads(path.read_text())
        assert nb["metadata"]["kernelspec"]["name"]
        for cell in nb["cells"]:
            if cell["cell_type"] != "code":
                continue
            assert all(o["output_type"] != "error" for o in cell.get("outputs", [])), path.name
            if cell.get("outputs"):
                assert cell.get("execution_count") is not None, f"{path.name}: outputs without a count"


def test_every_notebook_has_objectives_and_a_recap():
    for path in course_notebooks(NOTEBOOKS):
        text = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                         if c["cell_type"] == "markdown")
        assert "Learning objectives" in text and "Recap" in text, path.name


def _notebook(tmp_path, *sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "00_demo.ipynb"
    nbformat.write(nb, path)
    return path


def test_runner_reports_ok_and_writes_the_executed_copy(tmp_path):
    path = _notebook(tmp_path, "print(6 * 7)")
    passed, seconds, message = run_notebook(path, tmp_path / "out" / path.name)
    assert passed and message == "ok" and seconds > 0
    executed = nbformat.read(tmp_path / "out" / path.name, as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "42\n"


def test_runner_names_the_failing_cell(tmp_path):
    path = _notebook(tmp_path, "x = 1", "raise ValueError('bad resolution')", "print('never')")
    passed, _, message = run_notebook(path, tmp_path / "out.ipynb")
    assert not passed
    assert message == "FAILED at code cell 1: ValueError: bad resolution"


def test_runner_skips_a_notebook_whose_kernel_is_not_installed(tmp_path):
    path = _notebook(tmp_path, "print(1)")
    nb = nbformat.read(path, as_version=4)
    nb.metadata["kernelspec"]["name"] = "no-such-kernel-for-sure"
    nbformat.write(nb, path)
    passed, _, message = run_notebook(path, tmp_path / "out.ipynb")
    assert not passed and message.startswith("skipped") and "no-such-kernel-for-sure" in message


def test_every_colab_cell_and_badge_uses_the_one_repository_address():
    import re

    from cnhelpers.course.colab import REPOSITORY, colab_cell, is_colab_cell

    for path in course_notebooks(NOTEBOOKS):
        cells = [c for c in json.loads(path.read_text())["cells"] if is_colab_cell(c)]
        if path.name != "05_flax_tpu.ipynb":  # the Flax notebook runs in its own environment, not on Colab
            assert ["".join(c["source"]) for c in cells] == [colab_cell()], path.name
    readme = (NOTEBOOKS.parent / "README.md").read_text()
    badges = re.findall(r"colab.research.google.com/github/([^/]+/[^/]+)/blob/", readme)
    assert badges and set(badges) == {REPOSITORY.removeprefix("https://github.com/")}


def test_checked_outputs_are_marked_by_cell_tags_not_comments():
    tagged = 0
    for path in course_notebooks(NOTEBOOKS):
        for cell in json.loads(path.read_text())["cells"]:
            assert "NBVAL_CHECK_OUTPUT" not in "".join(cell["source"]), path.name
            tagged += "nbval-check-output" in cell.get("metadata", {}).get("tags", [])
    assert tagged >= 50  # the stable facts nbval compares


def test_every_notebook_says_how_long_it_runs():
    for path in course_notebooks(NOTEBOOKS):
        first = "".join(json.loads(path.read_text())["cells"][0]["source"])
        assert "**Runtime.**" in first and "2-core CPU" in first, path.name


def test_a_failed_in_place_run_leaves_the_stored_notebook_and_keeps_its_copy_to_read(tmp_path, monkeypatch, capsys):
    from cnhelpers.course import runner

    path = _notebook(tmp_path, "print('stored')", "raise ValueError('bad resolution')")
    stored = path.read_bytes()
    monkeypatch.setattr(runner, "IN_PLACE_RUNS", tmp_path / "runs")
    assert runner.main(["--notebooks", str(tmp_path), "--in-place"]) == 1
    assert path.read_bytes() == stored
    failed = nbformat.read(tmp_path / "runs" / path.name, as_version=4)
    assert failed.cells[1].outputs[0]["ename"] == "ValueError"
    assert "the stored notebook is unchanged" in capsys.readouterr().out
