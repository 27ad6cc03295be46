"""CI's legs: .ci/schedule.py runs and times them; every test module declares whether Colab's leg runs it (tests/conftest.py);
.venv-colab takes from .venv only what Colab's install needs (.ci/colab_shared.py)."""

import ast
import os
import re
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.not_colab(reason="CI's own tooling")

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = ROOT / ".ci" / "schedule.py"
TESTS = ROOT / "tests"


def schedule(tmp_path, makefile: str, *legs: str, jobs: int = 2):
    """Run .ci/schedule.py on a toy Makefile; its times file's lines by leg."""
    (tmp_path / "Makefile").write_text(makefile)
    times = tmp_path / "times.txt"
    run = subprocess.run([sys.executable, str(SCHEDULE), "--jobs", str(jobs), "--times", str(times), *legs],
                         cwd=tmp_path, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    lines = {line.split()[0]: line.split()[1:] for line in times.read_text().splitlines()} if times.exists() else {}
    return run, lines


def test_a_leg_records_its_cpu_seconds_even_when_burnt_in_a_grandchild_and_its_failing_status(tmp_path):
    burn = "import time, sys; end = time.process_time() + 1.5\nwhile time.process_time() < end: pass\nsys.exit(3)"
    (tmp_path / "burn.py").write_text(burn)
    run, lines = schedule(tmp_path, f"demo:\n\t@bash -c '{sys.executable} burn.py'\n", "demo")
    assert run.returncode != 0
    wall, status, cpu = lines["demo"]
    assert status == "2" and int(cpu) >= 1  # make's own status for a failed recipe; the CPU of python, make's grandchild
    assert "=== demo: FAILED (2)" in run.stdout


def test_legs_wait_for_what_they_need_and_two_run_side_by_side(tmp_path):
    makefile = ("slow-a:\n\t@sleep 1; echo A-done >> order\nslow-b:\n\t@sleep 1; echo B-done >> order\n"
                "after-a:\n\t@echo after-a >> order\n")
    run, lines = schedule(tmp_path, makefile, "after-a:slow-a", "slow-a", "slow-b")
    assert run.returncode == 0, run.stdout + run.stderr
    order = (tmp_path / "order").read_text().split()
    assert order.index("after-a") > order.index("A-done")
    assert sorted(lines) == ["after-a", "slow-a", "slow-b"]
    # slow-a and slow-b ran at once: each took a second, the whole schedule well under their sum plus after-a
    assert "=== slow-b: started" in run.stdout.split("=== slow-a: ok")[0]


def test_a_failed_leg_skips_the_legs_that_need_it_and_every_other_leg_still_runs(tmp_path):
    makefile = "bad:\n\t@false\nneeds-bad:\n\t@echo never\ngood:\n\t@echo GOOD\n"
    for jobs in (1, 2):
        run, lines = schedule(tmp_path, makefile, "bad", "needs-bad:bad", "good", jobs=jobs)
        assert run.returncode != 0 and "GOOD" in run.stdout and "never" not in run.stdout
        assert "=== needs-bad: skipped, it needs bad, which did not pass" in run.stdout
        assert "needs-bad" not in lines and lines["good"][1] == "0"
        (tmp_path / "times.txt").unlink()


def test_a_leg_that_needs_an_unlisted_leg_is_refused_in_one_line(tmp_path):
    run, _ = schedule(tmp_path, "a:\n\t@true\n", "a:missing")
    assert run.returncode != 0 and run.stderr.strip().splitlines()[-1] == (
        "schedule: a needs missing, which is not a leg; list it too")


def test_side_by_side_legs_get_one_thread_and_one_at_a_time_keeps_the_default(tmp_path):
    makefile = "threads:\n\t@echo threads=$$OMP_NUM_THREADS\n"
    two, _ = schedule(tmp_path, makefile, "threads", jobs=2)
    assert "threads=1" in two.stdout
    one, _ = schedule(tmp_path, makefile, "threads", jobs=1)
    assert "threads=\n" in one.stdout


# --- Colab's leg: the rule of tests/conftest.py -----------------------------------------------------------------

def colab_declarations(path: Path) -> list[tuple[str, str | None]]:
    """The Colab marks of a module's top-level ``pytestmark``: ("colab", None) or ("not_colab", reason)."""
    found = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            marks = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
            for mark in marks:
                call = mark if isinstance(mark, ast.Call) else None
                name = ast.unparse(call.func if call else mark)
                if name == "pytest.mark.colab":
                    found.append(("colab", None))
                elif name == "pytest.mark.not_colab":
                    reasons = [k.value for k in (call.keywords if call else []) if k.arg == "reason"]
                    reason = ast.literal_eval(reasons[0]) if reasons else None
                    found.append(("not_colab", reason))
    return found


@pytest.mark.parametrize("module", sorted(p.name for p in TESTS.glob("test_*.py")))
def test_every_test_module_declares_whether_colabs_leg_runs_it_and_a_decline_gives_its_reason(module):
    declared = colab_declarations(TESTS / module)
    assert len(declared) == 1, (f"{module}: a module-level pytestmark needs exactly one of pytest.mark.colab and "
                                f"pytest.mark.not_colab(reason=...) (tests/conftest.py), found {declared}")
    kind, reason = declared[0]
    assert kind == "colab" or (isinstance(reason, str) and reason.strip()), f"{module}: not_colab without a reason"


def test_the_declaration_reader_sees_each_form_and_its_absence(tmp_path):
    forms = {"pytestmark = pytest.mark.colab\n": [("colab", None)],
             "pytestmark = [pytest.mark.slow, pytest.mark.not_colab(reason='plain data')]\n": [("not_colab",
                                                                                               "plain data")],
             "pytestmark = pytest.mark.not_colab\n": [("not_colab", None)],
             "import pytest\n": []}
    for source, expected in forms.items():
        (tmp_path / "test_x.py").write_text(source)
        assert colab_declarations(tmp_path / "test_x.py") == expected, source


def test_a_module_that_declares_nothing_stops_the_collection_naming_it(tmp_path):
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_declared.py").write_text(
        "import pytest\npytestmark = pytest.mark.colab\n\ndef test_one():\n    pass\n")
    (tmp_path / "test_silent.py").write_text("def test_two():\n    pass\n")
    run = lambda *paths: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-W", "ignore::pytest.PytestUnknownMarkWarning",
         *map(str, paths)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    both = run(tmp_path)
    assert both.returncode == pytest.ExitCode.USAGE_ERROR, both.stdout + both.stderr
    assert "test_silent.py" in both.stderr and "test_declared.py" not in both.stderr
    declared = run(tmp_path / "test_declared.py", "-m", "colab")
    assert declared.returncode == 0 and "1 passed" in declared.stdout, declared.stdout + declared.stderr


# --- .venv-colab from .venv's files ------------------------------------------------------------------------------

spec = importlib.util.spec_from_file_location("colab_shared", ROOT / ".ci" / "colab_shared.py")
colab_shared = importlib.util.module_from_spec(spec)
spec.loader.exec_module(colab_shared)


def fake_dist(site: Path, name: str, version: str = "1.0", requires=(), files=()):
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    (info / "METADATA").write_text("\n".join(lines + [f"Requires-Dist: {r}" for r in requires]) + "\n")
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in (f"{name}/__init__.py", *files)))


def test_colab_links_what_the_course_needs_less_colabs_pins_and_data_files_and_drops_what_only_others_needed(
        tmp_path):
    venv, colab = tmp_path / "venv", tmp_path / "colab"
    course = ["shared_lib", 'jupyter; extra == "course"', 'nbconvert; extra == "course"',
              'bitsandbytes; extra == "memory"']
    for site, hub_requires in ((venv, ["only_new_hub_needs"]), (colab, [])):
        fake_dist(site, "cnhelpers", requires=course)
        fake_dist(site, "shared_lib", requires=["hub_client>=1"])
        fake_dist(site, "hub_client", "2.0" if site == venv else "1.0", requires=hub_requires)
        fake_dist(site, "jupyter", files=["../../../bin/jupyter"])  # a script: still linked, as torch's are
        fake_dist(site, "nbconvert", files=["../../../share/jupyter/nbconvert/templates/lab/index.html.j2"])
        fake_dist(site, "torch")
        fake_dist(site, "pip")
    fake_dist(venv, "bitsandbytes")
    fake_dist(venv, "only_new_hub_needs")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("# Colab's pins\nhub_client==1.0  # read on Colab\n")
    assert colab_shared.link(str(constraints), ["torch"], str(venv)) == ["jupyter", "only-new-hub-needs",
                                                                            "shared-lib", "torch"]
    fake_dist(colab, "only_new_hub_needs")  # linked for .venv's hub_client 2.0, which Colab's 1.0 replaced
    assert colab_shared.unneeded(["torch"], str(colab)) == ["only-new-hub-needs"]


# --- .ci/report: the budget --------------------------------------------------------------------------------------

def report(tmp_path, times: str, wall: int) -> subprocess.CompletedProcess:
    (tmp_path / "budget.tsv").write_text("# a comment\nbudget\t100\nmargin\t20\t15\nsteady\t40\t40\ngrowing\t50\t90\n")
    (tmp_path / "times.txt").write_text(times)
    return subprocess.run(["bash", str(ROOT / ".ci" / "report"), str(tmp_path / "times.txt"),
                           str(tmp_path / "budget.tsv"), str(wall)], capture_output=True, text=True)


def test_the_report_over_the_budget_warns_naming_only_the_legs_that_grew_and_never_fails(tmp_path):
    run = report(tmp_path, "steady 47 0 45\ngrowing 90 2 170\nnew 5 0 5\n", wall=142)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert any(line.split()[:2] == ["growing", "90"] and "FAILED (2)" in line and "baseline" in line for line in lines)
    warning = [line for line in lines if "WARNING" in line]
    assert len(warning) == 1 and "42 s over its 100 s" in warning[0]
    assert "growing 90 s (baseline 50 s)" in warning[0] and "new 5 s (no baseline)" in warning[0]
    assert "steady" not in warning[0]  # 7 s above its baseline: within the 15 s margin


def test_the_report_within_the_budget_gives_the_total_and_no_warning(tmp_path):
    run = report(tmp_path, "steady 40 0 40\ngrowing 50 0 90\n", wall=95)
    assert run.returncode == 0 and "WARNING" not in run.stdout
    assert "budget: 95 s of 100 s wall" in run.stdout and "130 s of CPU" in run.stdout


def test_make_test_schedules_every_test_target_once_after_its_setup_and_ci_runs_make_test():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^(test-[a-z-]+):", makefile, re.M)) - {"test-colab", "test-flax"}  # each two legs
    spec = re.search(r"^TEST_LEGS := ((?:.*\\\n)*.*)$", makefile, re.M).group(1).replace("\\\n", " ").split()
    legs = {item.split(":")[0]: item.partition(":")[2].split(",") for item in spec}
    assert targets <= set(legs) and len(legs) == len(spec)
    for leg in targets:  # every leg waits, directly or not, for the set-up of its venv
        needs, seen = set(legs[leg]), set()
        while needs - seen:
            need = (needs - seen).pop(); seen.add(need); needs |= set(legs.get(need, []))
        assert seen & {"setup", "setup-flax", "setup-colab"}, leg
    # Colab's notebooks need not wait for test-notebooks: they build in a folder of their own
    recipe = re.search(r"^test-colab-notebooks:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "CN_BUILD_DIR=$(CURDIR)/build/colab" in recipe and "test-notebooks" not in legs["test-colab-notebooks"]
    assert re.search(r"^make test\b", (ROOT / ".ci" / "run").read_text(), re.M)
