"""Pictures and widgets for the notebooks: data grids, transform steps, the Min-SNR curve, live training
plots, parameter groups and gradient flow, generated rows and masks, memory breakdowns.

The training loop never imports this module: notebooks hand its live plots to ``train`` as callbacks.
"""

from __future__ import annotations

import io
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..data import image_transforms
from ..images import png_bytes, to_picture
from ..losses import min_snr_weights
from ..outputs import read_log
from ..own_data import canny_conditioning
from .anatomy import GRADIENT_GROUPS, PARAMETER_KINDS
from .metrics import circle_mask, disc_from_outline, prompt_colours, score_fill_image
from .widgets import WithStaticForm, log_slider, round_log_values


def _imshow(ax, picture, **kwargs):
    """``ax.imshow`` with sharp pixels where the picture is enlarged, anti-aliased where it is shrunk (nearest
    neighbour there keeps every n-th pixel: jagged edges, and noise that makes the stored PNG large)."""
    width = np.asarray(picture).shape[1]
    shown = ax.get_position().width * ax.figure.get_figwidth() * ax.figure.dpi
    ax.imshow(picture, interpolation="nearest" if width <= shown else "antialiased", **kwargs)


def _tile_inches(width: int, target: int = 150) -> float:
    """How wide to draw a ``width``-pixel picture: a whole zoom up to about ``target`` pixels (so its pixels stay
    even and its PNG small, see :func:`_whole_zoom`), or ``target`` pixels when it is larger; plus room for
    the layout's margins."""
    return (width * max(1, target // width) if width <= target else target) / plt.rcParams["figure.dpi"] + 0.4


def _whole_zoom(fig):
    """Shrink each axes that shows an enlarged picture to a whole multiple of the picture's size, in place.

    Nearest-neighbour at 1.6x repeats pixels unevenly (1, 2, 1, 2 ...): the picture looks uneven and its PNG is
    two to three times larger than at 2x. Call after ``tight_layout``.
    """
    pixels_per_inch = fig.dpi
    width_px, height_px = fig.get_figwidth() * pixels_per_inch, fig.get_figheight() * pixels_per_inch
    for ax in fig.axes:
        if not ax.images:
            continue
        rows, columns = ax.images[0].get_array().shape[:2]
        box = ax.get_position()
        zoom = min(box.width * width_px / columns, box.height * height_px / rows)
        if zoom < 1:
            continue
        zoom = int(zoom)
        w, h = zoom * columns / width_px, zoom * rows / height_px
        x0 = round((box.x0 + (box.width - w) / 2) * width_px) / width_px
        y0 = round((box.y0 + (box.height - h) / 2) * height_px) / height_px
        ax.set_position([x0, y0, w, h])
    return fig


def _live_picture(fig, text: str):
    """An Image widget for a figure redrawn during a run, displayed now; ``plt.close`` keeps matplotlib's own
    copy out of the cell. The stored notebook gets the last picture from the saved widget state
    (``cnhelpers.course.runner``)."""
    import ipywidgets as widgets
    from IPython.display import display

    plt.close(fig)
    picture = widgets.Image(format="png")
    display(WithStaticForm(picture, text=text))
    return picture


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)  # the figure's own dpi keeps _whole_zoom's pixels whole
    return buffer.getvalue()


def _bare(ax):
    ax.set_xticks([])
    ax.set_yticks([])


# --- notebook 00: setup --------------------------------------------------------------------------------------------


def show_examples(dataset, n: int = 4, columns=("conditioning_image", "image"), title_column: str = "text"):
    """Show ``n`` rows of a data set side by side: the conditioning image above the target, with captions.

    Notebooks 00 and 01.
    """
    n = min(n, len(dataset))
    tile = max(_tile_inches(dataset[0][columns[-1]].width), 1.3)
    fig, axes = plt.subplots(len(columns), n, figsize=(tile * n + 0.3, (tile + 0.1) * len(columns) + 0.3),
                             squeeze=False)
    for col in range(n):
        row = dataset[col]
        for line, column in enumerate(columns):
            _imshow(axes[line][col], row[column])
            axes[line][col].set_xticks([])
            axes[line][col].set_yticks([])
        # About 12 characters of 7-point text to an inch of tile: a caption wraps before it reaches its neighbour's.
        axes[0][col].set_title(textwrap.fill(str(row[title_column]), max(12, int(tile * 12))), fontsize=7)
    for line, column in enumerate(columns):
        axes[line][0].set_ylabel(column, fontsize=9)
    fig.tight_layout()
    _whole_zoom(fig)
    return fig


def show_denoising(pipeline, prompt: str, num_inference_steps: int = 20, shown: int = 6, seed: int = 0, **kwargs):
    """The latents of one generation decoded after a few of its denoising steps: noise becoming a picture.
    ``kwargs`` go to the pipeline (e.g. ``image=`` for a ControlNet pipeline, ``guidance_scale=``).

    Notebook 00.
    """
    snapshots = {}
    keep = set(np.linspace(0, num_inference_steps - 1, shown).round().astype(int).tolist())

    def remember(pipe, step, timestep, tensors):
        if step in keep:
            snapshots[step] = (int(timestep), tensors["latents"].detach().clone())
        return tensors

    pipeline(prompt, num_inference_steps=num_inference_steps, generator=torch.Generator().manual_seed(seed),
             callback_on_step_end=remember, callback_on_step_end_tensor_inputs=["latents"], **kwargs)
    vae = pipeline.vae
    fig, axes = plt.subplots(1, len(snapshots), figsize=(1.6 * len(snapshots), 2.0), squeeze=False)
    for ax, (step, (timestep, latents)) in zip(axes[0], sorted(snapshots.items())):
        with torch.no_grad():
            decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample[0].float().cpu()
        ax.imshow(to_picture(decoded, normalised=True), interpolation="nearest")
        ax.set_title(f"after step {step + 1}\n(t = {timestep})", fontsize=9)
        _bare(ax)
    fig.suptitle(prompt, fontsize=9)
    fig.tight_layout()
    _whole_zoom(fig)
    return fig


# --- notebook 01: dataset transforms -------------------------------------------------------------------------------


def show_transform_steps(image, resolution: int):
    """What the geometric transforms do to one picture: the original, resized (short side), center-cropped.

    Notebook 01.
    """
    from torchvision import transforms

    resized = transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR)(image)
    cropped = transforms.CenterCrop(resolution)(resized)
    steps = [("original", image), (f"Resize({resolution})", resized), (f"CenterCrop({resolution})", cropped)]
    widths = [step.size[0] for _, step in steps]
    fig, axes = plt.subplots(1, 3, figsize=(4.6, 2.0), gridspec_kw={"width_ratios": widths})
    for ax, (title, step) in zip(axes, steps):
        _imshow(ax, step)
        ax.set_title(f"{title}\n{step.size[0]} x {step.size[1]} px", fontsize=9)
        _bare(ax)
    fig.tight_layout()
    _whole_zoom(fig)
    return fig


def show_value_ranges(pixel_values, conditioning_pixel_values):
    """Histograms of a target tensor (in [-1, 1]) and a conditioning tensor (in [0, 1]).

    Notebook 01.
    """
    fig, axes = plt.subplots(1, 2, figsize=(9, 2.6), sharey=False)
    for ax, values, title, colour in ((axes[0], pixel_values, "pixel_values (image)", "tab:blue"),
                                      (axes[1], conditioning_pixel_values, "conditioning_pixel_values", "tab:orange")):
        ax.hist(values.flatten().numpy(), bins=50, range=(-1.05, 1.05), color=colour)
        ax.set_title(f"{title}: [{float(values.min()):.2f}, {float(values.max()):.2f}]", fontsize=9)
        ax.axvline(0, color="gray", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("value")
    axes[0].set_ylabel("pixels (log)")
    fig.tight_layout()
    return fig


def show_batch(batch: dict, tokenizer, n: int | None = None, columns: int = 4):
    """The first ``n`` examples of a training batch as pictures, ``columns`` to a row (so titles stay readable):
    each conditioning image above its target, titled with its decoded prompt.

    Notebook 01.
    """
    n = min(n or len(batch["pixel_values"]), len(batch["pixel_values"]))
    columns = min(columns, n)
    rows = -(-n // columns)
    fig, axes = plt.subplots(2 * rows, columns, figsize=(1.7 * columns, 1.85 * 2 * rows), squeeze=False)
    for index in range(rows * columns):
        top, bottom = axes[2 * (index // columns)][index % columns], axes[2 * (index // columns) + 1][index % columns]
        if index >= n:
            top.axis("off")
            bottom.axis("off")
            continue
        prompt = tokenizer.decode(batch["input_ids"][index], skip_special_tokens=True) or "(empty prompt)"
        top.imshow(to_picture(batch["conditioning_pixel_values"][index], normalised=False), interpolation="nearest")
        bottom.imshow(to_picture(batch["pixel_values"][index], normalised=True), interpolation="nearest")
        top.set_title(textwrap.fill(prompt, 26), fontsize=7)
        _bare(top)
        _bare(bottom)
        if index % columns == 0:
            top.set_ylabel("conditioning_pixel_values", fontsize=8)
            bottom.set_ylabel("pixel_values", fontsize=8)
    fig.tight_layout()
    _whole_zoom(fig)
    return fig


def show_canny_thresholds(image, thresholds=((30, 60), (100, 200), (300, 600))):
    """One picture and its canny edges for several ``(low, high)`` threshold pairs.

    Notebook 01.
    """

    fig, axes = plt.subplots(1, len(thresholds) + 1, figsize=(1.75 * (len(thresholds) + 1), 2.1))
    _imshow(axes[0], image)
    axes[0].set_title("image", fontsize=8)
    for ax, (low, high) in zip(axes[1:], thresholds):
        _imshow(ax, canny_conditioning(image, low, high))
        ax.set_title(f"canny low={low}\nhigh={high}", fontsize=8)
    for ax in axes:
        _bare(ax)
    fig.tight_layout()
    _whole_zoom(fig)
    return fig


def canny_threshold_widget(image, low_threshold: int = 100, high_threshold: int = 200, width: int | None = None):
    """Two sliders for canny's thresholds beside the image and the edges they give, redrawn as you move them.

    Built from ``Image`` widgets updated by the sliders, not from ``interact``: ``interact`` draws into an
    ``Output`` widget, which can stall headless runs (nbclient issue #312). Without a kernel, the notebook
    shows the two pictures at the given thresholds (:class:`cnhelpers.course.widgets.WithStaticForm`).

    Notebook 01.
    """
    from PIL import Image
    import ipywidgets as widgets

    width = width or image.width * max(1, 256 // image.width)  # a whole zoom: even pixels, a small PNG
    slider = dict(min=0, max=800, step=10, continuous_update=False)
    low = widgets.IntSlider(value=low_threshold, description="low", **slider)
    high = widgets.IntSlider(value=high_threshold, description="high", **slider)
    original = widgets.Image(value=png_bytes(image, width), format="png")
    edges = widgets.Image(format="png")
    message = widgets.Label()

    def redraw(_change=None):
        if low.value > high.value:
            message.value = f"low ({low.value}) is above high ({high.value}): move one slider"
            return
        message.value = f"canny low={low.value}, high={high.value}"
        edges.value = png_bytes(canny_conditioning(image, low.value, high.value), width)

    low.observe(redraw, names="value")
    high.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([widgets.HBox([low, high]), message, widgets.HBox([original, edges])])
    both = Image.new("RGB", (2 * width + 8, round(image.height * width / image.width)), "white")
    for x, picture in ((0, image), (width + 8, canny_conditioning(image, low.value, high.value))):
        both.paste(picture.convert("RGB").resize((width, both.height), Image.NEAREST), (x, 0))
    return WithStaticForm(box, png_bytes(both, both.width),
                          f"the image and its canny edges at low={low.value}, high={high.value} "
                          "(two sliders in a running notebook)")


# --- notebook 02: a ControlNet from the UNet -----------------------------------------------------------------------


#: Colours of the parameter kinds of :func:`cnhelpers.course.anatomy.parameter_groups`.
KIND_COLOURS = {"copied": "tab:blue", "changed": "tab:purple", "new_zero": "tab:red", "new": "tab:orange",
                "unet_only": "lightgray"}


def show_parameter_groups(rows, title: str = "", kind_labels: dict | None = None):
    """Horizontal bars: parameters per module, coloured by copied / new zero / new random / UNet only.
    ``kind_labels`` replaces some kinds' legend text (notebook 08: "copied from the transformer").

    Notebooks 02 and 08.
    """
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.2))
    labels = [module for module, _, _ in rows]
    ax.barh(range(len(rows)), [count for _, _, count in rows], color=[KIND_COLOURS[k] for _, k, _ in rows])
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    kinds = list(dict.fromkeys(kind for _, kind, _ in rows))
    names = PARAMETER_KINDS | (kind_labels or {})
    ax.legend(handles=[Patch(color=KIND_COLOURS[k], label=names[k]) for k in kinds], fontsize=8,
              loc="lower right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def show_conditioning_embedding(controlnet, conditioning):
    """The conditioning image and the output of each convolution of the ControlNet's conditioning
    embedding (how strongly each place responds, over all channels), with its size: how a 64 px condition
    becomes the latents' 8 x 8.

    Notebook 02.
    """
    embedding = controlnet.controlnet_cond_embedding
    convs = [(name, module) for name, module in embedding.named_children() if isinstance(module, torch.nn.Conv2d)]
    convs += [(f"blocks.{i}", m) for i, m in enumerate(embedding.blocks)]
    outputs = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, name=name: outputs.__setitem__(name, out.detach()))
             for name, m in convs]
    try:
        with torch.no_grad():
            embedding(conditioning[:1])
    finally:
        for hook in hooks:
            hook.remove()
    order = ["conv_in"] + [f"blocks.{i}" for i in range(len(embedding.blocks))] + ["conv_out"]
    fig, axes = plt.subplots(1, len(order) + 1, figsize=(1.9 * (len(order) + 1), 2.5))
    axes[0].imshow(to_picture(conditioning[0], normalised=False), interpolation="nearest")
    axes[0].set_title(f"condition\n{conditioning.shape[-1]} px", fontsize=8)
    for ax, name in zip(axes[1:], order):
        out = outputs[name][0]
        # Each channel's deviation from its own mean, averaged: shows where the features respond.
        response = (out - out.mean(dim=(1, 2), keepdim=True)).abs().mean(0)
        # Zero padding makes the border light up in random layers; scale colours to the interior.
        interior = response[1:-1, 1:-1] if response.shape[-1] > 4 else response
        ax.imshow(response.numpy(), cmap="magma", vmin=float(interior.min()), vmax=float(interior.max()) or None)
        note = " (all 0)" if not out.any() else ""
        ax.set_title(f"{name}\n{out.shape[0]} ch, {out.shape[-1]} x {out.shape[-2]}{note}", fontsize=8)
    for ax in axes:
        _bare(ax)
    fig.tight_layout()
    return fig


def plot_condition_share(shares: dict[str, list[float]], title: str = ""):
    """Per initialisation (label -> :func:`cnhelpers.course.anatomy.condition_share`'s list), how much of each
    conditioning-embedding layer's features differs between outlines, on a log scale, the last value written.

    Notebook 03."""
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    for label, values in shares.items():
        line, = ax.semilogy(range(len(values)), values, marker="o", label=label)
        ax.annotate(f"{values[-1]:.2g}", (len(values) - 1, values[-1]), textcoords="offset points", xytext=(8, -3),
                    fontsize=8, color=line.get_color())
    count = max(len(values) for values in shares.values())
    ax.set_xticks(range(count), ["conv_in", *(f"blocks.{i}" for i in range(count - 1))], fontsize=8)
    ax.set_xlim(-0.3, count + 0.1)  # (room for the last values)
    ax.set_ylabel("share that differs\nbetween outlines", fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    return fig


def show_gradient_flow(history: list[dict]):
    """Which parameter groups got a gradient at each training step (coloured) and which did not (grey).

    Notebook 02.
    """
    groups = list(GRADIENT_GROUPS)
    norms = np.array([[record[g] for g in groups] for record in history])
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(history) + 1.9))
    ax.imshow(norms > 0, cmap="Greens", vmin=-0.3, vmax=1.3, aspect="auto")
    for step, row in enumerate(norms):
        for col, value in enumerate(row):
            ax.text(col, step, f"{value:.1e}" if value else "0", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(groups)), [textwrap.fill(g, 24) for g in groups], fontsize=8)
    ax.set_yticks(range(len(history)), [f"step {r['step']}" for r in history], fontsize=9)
    ax.set_title("gradient norm reaching each part of the ControlNet", fontsize=10)
    fig.tight_layout()
    return fig


def residual_shapes(controlnet, resolution: int, vae_factor: int = 8) -> list[tuple[int, int, int]]:
    """(channels, height, width) of each residual a ControlNet hands its UNet at ``resolution`` (the mid block's
    last), from its config alone: one per skip connection of the encoder.

    Notebook 02 (through :func:`draw_controlnet`).
    """
    config = controlnet.config
    channels, side = list(config.block_out_channels), resolution // vae_factor
    shapes = [(channels[0], side, side)]  # conv_in
    for level, width in enumerate(channels):
        shapes += [(width, side, side)] * config.layers_per_block
        if level < len(channels) - 1:
            side //= 2
            shapes.append((width, side, side))  # the downsampler
    return shapes + [(channels[-1], side, side)]


def draw_controlnet(controlnet, resolution: int, title: str = "", vae_factor: int = 8):
    """The ControlNet architecture, drawn from a model's config: the trainable copy of the UNet's encoder with the
    conditioning embedding (orange), the locked UNet's encoder and decoder (blue), and the zero convolutions (red)
    that carry each residual, with its shape at ``resolution``, into the decoder's skip connections.

    Notebook 02.
    """
    from collections import Counter

    from matplotlib.patches import FancyArrowPatch, Rectangle

    shapes = residual_shapes(controlnet, resolution, vae_factor)
    levels = len(controlnet.config.block_out_channels)
    per_level = [controlnet.config.layers_per_block + (level < levels - 1) + (level == 0) for level in range(levels)]
    # Each level's zero convolutions are labelled in a column of their own, right of the drawing, where no arrow
    # runs (labels between the rows were crossed by the vertical arrows).
    label_x = 9.75
    fig, ax = plt.subplots(figsize=(12.6, 1.05 * (levels + 2) + 0.7))
    ax.set_xlim(0, 12.6)
    ax.set_ylim(-levels - 1.9, 1.25)
    ax.axis("off")

    def box(x, y, w, text, colour, alpha=0.35):
        ax.add_patch(Rectangle((x, y - 0.33), w, 0.66, facecolor=colour, edgecolor="black", alpha=alpha))
        ax.text(x + w / 2, y, text, ha="center", va="center", fontsize=8)

    def arrow(start, end, colour="black"):
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=9, color=colour, lw=1))

    copy_x, zero_x, up_x, down_x, w = 2.3, 4.45, 5.0, 7.6, 1.9
    box(0.1, 0.6, w, f"conditioning image\n(3, {resolution}, {resolution})", "white", 1)
    box(0.1, -0.5, w, "conditioning embedding\n(new; its last conv zero)", "tab:orange")
    arrow((1.05, 0.27), (1.05, -0.17))
    box(copy_x, 0.6, w, "noisy latents, t, text", "white", 1)
    box(down_x, 0.6, w, "noisy latents, t, text", "white", 1)
    box(up_x, 0.6, w, "prediction (noise or v)", "white", 1)
    arrow((2.0, -0.5), (copy_x, -0.9))  # added to the copy's first features
    arrow((copy_x + w / 2, 0.27), (copy_x + w / 2, -0.67))
    arrow((down_x + w / 2, 0.27), (down_x + w / 2, -0.67))
    arrow((up_x + w / 2, -0.67), (up_x + w / 2, 0.27))
    first = 0
    for level in range(levels):
        y = -level - 1
        width = controlnet.config.block_out_channels[level]
        box(copy_x, y, w, f"trainable copy\ndown block {level} ({width} ch)", "tab:orange")
        box(up_x, y, w, f"locked UNet\nup block {levels - 1 - level}", "tab:blue")
        box(down_x, y, w, f"locked UNet\ndown block {level}", "tab:blue")
        group = shapes[first:first + per_level[level]]
        first += len(group)
        counted = " + ".join(f"{n} x {shape}" for shape, n in Counter(group).items())
        ax.add_patch(Rectangle((zero_x, y - 0.12), 0.3, 0.24, facecolor="tab:red", edgecolor="black"))
        ax.text(label_x, y, f"{len(group)} zero conv{'s' if len(group) > 1 else ''}:\n{counted}",
                fontsize=7.5, color="tab:red", ha="left", va="center")
        arrow((copy_x + w, y), (zero_x, y), "tab:red")
        arrow((zero_x + 0.3, y), (up_x, y), "tab:red")
        arrow((down_x, y - 0.15), (up_x + w, y - 0.15), "gray")  # the UNet's own skip connections
        if level < levels - 1:
            arrow((copy_x + w / 2, y - 0.33), (copy_x + w / 2, y - 0.67))
            arrow((down_x + w / 2, y - 0.33), (down_x + w / 2, y - 0.67))
            arrow((up_x + w / 2, y - 0.67), (up_x + w / 2, y - 0.33))
    y = -levels - 1
    box(copy_x, y, w, "trainable copy\nmid block", "tab:orange")
    box(up_x, y, down_x + w - up_x, "locked UNet mid block", "tab:blue")
    ax.add_patch(Rectangle((zero_x, y - 0.12), 0.3, 0.24, facecolor="tab:red", edgecolor="black"))
    ax.text(label_x, y, f"1 zero conv:\n{shapes[-1]}", fontsize=7.5, color="tab:red", ha="left", va="center")
    arrow((copy_x + w, y), (zero_x, y), "tab:red")
    arrow((zero_x + 0.3, y), (up_x, y), "tab:red")
    arrow((copy_x + w / 2, y + 0.67), (copy_x + w / 2, y + 0.33))
    arrow((down_x + w / 2, y + 0.67), (down_x + w / 2, y + 0.33))
    arrow((up_x + w / 2, y + 0.33), (up_x + w / 2, y + 0.67))
    ax.text(6.3, 1.12, title or f"ControlNet: {len(shapes)} residuals at {resolution} px", ha="center", fontsize=10)
    ax.text(0.1, y - 0.8, f"{len(shapes)} residuals. Orange: trained. Blue: frozen. Red: zero convolutions, which "
            "start at zero, so the UNet starts unchanged. Grey: the UNet's own skip connections.", fontsize=7.5)
    return fig


# --- notebook 03: the training loop --------------------------------------------------------------------------------


@torch.no_grad()
def show_noising(vae, image, noise_scheduler, timesteps=(0, 100, 300, 500, 700, 999), seed: int = 0):
    """One image's latent noised to several timesteps by ``add_noise`` (one noise draw for all), and each
    noisy latent decoded: what the ControlNet and the UNet see at each ``t``, and how little is left at the end.

    Notebook 03.
    """
    side = image.size[0]
    pixels = image_transforms(side)(image.convert("RGB"))[None].to(vae.device, vae.dtype)
    latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed)).to(latents)
    fig, axes = plt.subplots(2, len(timesteps), figsize=(1.6 * len(timesteps), 3.4), squeeze=False)
    for column, t in enumerate(timesteps):
        noisy = noise_scheduler.add_noise(latents, noise, torch.tensor([t]))
        decoded = vae.decode(noisy / vae.config.scaling_factor).sample[0].float().cpu()
        alpha_bar = float(noise_scheduler.alphas_cumprod[t])
        axes[0][column].imshow(to_picture(decoded, normalised=True), interpolation="nearest")
        axes[0][column].set_title(f"t = {t}\nSNR {alpha_bar / (1 - alpha_bar):.3g}", fontsize=9)
        axes[1][column].imshow(noisy[0, 0].float().cpu(), cmap="gray", interpolation="nearest")
        for row in (0, 1):
            _bare(axes[row][column])
    axes[0][0].set_ylabel("decoded", fontsize=9)
    axes[1][0].set_ylabel("latent, ch. 0", fontsize=9)
    fig.tight_layout()
    _whole_zoom(fig)
    return fig


def plot_min_snr_weights(noise_scheduler, gammas=(1.0, 5.0, 20.0), ax=None, reference_gammas=()):
    """Min-SNR weight against the timestep, for several γ, for epsilon and for v-prediction.

    ``reference_gammas`` are drawn first, thin and grey (they also fix the axes' range).

    Notebook 03.
    """
    timesteps = torch.arange(noise_scheduler.config.num_train_timesteps)
    if ax is None:
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
    for panel, prediction_type in zip(ax, ("epsilon", "v_prediction")):
        # a copy per prediction type: the caller's scheduler keeps its own
        scheduler = type(noise_scheduler).from_config(noise_scheduler.config, prediction_type=prediction_type)
        for gamma in reference_gammas:
            panel.plot(timesteps, min_snr_weights(scheduler, timesteps, gamma), color="0.75", lw=1,
                       label=f"γ = {gamma:g}")
        for gamma in gammas:
            panel.plot(timesteps, min_snr_weights(scheduler, timesteps, gamma), label=f"γ = {gamma:g}")
        panel.set_title(f"{prediction_type}")
        panel.set_xlabel("timestep t (noisier →)")
        panel.set_yscale("log")
        panel.grid(alpha=0.3)
    ax[0].set_ylabel("loss weight")
    ax[0].legend()
    ax[0].figure.tight_layout()
    return ax[0].figure


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (for ipywidgets.Image), closing the figure.

    Notebook 03 (through :func:`min_snr_widget`).
    """
    picture = _png(fig)
    plt.close(fig)
    return picture


def min_snr_widget(noise_scheduler, gamma: float = 5.0, gammas=None):
    """A γ slider above the Min-SNR weight curves it redraws (an Image widget: safe to run headless).

    The slider steps through round values, 0.1, 0.2, 0.5 ... 100 (``gammas``); the range's two ends stay drawn
    in grey, so the axes stay put and each step visibly moves the curve.

    Notebook 03.
    """
    gammas = list(gammas or round_log_values(0.1, 100))

    def render(value):
        return plot_min_snr_weights(noise_scheduler, gammas=(value,), reference_gammas=(gammas[0], gammas[-1]))

    return figure_slider(render, log_slider(gammas, gamma, description="γ"))


def draw_loss(ax, steps, losses, total_steps: int, smoothing: int = 10):
    """The loss per step (faint) and its running mean over ``smoothing`` steps, on ``ax``.

    Notebooks 03 and 07 (through the live plots).
    """
    ax.clear()
    ax.plot(steps, losses, alpha=0.3, label="loss")
    if len(losses) >= smoothing:
        kernel = np.ones(smoothing) / smoothing
        ax.plot(steps[smoothing - 1:], np.convolve(losses, kernel, "valid"), label=f"mean of {smoothing}")
    ax.set(xlim=(0, total_steps), xlabel="step", ylabel="loss")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)


class LiveLossAndIoUPlot:
    """A training callback: the loss (left) and the held-out circle IoU of each checkpoint (right), live.

    ``checkpoint_iou`` is a :class:`cnhelpers.course.evaluation.CheckpointIoU`; this plot calls it, then redraws.
    ``target`` draws a dashed line at that IoU.

    Notebook 03.
    """

    def __init__(self, total_steps: int, checkpoint_iou, every: int = 10, smoothing: int = 10,
                 target: float | None = None):
        self.total_steps, self.every, self.smoothing, self.target = total_steps, every, smoothing, target
        self.checkpoint_iou = checkpoint_iou
        self.steps, self.losses = [], []
        self.fig, (self.loss_ax, self.iou_ax) = plt.subplots(1, 2, figsize=(10, 3))
        self.picture = _live_picture(self.fig, f"the loss and the checkpoints' circle IoU of a {total_steps}-step "
                                     "run, redrawn while it trains")

    def __call__(self, logs: dict):
        self.steps.append(logs["step"])
        self.losses.append(logs["loss"])
        scored = len(self.checkpoint_iou.steps)
        self.checkpoint_iou(logs)
        if len(self.checkpoint_iou.steps) > scored or logs["step"] % self.every == 0 \
                or logs["step"] == self.total_steps:
            self.redraw()

    def redraw(self):
        draw_loss(self.loss_ax, self.steps, self.losses, self.total_steps, self.smoothing)
        ax = self.iou_ax
        ax.clear()
        ax.plot(self.checkpoint_iou.steps, self.checkpoint_iou.ious, "o-", color="C2")
        if self.target is not None:
            ax.axhline(self.target, ls="--", color="gray", lw=1, label=f"target {self.target}")
            ax.legend(loc="lower right")
        ax.set(xlim=(0, self.total_steps), ylim=(0, 1), xlabel="step",
               ylabel=f"circle IoU ({self.checkpoint_iou.n} held-out)")
        ax.grid(alpha=0.3)
        self.fig.tight_layout()
        self.picture.value = _png(self.fig)


# --- notebook 04b: measuring memory --------------------------------------------------------------------------------


def show_memory_breakdown(rows: list[dict], title: str = "", unit: str = "GB", ax=None):
    """Stacked bars of what each rung's peak is made of (rows of a ladder counted with ``--count-tensors``).

    Each row needs ``rung``, ``name`` and ``breakdown_gb`` (weights, gradients, optimizer state, activations
    and temporaries, in GB); ``unit`` is "GB" or "MB". Rows without a breakdown are left out.

    Notebook 04b.
    """
    scale = {"GB": 1.0, "MB": 1e3}[unit]
    rows = [row for row in rows if row.get("breakdown_gb")]
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.2))
    labels = [f"{row['rung']}. {row['name']}" for row in rows]
    left = [0.0] * len(rows)
    for category in rows[0]["breakdown_gb"]:
        widths = [row["breakdown_gb"][category] * scale for row in rows]
        ax.barh(labels, widths, left=left, label=category)
        left = [a + b for a, b in zip(left, widths)]
    ax.invert_yaxis()
    ax.set_xlabel(f"peak tensor memory, {unit}")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.figure.tight_layout()
    return ax


# --- notebook 06: inference and control fidelity -------------------------------------------------------------------


def show_image_rows(rows, row_titles=None, column_titles=None, size: float | None = None, title: str | None = None):
    """Show rows of PIL images as a labelled grid (pixels kept sharp); rows may differ in length.

    ``size``: inches per picture; by default a whole zoom of the first picture to about 150 px (a 64 px picture
    at 2x), so titles stay readable as stored and the PNG small.

    Notebook 06.
    """
    columns = max(len(row) for row in rows)
    size = size or _tile_inches(rows[0][0].width)
    fig, axes = plt.subplots(len(rows), columns, figsize=(size * columns, size * len(rows) + 0.3 * bool(title)),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(row):
                _imshow(ax, row[c])
            else:
                ax.axis("off")
        if row_titles:
            axes[r][0].set_ylabel(row_titles[r], fontsize=7)
    for c, name in enumerate(column_titles or []):
        axes[0][c].set_title(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _whole_zoom(fig)
    return fig


def show_masks(image, conditioning_image, prompt: str, size: float = 1.8):
    """How a fill image is scored: the outline, its filled disc, the image, and its circle-coloured pixels.

    Notebook 06.
    """

    disc = disc_from_outline(conditioning_image)
    mask = circle_mask(image, *prompt_colours(prompt))
    scores = score_fill_image(image, conditioning_image, prompt)
    panels = [(conditioning_image, "outline"), (disc, "disc (filled outline)"), (image, "image"),
              (mask, "circle-coloured pixels"), (2 * (mask & disc) + (mask ^ disc), "agree (yellow) / differ (teal)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size + 0.4))
    for ax, (picture, name) in zip(axes, panels):
        if hasattr(picture, "dtype"):
            picture = picture.astype("uint8")  # matplotlib does not draw boolean arrays
        ax.imshow(picture, interpolation="nearest", cmap="viridis", vmin=0, vmax=2 if name.startswith("agree") else 1)
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{prompt}: IoU {scores['iou']:.2f}, colour error circle {scores['circle_colour_error']:.2f}, "
                 f"background {scores['background_colour_error']:.2f}", fontsize=9)
    fig.tight_layout()
    _whole_zoom(fig)
    return fig


def figure_slider(render, slider):
    """``slider`` above the figure ``render(value)`` draws, redrawn when the slider moves: a widget to display.

    Like ``ipywidgets.interact``, but the figure is an ``Image`` widget, not an ``Output`` widget: headless
    runners (nbclient, nbval) then have no widget output to route, which can make them wait forever on the next
    cell (jupyter/nbclient#312), and a reloaded page keeps redrawing it (it forgets IPython display handles).
    Without a kernel, the notebook shows the figure at the slider's first value.

    Notebook 06.
    """
    import ipywidgets as widgets

    first = figure_png(render(slider.value))
    picture = widgets.Image(value=first, format="png")
    slider.observe(lambda change: setattr(picture, "value", figure_png(render(change["new"]))), names="value")
    readout = getattr(slider, "label", None) or slider.value  # a SelectionSlider's label: 5, not 5.0
    name = slider.description or "value"
    return WithStaticForm(widgets.VBox([slider, picture]), first,
                          f"the figure at {name} = {readout} (a slider in a running notebook)")


# --- notebook 07: SDXL ---------------------------------------------------------------------------------------------


class LiveLossPlot:
    """A training callback that redraws the loss curve in place every ``every`` steps (and at the end).

    The curve is an ``ipywidgets.Image``: a reloaded page keeps showing it redrawn.

    Notebook 07.
    """

    def __init__(self, total_steps: int, every: int = 10, smoothing: int = 10):
        self.total_steps, self.every, self.smoothing = total_steps, every, smoothing
        self.steps, self.losses = [], []
        self.fig, self.ax = plt.subplots(figsize=(7, 3))
        self.picture = _live_picture(self.fig, f"the loss curve of a {total_steps}-step run, redrawn while it trains")

    def __call__(self, logs: dict):
        self.steps.append(logs["step"])
        self.losses.append(logs["loss"])
        if logs["step"] % self.every == 0 or logs["step"] == self.total_steps:
            self.redraw()

    def redraw(self):
        draw_loss(self.ax, self.steps, self.losses, self.total_steps, self.smoothing)
        self.fig.tight_layout()
        self.picture.value = _png(self.fig)


# --- notebook 08: ControlNet on a diffusion transformer ------------------------------------------------------------


def show_patches(image, latents: torch.Tensor, patch_size: int, tokens: torch.Tensor):
    """From picture to tokens: the picture with its patches outlined, one latent channel cut into
    ``patch_size`` x ``patch_size`` patches, and the token sequence (one row per patch, its features across).

    Notebook 08.
    """
    side = latents.shape[-1]
    pixels_per_patch = np.asarray(image).shape[1] // (side // patch_size)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2), gridspec_kw={"width_ratios": [1, 1, 1.6]})
    _imshow(axes[0], image)
    axes[0].set_title(f"picture {np.asarray(image).shape[1]} px\n(a patch: {pixels_per_patch} px)", fontsize=9)
    axes[1].imshow(latents[0, 0].float().numpy(), cmap="gray", interpolation="nearest")
    axes[1].set_title(f"latents {tuple(latents.shape[1:])}, channel 0\n{patch_size}x{patch_size} patches", fontsize=9)
    for ax, step, limit in ((axes[0], pixels_per_patch, np.asarray(image).shape[1]), (axes[1], patch_size, side)):
        for line in range(0, limit + 1, step):
            ax.axhline(line - 0.5, color="tab:orange", lw=1)
            ax.axvline(line - 0.5, color="tab:orange", lw=1)
        _bare(ax)
    rows = side // patch_size
    for index in range(rows * rows):
        r, c = divmod(index, rows)
        axes[1].text(c * patch_size + patch_size / 2 - 0.5, r * patch_size + patch_size / 2 - 0.5, str(index),
                     color="tab:orange", ha="center", va="center", fontsize=8)
    axes[2].imshow(tokens[0].float().numpy(), cmap="coolwarm", aspect="auto", interpolation="nearest")
    axes[2].set(xlabel=f"features ({tokens.shape[-1]})", ylabel=f"token (patch index, {tokens.shape[1]})")
    axes[2].set_title("the image tokens the transformer reads", fontsize=9)
    fig.tight_layout()
    return fig


def residual_for_block(block: int, num_blocks: int, num_residuals: int, rule: str) -> int | None:
    """Which ControlNet residual the transformer's block ``block`` adds, as diffusers' transformers pick it:
    ``"sd3"``: ``int(block / (num_blocks / num_residuals))`` (SD3Transformer2DModel), and none for the last block,
    which returns no text (``context_pre_only``); ``"flux"``: ``block // ceil(num_blocks / num_residuals)``
    (FluxTransformer2DModel, double and single blocks alike).

    Notebook 08.
    """
    if rule == "sd3":
        return None if block == num_blocks - 1 else int(block / (num_blocks / num_residuals))
    if rule == "flux":
        return block // int(np.ceil(num_blocks / num_residuals))
    raise ValueError(f"rule {rule!r}: 'sd3' or 'flux'")


def show_residual_reuse(cases):
    """Each case ``(title, num_blocks, num_residuals, rule)`` drawn as a row: the ControlNet's residuals (top) and the
    transformer's blocks (bottom), a line from each block to the residual it adds (:func:`residual_for_block`);
    a residual that no block adds is drawn hatched.

    Notebook 08.
    """
    fig, axes = plt.subplots(len(cases), 1, figsize=(10, 1.6 * len(cases)), squeeze=False)
    for ax, (title, num_blocks, num_residuals, rule) in zip(axes[:, 0], cases):
        used = {residual_for_block(b, num_blocks, num_residuals, rule) for b in range(num_blocks)} - {None}
        width = max(num_blocks, num_residuals)
        block_x = np.linspace(0, width - 1, num_blocks)
        residual_x = np.linspace(0, width - 1, num_residuals)
        for b, x in enumerate(block_x):
            r = residual_for_block(b, num_blocks, num_residuals, rule)
            if r is None:  # a block that adds no residual
                ax.add_patch(plt.Rectangle((x - 0.4, -0.35), 0.8, 0.35, color="lightgray"))
                continue
            ax.plot([residual_x[r], x], [1, 0], color=f"C{r % 10}", lw=1.2)
            ax.add_patch(plt.Rectangle((x - 0.4, -0.35), 0.8, 0.35, color=f"C{r % 10}", alpha=0.5))
        for r, x in enumerate(residual_x):
            ax.add_patch(plt.Rectangle((x - 0.4, 1), 0.8, 0.35, color=f"C{r % 10}", alpha=0.9 if r in used else 0.2,
                                       hatch=None if r in used else "//"))
            ax.text(x, 1.17, str(r), ha="center", va="center", fontsize=7)
        ax.set(xlim=(-0.8, width - 0.2), ylim=(-0.5, 1.5))
        ax.set_yticks([-0.17, 1.17], ["blocks", "residuals"], fontsize=8)
        ax.set_xticks([])
        unused = num_residuals - len(used)
        ax.set_title(f"{title}: {num_blocks} blocks, {num_residuals} residuals ({rule} rule)"
                     + (f", {unused} never added" if unused else ""), fontsize=9)
        for side in ax.spines.values():
            side.set_visible(False)
    fig.tight_layout()
    return fig


def show_noise_paths(x0: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor, fractions=(0, .25, .5, .75, 1)):
    """The forward processes side by side on one picture ``x0`` (``(3, H, W)`` in [-1, 1]) and one ``noise``: DDPM's
    ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` at timesteps ``fraction * (T - 1)`` (top row), flow
    matching's ``x_t = (1 - sigma) x0 + sigma noise`` at ``sigma = fraction`` (middle row), and the two pairs of
    coefficients over the path (bottom): a curve for DDPM, straight lines for flow matching.

    Notebook 08.
    """
    steps = len(alphas_cumprod)
    fig = plt.figure(figsize=(10, 6.2))
    grid = fig.add_gridspec(3, len(fractions), height_ratios=[1, 1, 1.3])
    for c, fraction in enumerate(fractions):
        t = round(fraction * (steps - 1))
        abar = alphas_cumprod[t]
        rows = ((abar.sqrt() * x0 + (1 - abar).sqrt() * noise, f"DDPM t={t}\n√ᾱ={abar.sqrt():.2f}"),
                ((1 - fraction) * x0 + fraction * noise, f"flow σ={fraction:.2f}"))
        for r, (picture, label) in enumerate(rows):
            ax = fig.add_subplot(grid[r, c])
            _imshow(ax, to_picture(picture, normalised=True))
            ax.set_title(label, fontsize=8)
            _bare(ax)
    ax = fig.add_subplot(grid[2, :])
    position = np.linspace(0, 1, steps)
    ax.plot(position, alphas_cumprod.sqrt().numpy(), color="C0", label="DDPM: signal √ᾱ_t")
    ax.plot(position, (1 - alphas_cumprod).sqrt().numpy(), color="C0", ls="--", label="DDPM: noise √(1-ᾱ_t)")
    ax.plot(position, 1 - position, color="C3", label="flow: signal 1-σ")
    ax.plot(position, position, color="C3", ls="--", label="flow: noise σ")
    ax.set(xlabel="position on the path (t / T, or σ)", ylabel="coefficient")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_timestep_densities(draws: dict, sigmas: dict, bins: int = 50):
    """Left: histograms of ``u`` per weighting scheme (``draws``: name -> samples in [0, 1], as
    ``compute_density_for_timestep_sampling`` draws them). Right: the noise levels ``sigma`` those draws become
    through the training scheduler's schedule (``sigmas``: name -> samples).

    Notebook 08.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, samples, label in ((axes[0], draws, "u (the density's draw)"), (axes[1], sigmas, "σ (the noise level)")):
        for i, (name, values) in enumerate(samples.items()):
            ax.hist(np.asarray(values), bins=bins, range=(0, 1), density=True, histtype="step", lw=1.5, color=f"C{i}",
                    label=name)
        ax.set(xlabel=label, ylabel="density", xlim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def show_packing(latents: torch.Tensor, packed: torch.Tensor):
    """Flux's packing on a real tensor: the ``(C, H, W)`` latents with their 2x2 squares numbered, and the packed
    ``(H/2 * W/2, 4C)`` tokens, each row one square's four pixels of every channel.

    Notebook 08.
    """
    channels, height, width = latents.shape[1:]
    fig, axes = plt.subplots(1, channels + 1, figsize=(10, 2.8),
                             gridspec_kw={"width_ratios": [1] * channels + [2]})
    for c in range(channels):
        ax = axes[c]
        ax.imshow(latents[0, c].float().numpy(), cmap="gray", interpolation="nearest")
        for line in range(0, height + 1, 2):
            ax.axhline(line - 0.5, color="tab:orange", lw=0.8)
            ax.axvline(line - 0.5, color="tab:orange", lw=0.8)
        if c == 0:
            for index in range((height // 2) * (width // 2)):
                r, col = divmod(index, width // 2)
                ax.text(2 * col + 0.5, 2 * r + 0.5, str(index), color="tab:orange", ha="center", va="center", fontsize=7)
        ax.set_title(f"channel {c}\n{height}x{width}", fontsize=8)
        _bare(ax)
    axes[-1].imshow(packed[0].float().numpy(), cmap="gray", aspect="auto", interpolation="nearest")
    axes[-1].set(xlabel=f"features: {channels} channels x 2x2 = {packed.shape[-1]}",
                 ylabel=f"token ({packed.shape[1]})")
    axes[-1].set_title("packed: one token per 2x2 square", fontsize=8)
    fig.tight_layout()
    return fig


def plot_iou_by_scale(scales, ious: dict, title: str = ""):
    """Mean held-out circle IoU at each ControlNet conditioning scale, one line per run (``ious``: label -> values).

    Notebook 08.
    """
    fig, ax = plt.subplots(figsize=(6, 3))
    for label, values in ious.items():
        ax.plot(scales, values, "o-", label=label)
    ax.set(xlabel="controlnet_conditioning_scale", ylabel="circle IoU (held-out)", ylim=(0, 1))
    ax.axvline(0.7, color="gray", ls="--", lw=1)
    ax.text(0.71, 0.92, "0.7: upstream's\nvalidation", fontsize=7, color="gray", va="top")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


# --- notebook 09: your own ControlNet ------------------------------------------------------------------------------


def read_consistency_log(log_path) -> tuple[list[int], list[float]]:
    """The ``(steps, scores)`` of the consistency lines of a run's ``train_log.jsonl`` (``--validation_condition``).

    Notebook 09.
    """
    scored = [entry for entry in read_log(log_path) if "consistency" in entry]
    return [entry["step"] for entry in scored], [entry["consistency"] for entry in scored]


def plot_consistency_curve(log_path, without: float | None = None, title: str = "", ax=None):
    """The consistency score at each validation of a run, read from its ``train_log.jsonl``; ``without``: the score
    of the same pictures drawn without the ControlNet (conditioning scale 0), a dashed line.

    Notebook 09.
    """
    steps, scores = read_consistency_log(log_path)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(steps, scores, "o-", label="with the ControlNet (each validation)")
    if without is not None:
        ax.axhline(without, color="grey", linestyle="--", label="without it (conditioning scale 0)")
    ax.set_xlabel("training step")
    ax.set_ylabel("consistency (silhouette IoU)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    ax.figure.tight_layout()
    return ax


def plot_benchmark_curves(rows: list[dict], title: str = "", baseline: float | None = None, x_label: str = "steps",
                          x=None, ax=None):
    """Held-out circle IoU against steps (or ``x(row)``), one curve per row of a ``benchmarks/fill_curves.py`` result
    (``name``, ``steps``, ``iou``); ``baseline``: the base alone, dotted.

    Notebook 09.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 3.8))
    for row in rows:
        ax.plot(x(row) if x else row["steps"], row["iou"], marker="o", markersize=3, label=row["name"])
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle=":", label="base alone (no ControlNet)")
    ax.set(title=title, xlabel=x_label, ylabel="held-out circle IoU", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.figure.tight_layout()
    return ax
