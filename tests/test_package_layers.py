"""cnhelpers' modules import only downward: each module may import modules of its own layer or of the layers
below, never above, never in a circle, and always at the top of the file (so its header shows what it needs)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cnhelpers"

#: From the bottom up. A module may import modules of its own layer or lower ones (and no circle).
LAYERS = (
    ("paths", "env", "hub", "profiles", "tokenizer"),
    ("data", "images", "losses", "metrics", "base_models", "sdxl", "widgets"),
    ("speed", "config", "recipes", "optim", "cache", "checkpoints", "outputs", "loading"),
    ("training", "inference"),
    ("evaluation", "anatomy", "memory"),
    ("plots", "checks", "train", "course", "colab", "pretrain_base", "flax_training"),
)


def package_imports(path: Path) -> list[tuple[str, bool]]:
    """``(module, at_top)`` for every import of a sibling module in the file ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                names = [node.module.split(".")[0]]
            elif node.level == 1:
                names = [alias.name for alias in node.names]
            elif (node.module or "").startswith("cnhelpers."):
                names = [node.module.split(".")[1]]
            elif node.module == "cnhelpers":
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [(name, id(node) in top) for name in names]
        elif isinstance(node, ast.Import):
            found += [(alias.name.split(".")[1], id(node) in top) for alias in node.names
                      if alias.name.startswith("cnhelpers.")]
    return found


def layer_violations(package: Path, layers) -> list[str]:
    """Every import of ``package`` that goes up a layer, sits inside a function, or closes a circle."""
    level = {module: i for i, layer in enumerate(layers) for module in layer}
    modules = sorted(p.stem for p in package.glob("*.py") if p.stem != "__init__")
    problems = [f"{m}: not in any layer" for m in modules if m not in level]
    graph = {}
    for module in modules:
        graph[module] = set()
        for target, at_top in package_imports(package / f"{module}.py"):
            graph[module].add(target)
            if not at_top:
                problems.append(f"{module} imports {target} inside a function (put it at the top)")
            if level.get(target, -1) > level.get(module, -1):
                problems.append(f"{module} (layer {level.get(module)}) imports {target} (layer {level.get(target)})")
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


def test_cnhelpers_imports_only_downward_at_the_top_of_each_module():
    assert layer_violations(PACKAGE, LAYERS) == []


def test_every_layer_names_an_existing_module():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert [m for layer in LAYERS for m in layer if m not in modules] == []


@pytest.mark.parametrize("files, expected", [
    ({"low.py": "from .high import x\n", "high.py": "from .low import y\n"}, "low (layer 0) imports high (layer 1)"),
    ({"low.py": "", "high.py": "def f():\n    from .low import y\n"}, "high imports low inside a function"),
    ({"low.py": "from .high import x\n", "high.py": ""}, "low (layer 0) imports high (layer 1)"),
])
def test_the_layer_check_catches_upward_and_hidden_imports(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert any(expected in problem for problem in layer_violations(tmp_path, (("low",), ("high",))))


def test_the_layer_check_catches_a_circle_within_a_layer(tmp_path):
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("from .a import y\n")
    assert any("circular import" in p for p in layer_violations(tmp_path, (("a", "b"),)))
