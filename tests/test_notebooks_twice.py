"""tests/notebooks_twice.py: a doubled notebook runs every cell twice, and nbval then fails a second run that differs."""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebooks_twice import (  # noqa: E402
    CHECK_TAG, FIRST_RUN, RUN_ONCE, SECOND_RUN_MARKER, SHORT_RUN, checked_outputs, doubled, main, set_parameters)

pytestmark = pytest.mark.not_colab(
    reason="a text transform of notebooks, run by the same nbval in both venvs; the Colab leg runs the notebooks "
           "itself")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_a_doubled_notebook_holds_every_cell_twice_with_the_stored_outputs():
    stored = nbformat.read(NOTEBOOKS / "00_setup.ipynb", as_version=4)
    twice = doubled(stored)
    nbformat.validate(twice)
    n = len(stored.cells)
    assert len(twice.cells) == 2 * n + 1 and twice.cells[n].source == SECOND_RUN_MARKER
    assert [c.source for c in twice.cells[n + 1:]] == [c.source for c in stored.cells]
    checked = checked_outputs(twice)
    first = {i: text for i, text in checked.items() if i < n}
    second = {i - n - 1: text for i, text in checked.items() if i > n}
    assert first and first == second == checked_outputs(stored)
    ids = [c.get("id") for c in twice.cells if c.get("id")]
    assert len(ids) == len(set(ids))


def checked_notebook(source: str, stored_text: str):
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": [CHECK_TAG]}, execution_count=1,
                                     outputs=[nbformat.v4.new_output("stream", name="stdout", text=stored_text)])
    return nbformat.v4.new_notebook(cells=[cell])


@pytest.mark.parametrize("source, passes", [
    ("print(1)", True),
    # a second Run All in the same kernel finds the first one's state: the figure it prints changes
    ("runs = globals().get('runs', 0) + 1\nprint(runs)", False),
])
def test_nbval_on_the_doubled_notebook_fails_a_second_run_that_prints_other_figures(tmp_path, source, passes):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nbformat.write(checked_notebook(source, "1\n"), folder / "01_probe.ipynb")
    assert main([str(folder), "--out", str(tmp_path / "twice")]) == 0
    run = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
                          "-q", str(tmp_path / "twice")], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert (run.returncode == 0) == passes, run.stdout[-2000:]
    if not passes:
        # nbval numbers code cells only: Cell 0 is the first run's, Cell 1 the second run's copy, which alone fails
        assert "01_probe.ipynb::Cell 1" in run.stdout and "01_probe.ipynb::Cell 0" not in run.stdout


def test_no_matching_notebook_is_one_line_and_a_non_zero_exit(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path / "twice")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def parameters_source(nb) -> list[str]:
    return [c.source for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


def test_each_notebook_the_rule_names_exists_and_its_short_run_sets_parameters_its_notebook_has():
    for stem, reason in RUN_ONCE.items():
        assert (NOTEBOOKS / f"{stem}.ipynb").is_file() and reason.strip(), stem
    for stem, values in SHORT_RUN.items():
        nb = nbformat.read(NOTEBOOKS / f"{stem}.ipynb", as_version=4)
        set_parameters(nb, values)  # raises when the parameters cell lacks one of them
        assert all(f"{name} = {value!r}" in parameters_source(nb)[0] for name, value in values.items())


def test_a_parameter_the_notebook_does_not_have_is_refused():
    nb = nbformat.read(NOTEBOOKS / "03_training_loop.ipynb", as_version=4)
    with pytest.raises(ValueError, match="sets no NO_SUCH_KNOB"):
        set_parameters(nb, {"NO_SUCH_KNOB": 1})


def test_a_notebook_run_once_is_written_once_short_where_it_has_a_short_run_and_the_others_doubled(tmp_path):
    assert main([str(NOTEBOOKS), "--out", str(tmp_path), "--skip", "05_"]) == 0
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]*_*.ipynb")):
        if path.stem.startswith("05_"):
            continue
        stored, written = (nbformat.read(p, as_version=4) for p in (path, tmp_path / path.name))
        if path.stem in RUN_ONCE:
            assert len(written.cells) == len(stored.cells), path.name
            changed = [w.source for w, c in zip(written.cells, stored.cells) if w.source != c.source]
            if path.stem in SHORT_RUN:  # its parameters cell alone, with the short values
                assert changed == parameters_source(written), path.name
                assert all(f"{name} = {value!r}" in changed[0] for name, value in SHORT_RUN[path.stem].items())
            else:
                assert changed == [], path.name
            continue
        n = len(stored.cells)
        assert len(written.cells) == 2 * n + 1 and written.cells[n].source == SECOND_RUN_MARKER, path.name
        first, second = parameters_source(written)
        if path.stem in FIRST_RUN:  # the stored run's values but those FIRST_RUN sizes down
            assert all(f"{name} = {value!r}" in first for name, value in FIRST_RUN[path.stem].items())
            set_parameters(stored, FIRST_RUN[path.stem], "tests/notebooks_twice.py: FIRST_RUN")
        assert first == parameters_source(stored)[0]  # the first run is the stored one's
        for name, value in SHORT_RUN.get(path.stem, {}).items():
            assert f"{name} = {value!r}" in second, (path.name, name)
        if path.stem not in SHORT_RUN:
            assert second == first, path.name


def test_once_short_writes_each_notebook_once_with_its_short_values_and_short_needs_once(tmp_path, capsys):
    assert main([str(NOTEBOOKS), "--out", str(tmp_path), "--skip", "05_", "--once", "--short"]) == 0
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]*_*.ipynb")):
        if path.stem.startswith("05_"):
            continue
        stored, written = (nbformat.read(p, as_version=4) for p in (path, tmp_path / path.name))
        assert len(written.cells) == len(stored.cells), path.name
        changed = [i for i, (a, b) in enumerate(zip(stored.cells, written.cells)) if a.source != b.source]
        if path.stem in SHORT_RUN:
            assert all(f"{n} = {v!r}" in parameters_source(written)[0] for n, v in SHORT_RUN[path.stem].items())
            assert len(changed) == 1, path.name  # the parameters cell, nothing else
        else:
            assert not changed, path.name
    with pytest.raises(SystemExit):
        main([str(NOTEBOOKS), "--out", str(tmp_path), "--short"])
    assert "--short goes with --once" in capsys.readouterr().err
