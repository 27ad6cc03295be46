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
