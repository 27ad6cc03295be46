"""The slides: a deck written by ``python -m cnhelpers.course.slides`` (``make slides``) opens offline in Chromium,
from the file system with every request outside it refused, and advances a slide on the right-arrow key.

Cheap: a three-cell notebook, no kernel, no JupyterLab; the browser is the session's.
"""

from __future__ import annotations

import nbformat
import pytest

from cnhelpers.course.slides import build_decks, reveal_assets


def test_a_deck_opens_offline_and_advances_a_slide(browser, tmp_path):
    reveal = reveal_assets()
    if reveal is None:
        pytest.fail("reveal.js's files are missing: make setup-browser installs sphinx-revealjs (requirements-slides.txt)")
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# First slide", metadata={"slideshow": {"slide_type": "slide"}}),
        nbformat.v4.new_markdown_cell("left out", metadata={"slideshow": {"slide_type": "skip"}}),
        nbformat.v4.new_markdown_cell("# Second slide", metadata={"slideshow": {"slide_type": "slide"}})])
    nbformat.write(nb, tmp_path / "00_deck.ipynb")
    [(name, what)] = build_decks([tmp_path / "00_deck.ipynb"], tmp_path / "slides", reveal)
    deck = tmp_path / "slides" / "00_deck.slides.html"
    assert deck.exists(), what
    assert "left out" not in deck.read_text()

    context = browser.new_context()
    outside = []

    def only_local(route):  # offline: anything not on the file system is refused, and noted
        if not route.request.url.startswith("file://"):
            outside.append(route.request.url)
            return route.abort()
        return route.continue_()

    context.route("**/*", only_local)
    page = context.new_page()
    try:
        page.goto(deck.as_uri())
        page.wait_for_function("() => window.Reveal && Reveal.isReady()", timeout=20_000)
        assert page.evaluate("Reveal.getTotalSlides()") == 2
        assert page.evaluate("Reveal.getIndices().h") == 0
        page.keyboard.press("ArrowRight")
        page.wait_for_function("() => Reveal.getIndices().h === 1", timeout=10_000)
        assert "Second slide" in page.inner_text("section.present")
    finally:
        context.close()
    # reveal.js and its notes plugin came from beside the deck; what was refused (if anything) is not needed
    assert not [url for url in outside if "reveal" in url], outside
