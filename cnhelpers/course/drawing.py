"""Draw an outline with the mouse and watch the ControlNet follow it (notebook 06).

:class:`OutlineCanvas` is a small `anywidget <https://anywidget.dev>`_ canvas (anywidget runs in JupyterLab 4 with
ipywidgets 8 and in Colab's ipywidgets 7.7): press, drag round a closed shape, release. The points of the stroke,
in 0..1 of the canvas, come back to Python as ``points``. :func:`outline_widget` turns them into a fill outline
(white on black, as the training data's), generates the picture with the pipeline for the prompt made of two
colour menus, and prints the IoU of the drawn region (the pixels of the circle colour against the filled shape)
and the seconds it took. Without a kernel the notebook shows a static form: the outline and the picture.
"""

from __future__ import annotations

import time

import numpy as np
from PIL import Image, ImageDraw

from .fill import PALETTE, outline_width
from .metrics import circle_mask, mask_iou
from .widgets import WithStaticForm

#: The canvas, in JavaScript: pointer events draw the stroke; on release the stroke is sent to the kernel.
CANVAS_ESM = """
function render({ model, el }) {
  const size = model.get("size");
  const canvas = document.createElement("canvas");
  canvas.width = size;
  canvas.height = size;
  canvas.className = "cn-outline-canvas";
  canvas.title = "press, drag round a closed shape, release";
  canvas.style.cssText = "border:1px solid #888;cursor:crosshair;touch-action:none;background:#000";
  const context = canvas.getContext("2d");
  function draw(points) {
    context.fillStyle = "#000";
    context.fillRect(0, 0, size, size);
    if (points.length < 2) return;
    context.strokeStyle = "#fff";
    context.lineWidth = Math.max(2, size / 64);
    context.beginPath();
    context.moveTo(points[0][0] * size, points[0][1] * size);
    for (const [x, y] of points.slice(1)) context.lineTo(x * size, y * size);
    context.closePath();
    context.stroke();
  }
  const at = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) / box.width, (event.clientY - box.top) / box.height];
  };
  let stroke = null;
  canvas.addEventListener("pointerdown", (event) => {
    stroke = [at(event)];
    canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (stroke === null) return;
    stroke.push(at(event));
    draw(stroke);
  });
  const finish = () => {
    if (stroke !== null && stroke.length >= 3) {
      model.set("points", stroke);
      model.save_changes();
    } else {
      draw(model.get("points"));
    }
    stroke = null;
  };
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", finish);
  model.on("change:points", () => draw(model.get("points")));
  draw(model.get("points"));
  el.appendChild(canvas);
}
export default { render };
"""


def circle_points(cx: float = 0.5, cy: float = 0.5, radius: float = 0.3, n: int = 48) -> list[list[float]]:
    """A circle as a closed stroke of ``n`` points, in 0..1 of the canvas (the canvas's first shape)."""
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return [[float(cx + radius * np.cos(a)), float(cy + radius * np.sin(a))] for a in angles]


def outline_from_points(points, resolution: int) -> tuple[Image.Image, np.ndarray]:
    """The closed stroke through ``points`` (0..1) as a fill outline, white on black at ``resolution`` px, the
    training data's stroke width, and the filled region it encloses as a boolean mask (the IoU's target)."""
    if len(points) < 3:
        raise ValueError(f"An outline needs at least 3 points, got {len(points)}: draw a closed shape")
    xy = [(float(x) * resolution, float(y) * resolution) for x, y in points]
    outline = Image.new("RGB", (resolution, resolution), "black")
    ImageDraw.Draw(outline).line(xy + [xy[0]], fill=(255, 255, 255), width=outline_width(resolution), joint="curve")
    region = Image.new("L", (resolution, resolution), 0)
    ImageDraw.Draw(region).polygon(xy, fill=255)
    return outline, np.asarray(region) > 0


def follow_outline(pipeline, points, circle: str, background: str, resolution: int, seed: int = 0,
                   **pipeline_kwargs) -> dict:
    """Generate the picture for the outline through ``points`` and the prompt of the two colours; score it.

    Returns the outline, the picture, the prompt, the IoU of the drawn region (pixels nearer the circle colour
    than the background colour, against the filled shape) and the seconds the generation took.
    """
    import torch

    outline, region = outline_from_points(points, resolution)
    prompt = f"{circle} circle with {background} background"
    start = time.perf_counter()
    image = pipeline(prompt, image=outline, generator=torch.Generator().manual_seed(seed), height=resolution,
                     width=resolution, **pipeline_kwargs).images[0]
    seconds = time.perf_counter() - start
    iou = mask_iou(circle_mask(image, PALETTE[circle], PALETTE[background]), region)
    return dict(outline=outline, image=image, prompt=prompt, iou=iou, seconds=seconds)


def _side_by_side(outline: Image.Image, image: Image.Image, width: int) -> Image.Image:
    both = Image.new("RGB", (2 * width + 8, width), "white")
    both.paste(outline.resize((width, width), Image.NEAREST), (0, 0))
    both.paste(image.resize((width, width), Image.NEAREST), (width + 8, 0))
    return both


def _png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def outline_widget(pipeline, resolution: int, circle: str = "yellow", background: str = "navy", seed: int = 0,
                   size: int = 256, points=None, **pipeline_kwargs):
    """The drawing canvas, two colour menus, the generated picture and its score, redrawn after every stroke
    and every change of colour; without a kernel, the outline and the picture (a static form)."""
    import anywidget
    import ipywidgets as widgets
    import traitlets

    class OutlineCanvas(anywidget.AnyWidget):
        _esm = CANVAS_ESM
        points = traitlets.List().tag(sync=True)
        size = traitlets.Int(256).tag(sync=True)

    canvas = OutlineCanvas(points=points or circle_points(), size=size)
    colours = sorted(PALETTE)
    circle_menu = widgets.Dropdown(options=colours, value=circle, description="circle")
    background_menu = widgets.Dropdown(options=colours, value=background, description="background")
    picture = widgets.Image(format="png", width=size, height=size)
    score = widgets.Label()

    def redraw(_change=None):
        if circle_menu.value == background_menu.value:
            score.value = f"circle and background are both {circle_menu.value}: pick two colours"
            return
        result = follow_outline(pipeline, canvas.points, circle_menu.value, background_menu.value, resolution,
                                seed=seed, **pipeline_kwargs)
        picture.value = _png(result["image"].resize((size, size), Image.NEAREST))
        score.value = (f"'{result['prompt']}': IoU of the drawn region {result['iou']:.2f}, "
                       f"drawn in {result['seconds']:.2f} s")
        redraw.last = result

    canvas.observe(redraw, names="points")
    circle_menu.observe(redraw, names="value")
    background_menu.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([widgets.HBox([circle_menu, background_menu]), widgets.HBox([canvas, picture]), score])
    first = redraw.last
    return WithStaticForm(box, _png(_side_by_side(first["outline"], first["image"], size)),
                          f"the outline and the picture for '{first['prompt']}' (IoU of the drawn region "
                          f"{first['iou']:.2f}); in a running notebook, draw your own outline with the mouse")
