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
