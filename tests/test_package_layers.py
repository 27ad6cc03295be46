"""cnhelpers' modules import only downward: each module may import modules of its own layer or of the layers
below, never above, never in a circle, and always at the top of the file (so its header shows what it needs).

The package is a reusable core (``cnhelpers/*.py``, ``cnhelpers/families/``) and the course's own machinery
(``cnhelpers/course/``): the course may import the core, the core never imports the course. A module is named by
its path inside the package: ``data``, ``families.sd``, ``course.plots``; a package's ``__init__.py`` by the
package (``families``, ``course``)."""

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.not_colab(reason="reads the package's source")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cnhelpers"
#: The subpackage that holds the course's own machinery; nothing outside it may import it.
COURSE = "course"

#: From the bottom up. A module may import modules of its own layer or lower ones (and no circle).
LAYERS = (
    ("paths", "env", "messages", "hub", "tokenizer", "run_lock", "course", "course.profiles", "course.hub_server"),
    ("data", "own_data", "images", "losses", "model_info", "lora", "families", "families.family", "families.sd",
     "families.sdxl", "families.flow_matching", "families.sd3", "families.flux", "course.fill", "course.held_out", "course.metrics",
     "course.tiny_bases", "course.tiny_sdxl", "course.tiny_transformers", "course.pretrain_families", "course.widgets", "course.own_walkthrough"),
    ("speed", "config", "optim", "cache", "checkpoints", "consistency", "outputs", "loading", "course.recipes"),
    ("training", "inference"),
    ("course.controlnet", "course.evaluation", "course.anatomy", "course.memory"),
    ("train", "make_dataset", "course.plots", "course.drawing", "course.checks", "course.runner", "course.slides", "course.colab", "course.pretrain_base",
     "course.flax_training"),
)


def module_name(path: Path, package: Path) -> str:
    """``course.plots`` for ``package/course/plots.py``, ``families`` for ``package/families/__init__.py``."""
    parts = path.relative_to(package).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(package: Path) -> dict[str, Path]:
    """Every module of ``package`` (its subpackages' too) by name; the package's own ``__init__.py`` aside."""
    found = {module_name(path, package): path for path in sorted(package.rglob("*.py"))
             if "__pycache__" not in path.parts}
    found.pop("", None)
    return found


def package_imports(path: Path, package: Path, modules) -> list[tuple[str, bool]]:
    """``(module, at_top)`` for every import of a module of ``package`` in the file ``path``: relative (``from .x``,
    ``from ..course.y``) or absolute (``cnhelpers.x``), resolved to the module's name (or the package's, when the
    import names something defined in a package's ``__init__.py``)."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    here = list(path.relative_to(package).parts[:-1])  # the package the file is in, inside ``package``
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(here):
                    continue  # above the package
                base = here[:len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "cnhelpers":
                base = node.module.split(".")[1:]
            else:
                continue
            names = []
            for alias in node.names:
                submodule = ".".join(base + [alias.name])
                names.append(submodule if submodule in modules else ".".join(base))
        elif isinstance(node, ast.Import):
            names = [".".join(alias.name.split(".")[1:]) for alias in node.names
                     if alias.name.split(".")[0] == "cnhelpers"]
        else:
            continue
        found += [(name, id(node) in top) for name in dict.fromkeys(names) if name]
    return found


def is_course(module: str) -> bool:
    return module == COURSE or module.startswith(COURSE + ".")


def layer_violations(package: Path, layers) -> list[str]:
    """Every import of ``package`` that goes up a layer, sits inside a function, closes a circle, or takes the core
    into the course."""
    level = {module: i for i, layer in enumerate(layers) for module in layer}
    modules = package_modules(package)
    problems = [f"{m}: not in any layer" for m in modules if m not in level]
    graph = {}
    for module, path in modules.items():
        graph[module] = set()
        for target, at_top in package_imports(path, package, modules):
            graph[module].add(target)
            if not at_top:
                problems.append(f"{module} imports {target} inside a function (put it at the top)")
            if level.get(target, -1) > level.get(module, -1):
                problems.append(f"{module} (layer {level.get(module)}) imports {target} (layer {level.get(target)})")
            if is_course(target) and not is_course(module):
                problems.append(f"{module} imports {target}: the core never imports the course (move what it needs "
                                f"into the core, or the module into cnhelpers/{COURSE}/)")
    state = {}

    def visit(module, trail):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                problems.append("circular import: " + " -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in modules:
        if module not in state:
            visit(module, [module])
    return problems


def test_cnhelpers_imports_only_downward_at_the_top_of_each_module_and_the_core_never_the_course():
    assert layer_violations(PACKAGE, LAYERS) == []


def test_every_layer_names_an_existing_module():
    modules = package_modules(PACKAGE)
    assert [m for layer in LAYERS for m in layer if m not in modules] == []
    assert len([m for layer in LAYERS for m in layer]) == len({m for layer in LAYERS for m in layer})


def test_pyproject_installs_every_subpackage():
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = sorted(".".join(("cnhelpers", *init.parent.relative_to(PACKAGE).parts)).rstrip(".")
                   for init in PACKAGE.rglob("__init__.py") if "__pycache__" not in init.parts)
    assert sorted(packages) == found


def readme_layout() -> list[tuple[int, str, str]]:
    """``(layer, module, job)`` for each row of README.md's table of modules."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| layer | module | its one job |"):]
    rows = []
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        match = re.fullmatch(r"\| (\d+) \| `([\w.]+)` \| (.+) \|", line)
        assert match, f"README.md's table of modules: cannot read {line!r}"
        rows.append((int(match[1]), match[2], match[3].strip()))
    return rows


def test_the_readme_lists_every_module_in_its_layer_with_its_job():
    rows = readme_layout()
    assert sorted((layer, module) for layer, module, _ in rows) == \
        sorted((i, module) for i, layer in enumerate(LAYERS) for module in layer)
    assert [module for _, module, job in rows if not job] == []


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize("files, expected", [
    ({"low.py": "from .high import x\n", "high.py": "from .low import y\n"}, "low (layer 0) imports high (layer 1)"),
    ({"low.py": "", "high.py": "def f():\n    from .low import y\n"}, "high imports low inside a function"),
    ({"low.py": "from .high import x\n", "high.py": ""}, "low (layer 0) imports high (layer 1)"),
    ({"low.py": "import cnhelpers.high\n", "high.py": ""}, "low (layer 0) imports high (layer 1)"),
])
def test_the_layer_check_catches_upward_and_hidden_imports(tmp_path, files, expected):
    write_package(tmp_path, files)
    assert any(expected in problem for problem in layer_violations(tmp_path, (("low",), ("high",))))


def test_the_layer_check_catches_a_circle_within_a_layer(tmp_path):
    write_package(tmp_path, {"a.py": "from .b import x\n", "b.py": "from .a import y\n"})
    assert any("circular import" in p for p in layer_violations(tmp_path, (("a", "b"),)))


@pytest.mark.parametrize("importer, line, target", [
    ("core.py", "from .course.fill import PALETTE\n", "course.fill"),
    ("core.py", "from .course import fill\n", "course.fill"),
    ("core.py", "from .course import COURSE_THING\n", "course"),
    ("core.py", "import cnhelpers.course.fill\n", "course.fill"),
    ("core.py", "from cnhelpers.course.fill import PALETTE\n", "course.fill"),
    ("families/sd.py", "from ..course.fill import PALETTE\n", "course.fill"),
    ("families/sd.py", "from ..course import fill\n", "course.fill"),
])
def test_the_layer_check_catches_the_core_importing_the_course(tmp_path, importer, line, target):
    files = {"core.py": "", "families/__init__.py": "", "families/sd.py": "", "course/__init__.py": "",
             "course/fill.py": ""}
    write_package(tmp_path, files | {importer: line})
    layers = (("course", "course.fill"), ("core", "families", "families.sd"))  # layers allow it: only the rule refuses
    importer_name = module_name(tmp_path / importer, tmp_path)
    assert layer_violations(tmp_path, layers) == [
        f"{importer_name} imports {target}: the core never imports the course (move what it needs into the core, or "
        "the module into cnhelpers/course/)"]


def test_the_course_may_import_the_core(tmp_path):
    write_package(tmp_path, {"data.py": "", "course/__init__.py": "",
                             "course/fill.py": "from ..data import x\nimport cnhelpers.data\n",
                             "course/plots.py": "from .fill import y\nfrom .. import data\n"})
    assert layer_violations(tmp_path, (("data", "course"), ("course.fill",), ("course.plots",))) == []
