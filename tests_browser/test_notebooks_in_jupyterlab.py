"""The notebooks as a learner runs them: in JupyterLab, in Chromium, with live widgets (``make test-browser``).

For each notebook: open it, clear its outputs, then Kernel > Restart Kernel and Run All Cells… (the menu, and its
dialog). When the kernel is done: every code cell ran; no error output and no error on stderr; every widget is
rendered live (no text fallback such as ``VBox(...)``, no "Error displaying widget"); every image loaded; and
moving each slider to an end of its range changes the pictures its cell shows (their pixels, not just their
addresses); and on each drawing canvas (notebook 06's), a closed stroke drawn with mouse events changes its cell's
picture and its score line. Then the notebook is saved, the page reloaded (the kernel keeps running), and the widget, image and
slider checks run again.

A notebook's problems are collected and reported together, each naming the cell (its index in the notebook,
counted from 0, and its ``In [n]``) and what failed. Screenshots of each notebook, before and after the reload
(and the page at a failure), go to ``build/browser/screenshots/``.
"""

from __future__ import annotations

import math
import re
import time

import pytest
from conftest import SCREENSHOTS

#: The notebooks this leg runs, in course order (06 uses the ControlNet that 03 trains).
NOTEBOOKS = ["00_setup.ipynb", "01_dataset_transforms.ipynb", "02_controlnet_from_unet.ipynb",
             "03_training_loop.ipynb", "06_inference.ipynb"]
RUN_ALL_TIMEOUT = 600  # s; notebook 03 with its short run takes about a minute
FIGURE_TIMEOUT = 60  # s for a figure to change after its slider moved (06 generates four pictures)
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
#: How a widget looks when the front end cannot render it: its repr, as the text/plain fallback shows it.
WIDGET_REPR = re.compile(r"^\s*(VBox|HBox|Box|GridBox|IntSlider|FloatSlider|FloatLogSlider|IntProgress|"
                         r"FloatProgress|Image|Label|HTML|Output|Dropdown|Button|Checkbox|Text)\(")
STDERR_ERROR = re.compile(r"Traceback|\w*(Error|Exception|Warning)\b")

PANEL = "window.jupyterapp.shell.currentWidget"

#: Per code cell: its index, execution count, outputs (from the model) and how each output looks in the page.
CELLS_JS = f"""() => {{
  const panel = {PANEL};
  const cells = [];
  panel.content.widgets.forEach((cell, index) => {{
    if (cell.model.type !== 'code') return;
    cell.node.dataset.cellIndex = index;  // for the test's locators
    const outputs = cell.outputArea.model.toJSON();
    const children = cell.outputArea.widgets;
    cells.push({{
      index, count: cell.model.executionCount,
      outputs: outputs.map((output, i) => {{
        const node = children[i] ? children[i].node : null;
        const text = output.text !== undefined ? [].concat(output.text).join('') : '';
        return {{
          type: output.output_type, name: output.name || null, text: text.slice(0, 2000),
          ename: output.ename || null, evalue: output.evalue || null,
          mimes: Object.keys(output.data || {{}}),
          rendered: node ? node.innerText.slice(0, 2000) : null,
          live_widget: node ? node.querySelector('.jupyter-widgets') !== null : false,
          sliders: node ? node.querySelectorAll('.widget-slider').length : 0,
        }};
      }}),
      images: [...cell.node.querySelectorAll('.jp-OutputArea img')].map(img => ({{
        src: img.src.slice(0, 80), complete: img.complete, width: img.naturalWidth}})),
    }});
  }});
  return cells;
}}"""

#: The pictures of a cell (by notebook index): whether all have loaded, and a fingerprint of each one's pixels.
PICTURES_JS = f"""(index) => {{
  const images = [...{PANEL}.content.widgets[index].node.querySelectorAll('.jp-OutputArea img')];
  if (!images.every(img => img.complete && img.naturalWidth > 0)) return null;
  return images.map(img => {{
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const context = canvas.getContext('2d');
    context.drawImage(img, 0, 0);
    const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let hash = 2166136261;  // FNV-1a over the RGBA bytes
    for (let i = 0; i < pixels.length; i++) hash = Math.imul(hash ^ pixels[i], 16777619);
    return `${{canvas.width}}x${{canvas.height}}:${{hash >>> 0}}`;
  }}).join(' ');
}}"""


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "slider"


def cell_label(cell: dict) -> str:
    return f"cell {cell['index']} (In [{cell['count'] if cell['count'] is not None else ' '}])"


def kernel_status(page) -> str | None:
    return page.evaluate(f"() => {{ const p = {PANEL}; return p && p.sessionContext ? "
                         "p.sessionContext.kernelDisplayStatus : null; }")


def open_notebook(page, lab, name: str):
    """Load JupyterLab on notebook ``name`` and wait until its kernel is idle."""
    page.goto(lab.notebook_url(name, workspace=name.removesuffix(".ipynb")))
    wait_for_notebook(page, name)


def wait_for_notebook(page, name: str, timeout: float = 120):
    page.wait_for_function(
        f"""(name) => {{ const p = window.jupyterapp && {PANEL};
            return p && p.context && p.context.path.endsWith(name) && p.content.widgets.length > 0 &&
                   p.sessionContext.session && p.sessionContext.session.kernel &&
                   p.sessionContext.kernelDisplayStatus === 'idle'; }}""", arg=name, timeout=timeout * 1000)


def restart_and_run_all(page):
    """Clear every output (so that all the page shows comes from this run), then Kernel > Restart Kernel and Run All."""
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
    page.locator(".lm-MenuBar-item", has_text="Kernel").click()
    page.locator(".lm-Menu-item", has_text="Restart Kernel and Run All Cells").click()
    page.locator(".jp-Dialog .jp-mod-accept").click()  # "Restart Kernel?" -> Restart


def wait_until_run_all_done(page, timeout: float = RUN_ALL_TIMEOUT):
    """Wait until a cell has run, none is queued or running ([*]) and the kernel is idle, three polls in a row."""
    deadline, settled = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        state = page.evaluate(f"""() => {{ const p = {PANEL};
            const code = p.content.widgets.filter(c => c.model.type === 'code');
            return {{ran: code.some(c => c.model.executionCount !== null),
                    busy: code.some(c => ((c.node.querySelector('.jp-InputPrompt') || {{}}).textContent || '').includes('*')),
                    status: p.sessionContext.kernelDisplayStatus}}; }}""")
        settled = settled + 1 if state["ran"] and not state["busy"] and state["status"] == "idle" else 0
        if settled >= 3:
            return
        time.sleep(1)
    raise TimeoutError(f"Run All was still going after {timeout:.0f} s")


def wait_for_images(page, timeout: float = 20):
    """Give every output image a moment to load (widgets' images are blobs, set after the view renders)."""
    try:
        page.wait_for_function(f"() => [...{PANEL}.node.querySelectorAll('.jp-OutputArea img')]"
                               ".every(img => img.complete && img.naturalWidth > 0)", timeout=timeout * 1000)
    except Exception:  # noqa: BLE001 -- the image check below names the ones that did not load
        pass


def wait_for_widgets(page, timeout: float = 30):
    """After a reload the widget manager restores the kernel's widgets: wait while any says it is loading."""
    try:
        page.wait_for_function(f"() => !{PANEL}.node.innerText.includes('Loading widget')",
                               timeout=timeout * 1000)
    except Exception:  # noqa: BLE001 -- the widget check below reports what still shows
        pass


def run_problems(cells: list[dict]) -> list[str]:
    """Cells that did not run, error outputs, and errors or warnings written to stderr."""
    problems = []
    for cell in cells:
        if cell["count"] is None:
            problems.append(f"{cell_label(cell)}: did not run")
        for output in cell["outputs"]:
            if output["type"] == "error":
                problems.append(f"{cell_label(cell)}: error output {output['ename']}: {output['evalue']}")
            elif output["type"] == "stream" and output["name"] == "stderr" and STDERR_ERROR.search(output["text"]):
                problems.append(f"{cell_label(cell)}: stderr {output['text'].strip()[:300]!r}")
    return problems


def render_problems(cells: list[dict]) -> list[str]:
    """Widgets that are not rendered live, and images that did not load."""
    problems = []
    for cell in cells:
        for output in cell["outputs"]:
            rendered = output["rendered"] or ""
            if "Error displaying widget" in rendered:
                problems.append(f"{cell_label(cell)}: {rendered.strip()[:200]!r}")
            elif WIDGET_MIME in output["mimes"] and not output["live_widget"]:
                problems.append(f"{cell_label(cell)}: a widget is not rendered live; the page shows "
                                f"{rendered.strip()[:200]!r}")
            elif output["type"] != "stream" and WIDGET_REPR.match(rendered):
                problems.append(f"{cell_label(cell)}: a widget's text fallback {rendered.strip()[:200]!r}")
        for image in cell["images"]:
            if not (image["complete"] and image["width"] > 0):
                problems.append(f"{cell_label(cell)}: an image did not load ({image['src']}...)")
    return problems


def pictures(page, index: int) -> str | None:
    return page.evaluate(PICTURES_JS, index)


def wait_for_new_pictures(page, index: int, before: str | None, timeout: float = FIGURE_TIMEOUT) -> bool:
    """Whether the cell's pictures change: True as soon as they do; False once the kernel has been idle for 2 s
    (past the first second) with the same pictures, or after ``timeout`` s."""
    start = time.monotonic()
    idle_since = None
    while time.monotonic() - start < timeout:
        now = pictures(page, index)
        if now is not None and now != before:
            return True
        if kernel_status(page) == "idle" and now is not None:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 2 and time.monotonic() - start > 1:
                return False
        else:
            idle_since = None
        time.sleep(0.25)
    return False


def set_readout(page, slider, value: str):
    """Type ``value`` into the slider's readout (it is editable) and press Enter."""
    readout = slider.locator(".widget-readout")
    readout.click()
    readout.evaluate("node => { const range = document.createRange(); range.selectNodeContents(node);"
                     " const selection = window.getSelection(); selection.removeAllRanges();"
                     " selection.addRange(range); }")
    page.keyboard.type(value)
    page.keyboard.press("Enter")


def slider_problems(page, cells: list[dict], stem: str) -> list[str]:
    """Move every slider to one end (Home; End when that does not change the picture, e.g. canny's high threshold
    below its low one); its cell's pictures must change. The slider is then set back through its readout.
    Each cell is screenshotted with its slider moved (``<stem>-cell<index>-<slider>.png``)."""
    problems = []
    for cell in cells:
        if not any(output["sliders"] for output in cell["outputs"]):
            continue
        cell_node = page.locator(f".jp-NotebookPanel:not(.lm-mod-hidden) [data-cell-index='{cell['index']}']")
        sliders = cell_node.locator(".widget-slider")
        for k in range(sliders.count()):
            slider = sliders.nth(k)
            name = slider.locator(".widget-label").inner_text().strip() or f"slider {k + 1}"
            readout = slider.locator(".widget-readout")
            value, tried, changed = readout.inner_text().strip(), [], False
            for key in ("Home", "End"):
                before = pictures(page, cell["index"])
                slider.locator(".noUi-handle").focus()
                page.keyboard.press(key)
                moved = readout.inner_text().strip()
                if moved == (tried[-1] if tried else value):
                    continue  # already at that end
                tried.append(moved)
                if wait_for_new_pictures(page, cell["index"], before):
                    changed = True
                    break
            cell_node.screenshot(path=str(SCREENSHOTS / f"{stem}-cell{cell['index']}-{slug(name)}.png"))
            print(f"  {cell_label(cell)} slider {name!r}: {value} -> {' then '.join(tried) or '(did not move)'}, "
                  f"picture {'changed' if changed else 'UNCHANGED'}")
            if not tried:
                problems.append(f"{cell_label(cell)}: slider {name!r} does not move with the keyboard (Home, End)")
            elif not changed:
                problems.append(f"{cell_label(cell)}: moving slider {name!r} from {value} to {' then '.join(tried)} "
                                "did not change its cell's picture")
            set_readout(page, slider, value)
            if readout.inner_text().strip() != value:
                problems.append(f"{cell_label(cell)}: slider {name!r} could not be set back to {value} "
                                "through its readout")
            wait_for_new_pictures(page, cell["index"], pictures(page, cell["index"]))  # its redraw, if any
            wait_until_idle(page)
    return problems


#: The drawing widget's canvas (cnhelpers.course.drawing).
CANVAS = "canvas.cn-outline-canvas"


def canvas_problems(page, cells: list[dict], stem: str) -> list[str]:
    """On every drawing canvas, draw a closed stroke with the mouse (press, a circle in the upper left, release);
    the cell's picture and its score line (the last label) must change. Screenshot: ``<stem>-cell<index>-drawn.png``."""
    problems = []
    for cell in cells:
        cell_node = page.locator(f".jp-NotebookPanel:not(.lm-mod-hidden) [data-cell-index='{cell['index']}']")
        canvas = cell_node.locator(CANVAS)
        if canvas.count() == 0:
            continue
        canvas.first.scroll_into_view_if_needed()
        box = canvas.first.bounding_box()
        label = cell_node.locator(".widget-label").last
        before, score = pictures(page, cell["index"]), label.inner_text().strip()
        cx, cy, r = box["x"] + 0.3 * box["width"], box["y"] + 0.3 * box["height"], 0.18 * box["width"]
        page.mouse.move(cx + r, cy)
        page.mouse.down()
        for k in range(1, 25):
            page.mouse.move(cx + r * math.cos(2 * math.pi * k / 24), cy + r * math.sin(2 * math.pi * k / 24))
        page.mouse.up()
        changed = wait_for_new_pictures(page, cell["index"], before)
        wait_until_idle(page)
        drawn = label.inner_text().strip()
        cell_node.screenshot(path=str(SCREENSHOTS / f"{stem}-cell{cell['index']}-drawn.png"))
        print(f"  {cell_label(cell)} canvas: a stroke drawn, picture {'changed' if changed else 'UNCHANGED'}, "
              f"score {score!r} -> {drawn!r}")
        if not changed:
            problems.append(f"{cell_label(cell)}: drawing a stroke on the canvas did not change its cell's picture")
        if drawn == score:
            problems.append(f"{cell_label(cell)}: drawing a stroke on the canvas did not change its score ({score!r})")
    return problems


def wait_until_idle(page, timeout: float = FIGURE_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and kernel_status(page) != "idle":
        time.sleep(0.5)


def save(page):
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function(f"() => !{PANEL}.context.model.dirty", timeout=30_000)


def screenshot_notebook(page, stem: str, part_height: int = 6_000) -> list[str]:
    """The whole notebook as PNGs: it scrolls inside the page, so the page is made as tall as a part of it
    (``part_height`` px), one picture per part (``<stem>-1.png``, ...)."""
    scroller = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer"
    viewport = page.viewport_size
    toolbar = page.evaluate(f"() => window.innerHeight - document.querySelector('{scroller}').clientHeight")
    total = page.evaluate(f"() => document.querySelector('{scroller}').scrollHeight")
    paths = []
    try:
        for part, top in enumerate(range(0, total, part_height)):
            page.set_viewport_size({"width": viewport["width"], "height": min(part_height, total - top) + toolbar})
            page.evaluate(f"(top) => {{ document.querySelector('{scroller}').scrollTop = top; }}", top)
            page.wait_for_timeout(300)
            path = SCREENSHOTS / f"{stem}-{part + 1}.png"
            page.screenshot(path=str(path))
            paths.append(path.name)
    finally:
        page.set_viewport_size(viewport)
    return paths


def cells_of(page) -> list[dict]:
    return page.evaluate(CELLS_JS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_with_live_widgets_in_jupyterlab(lab, browser, name):
    stem = name.removesuffix(".ipynb")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems, phase = [], "opening"
    start = time.monotonic()
    print(f"\n{name}")
    try:
        open_notebook(page, lab, name)
        phase = "Restart Kernel and Run All"
        restart_and_run_all(page)
        wait_until_run_all_done(page)
        ran = time.monotonic() - start
        wait_for_images(page)
        cells = cells_of(page)
        problems += run_problems(cells)
        problems += render_problems(cells)
        phase = "moving the sliders"
        problems += slider_problems(page, cells, f"{stem}-run-all")
        phase = "drawing on the canvas"
        problems += canvas_problems(page, cells, f"{stem}-run-all")
        screenshot_notebook(page, f"{stem}-run-all")

        phase = "saving and reloading"
        save(page)
        page.reload()
        wait_for_notebook(page, name)
        wait_for_widgets(page)
        wait_for_images(page)
        cells = cells_of(page)
        problems += [f"after reload: {p}" for p in render_problems(cells)]
        phase = "moving the sliders after the reload"
        problems += [f"after reload: {p}" for p in slider_problems(page, cells, f"{stem}-reloaded")]
        screenshot_notebook(page, f"{stem}-reloaded")
        print(f"  Run All {ran:.0f} s, all checks {time.monotonic() - start:.0f} s, "
              f"{sum(len(c['outputs']) for c in cells)} outputs in {len(cells)} code cells")
    except Exception as error:  # noqa: BLE001 -- reported with the problems found so far, and a screenshot
        problems.append(f"while {phase}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        page.screenshot(path=str(SCREENSHOTS / f"{stem}-failure.png"))
    finally:
        context.close()
        lab.shut_down_kernels()
    assert not problems, f"{name}:\n  " + "\n  ".join(problems)
