"""Slides for teachers: ``python -m cnhelpers.course.slides`` (``make slides``) writes a reveal.js deck per notebook.

Each deck opens offline, from the file system: reveal.js's own files come from a package registry (PyPI's
``sphinx-revealjs`` bundles them; ``requirements-slides.txt`` pins it and ``make slides`` installs it with
``--no-deps``, its files only) and are copied beside the decks, and the course's template loads them with plain
script tags (nbconvert's reveal template would fetch require.js, jQuery and reveal.js from CDNs).

Which cells a deck shows is the notebook's cell metadata, ``slideshow.slide_type``, as in JupyterLab's property
inspector and RISE: ``slide`` starts a slide, ``subslide`` and ``fragment`` as reveal.js has them, ``-`` continues
the slide, ``skip`` leaves the cell out, ``notes`` makes it speaker notes (key S). A notebook without any
such metadata gets no deck (the line says so). :func:`mark_slides` writes a default: a slide per heading, the set-up
and parameters cells, exercises' solutions and cells that only compute (no output) skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

from .runner import course_notebooks

#: The PyPI package whose wheel carries reveal.js (``dist/``, ``plugin/``) and the folder inside it.
REVEAL_PACKAGE, REVEAL_FOLDER = "sphinx_revealjs", ("_static", "revealjs")
SLIDE_TYPES = ("slide", "subslide", "fragment", "-", "skip", "notes")

TEMPLATE = r"""{%- extends 'reveal/index.html.j2' -%}
{#- The course's decks open offline: no require.js, jQuery or MathJax from a CDN; reveal.js from beside the deck. -#}
{%- block html_head_js_jquery -%}{%- endblock html_head_js_jquery -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{% block footer_js %}
<script src="{{ resources.reveal.url_prefix }}/dist/reveal.js"></script>
<script src="{{ resources.reveal.url_prefix }}/plugin/notes/notes.js"></script>
<script>
Reveal.initialize({controls: true, progress: true, history: true,
                   transition: "{{ resources.reveal.transition | default('slide', true) }}",
                   slideNumber: "{{ resources.reveal.number | default('', true) }}", plugins: [RevealNotes],
                   width: {{ resources.reveal.width | default(960, true) }},
                   height: {{ resources.reveal.height | default(700, true) }}});
</script>
{% endblock footer_js %}
"""


def reveal_assets() -> Path | None:
    """reveal.js's files from the installed ``sphinx-revealjs`` (found without importing it, so Sphinx is not
    needed), or None when it is not installed."""
    spec = importlib.util.find_spec(REVEAL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))).joinpath(*REVEAL_FOLDER)
    return folder if (folder / "dist" / "reveal.js").exists() else None


def has_slide_metadata(nb) -> bool:
    return any(cell.get("metadata", {}).get("slideshow", {}).get("slide_type") for cell in nb.cells)


def default_slide_type(cell, previous_types: list[str]) -> str:
    """The slide type :func:`mark_slides` gives a cell: a heading starts a slide, a solution, the Colab and
    parameters cells and code without output are skipped, everything else continues the slide."""
    source = cell.source.lstrip()
    if cell.cell_type == "markdown":
        if source.startswith("<details>") and "<b>Solution</b>" in source:
            return "skip"
        return "slide" if source.startswith("#") or not previous_types else "-"
    if '"google.colab" in sys.modules' in source or "parameters" in cell.get("metadata", {}).get("tags", []):
        return "skip"
    return "-" if cell.get("outputs") else "skip"


def mark_slides(path: Path) -> bool:
    """Give every cell of the notebook at ``path`` its default ``slideshow.slide_type``, where none is set;
    returns whether the file changed."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    types, changed = [], False
    for cell in nb.cells:
        slideshow = cell.metadata.setdefault("slideshow", {})
        if "slide_type" not in slideshow:
            slideshow["slide_type"] = default_slide_type(cell, types)
            changed = True
        types.append(slideshow["slide_type"])
    if changed:
        nbformat.write(nb, path)
    return changed


def build_decks(notebooks: list[Path], out: Path, reveal: Path) -> list[tuple[str, str]]:
    """Write ``out/<notebook>.slides.html`` for each notebook with slide metadata, and reveal.js's files into
    ``out/reveal.js/``; returns ``(notebook name, what happened)`` per notebook."""
    import nbformat
    from nbconvert import SlidesExporter

    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "reveal.js", ignore_errors=True)
    for part in ("dist", "plugin/notes", "LICENSE"):
        source, target = reveal / part, out / "reveal.js" / part
        if source.is_dir():
            shutil.copytree(source, target)
        elif source.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    report = []
    with tempfile.TemporaryDirectory() as templates:
        (Path(templates) / "course_reveal").mkdir()
        (Path(templates) / "course_reveal" / "index.html.j2").write_text(TEMPLATE)
        (Path(templates) / "course_reveal" / "conf.json").write_text('{"base_template": "reveal", "mimetypes": '
                                                                     '{"text/html": true}}')
        exporter = SlidesExporter(extra_template_basedirs=[templates], template_name="course_reveal",
                                  reveal_url_prefix="reveal.js", reveal_theme="simple", reveal_scroll=True)
        for path in notebooks:
            nb = nbformat.read(path, as_version=4)
            if not has_slide_metadata(nb):
                report.append((path.name, "no slideshow.slide_type metadata: no deck"))
                continue
            body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
            deck = out / f"{path.stem}.slides.html"
            deck.write_text(body)
            shown = sum(c.metadata.get("slideshow", {}).get("slide_type", "-") not in ("skip", "notes") for c in nb.cells)
            report.append((path.name, f"{deck} ({shown} of {len(nb.cells)} cells shown)"))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=Path, default=Path("notebooks"), help="folder of the notebooks")
    parser.add_argument("--out", type=Path, default=Path("build/slides"), help="folder for the decks")
    parser.add_argument("--only", default="", help="only notebooks whose name contains this")
    parser.add_argument("--reveal", type=Path, default=None,
                        help="a folder with reveal.js's dist/ and plugin/ (default: the installed sphinx-revealjs)")
    parser.add_argument("--mark", action="store_true",
                        help="first give the notebooks' cells their default slide types where none is set")
    args = parser.parse_args(argv)
    reveal = args.reveal or reveal_assets()
    if reveal is None or not (reveal / "dist" / "reveal.js").exists():
        print("error: reveal.js's files were not found: run `make slides` (it installs sphinx-revealjs, pinned in "
              "requirements-slides.txt, with --no-deps), or pass --reveal FOLDER with dist/ and plugin/.",
              file=sys.stderr)
        return 2
    notebooks = [p for p in course_notebooks(args.notebooks) if args.only in p.name]
    if not notebooks:
        print(f"error: no notebooks matching {args.only!r} in {args.notebooks}", file=sys.stderr)
        return 2
    if args.mark:
        for path in notebooks:
            if mark_slides(path):
                print(f"marked {path.name}")
    for name, what in build_decks(notebooks, args.out, reveal):
        print(f"{name:<32} {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
