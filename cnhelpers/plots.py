"""Pictures: grids of examples with their captions."""

from __future__ import annotations

import matplotlib.pyplot as plt


def show_examples(dataset, n: int = 4, columns=("conditioning_image", "image"), title_column: str = "text"):
    """Show ``n`` rows of a data set side by side: the conditioning image above the target, with captions."""
    n = min(n, len(dataset))
    fig, axes = plt.subplots(len(columns), n, figsize=(2.2 * n, 2.3 * len(columns)), squeeze=False)
    for col in range(n):
        row = dataset[col]
        for line, column in enumerate(columns):
            axes[line][col].imshow(row[column])
            axes[line][col].set_xticks([])
            axes[line][col].set_yticks([])
        axes[0][col].set_title(row[title_column], fontsize=8, wrap=True)
    for line, column in enumerate(columns):
        axes[line][0].set_ylabel(column, fontsize=9)
    fig.tight_layout()
    return fig


def image_grid(rows):
    """Paste rows of equally sized PIL images into one picture (rows may differ in length)."""
    from PIL import Image

    width, height = rows[0][0].size
    grid = Image.new("RGB", (width * max(len(r) for r in rows), height * len(rows)), "white")
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            grid.paste(image.convert("RGB").resize((width, height)), (x * width, y * height))
    return grid


def plot_min_snr_weights(noise_scheduler, gammas=(1.0, 5.0, 20.0), ax=None):
    """Min-SNR weight against the timestep, for several γ, for epsilon and for v-prediction."""
    import torch

    from .training import min_snr_weights

    timesteps = torch.arange(noise_scheduler.config.num_train_timesteps)
    if ax is None:
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
    for panel, prediction_type in zip(ax, ("epsilon", "v_prediction")):
        noise_scheduler.register_to_config(prediction_type=prediction_type)
        for gamma in gammas:
            panel.plot(timesteps, min_snr_weights(noise_scheduler, timesteps, gamma), label=f"γ = {gamma:g}")
        panel.set_title(f"{prediction_type}")
        panel.set_xlabel("timestep t (noisier →)")
        panel.set_yscale("log")
        panel.grid(alpha=0.3)
    noise_scheduler.register_to_config(prediction_type="epsilon")
    ax[0].set_ylabel("loss weight")
    ax[0].legend()
    ax[0].figure.tight_layout()
    return ax[0].figure


class LiveLossPlot:
    """A training callback that redraws the loss curve in place every ``every`` steps (and at the end)."""

    def __init__(self, total_steps: int, every: int = 10, smoothing: int = 10):
        from IPython.display import display

        self.total_steps, self.every, self.smoothing = total_steps, every, smoothing
        self.steps, self.losses = [], []
        self.fig, self.ax = plt.subplots(figsize=(7, 3))
        plt.close(self.fig)  # shown through the display handle only
        self.handle = display(self.fig, display_id=True)

    def __call__(self, logs: dict):
        self.steps.append(logs["step"])
        self.losses.append(logs["loss"])
        if logs["step"] % self.every == 0 or logs["step"] == self.total_steps:
            self.redraw()

    def redraw(self):
        import numpy as np

        self.ax.clear()
        self.ax.plot(self.steps, self.losses, alpha=0.3, label="loss")
        if len(self.losses) >= self.smoothing:
            kernel = np.ones(self.smoothing) / self.smoothing
            self.ax.plot(self.steps[self.smoothing - 1:], np.convolve(self.losses, kernel, "valid"),
                         label=f"mean of {self.smoothing}")
        self.ax.set_xlim(0, self.total_steps)
        self.ax.set_xlabel("step")
        self.ax.set_ylabel("loss")
        self.ax.legend(loc="upper right")
        self.ax.grid(alpha=0.3)
        self.fig.tight_layout()
        self.handle.update(self.fig)


def show_image_rows(rows, row_titles=None, column_titles=None, size: float = 1.6, title: str | None = None):
    """Show rows of PIL images as a labelled grid (pixels kept sharp); rows may differ in length."""
    columns = max(len(row) for row in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(size * columns, size * len(rows) + 0.3 * bool(title)),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(row):
                ax.imshow(row[c], interpolation="nearest")
            else:
                ax.axis("off")
        if row_titles:
            axes[r][0].set_ylabel(row_titles[r], fontsize=8)
    for c, name in enumerate(column_titles or []):
        axes[0][c].set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def show_masks(image, conditioning_image, prompt: str, size: float = 1.8):
    """How a fill image is scored: the outline, its filled disc, the image, and its circle-coloured pixels."""
    from .metrics import circle_mask, disc_from_outline, prompt_colours, score_fill_image

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
    return fig


def difference_image(image, reference, gain: float = 8.0):
    """What changed between two pictures: the per-pixel colour difference, times ``gain``, white on black.

    Useful when the pictures look alike: it shows where, and how much, a setting changed the result.
    """
    import numpy as np
    from PIL import Image

    delta = np.abs(np.asarray(image.convert("RGB"), float) - np.asarray(reference.convert("RGB"), float)).mean(axis=2)
    return Image.fromarray(np.clip(delta * gain, 0, 255).astype(np.uint8)).convert("RGB")


def show_with_slider(render, slider):
    """Show ``slider`` and the figure ``render(value)`` draws; redraw it when the slider moves.

    Like ``ipywidgets.interact``, but without an Output widget: headless runners (nbclient, nbval) then have
    no widget output to route, which can make them wait forever on the next cell (jupyter/nbclient#312).
    A stored copy shows the figure for the slider's initial value.
    """
    from IPython.display import display

    def draw(value):
        fig = render(value)
        plt.close(fig)  # shown through the display handle only
        return fig

    display(slider)
    handle = display(draw(slider.value), display_id=True)
    slider.observe(lambda change: handle.update(draw(change["new"])), names="value")
    return handle
