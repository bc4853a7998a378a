"""Pictures a person looks at: image grids, reverse-process strips, and 2-D scatter plots."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from diffusion.data.datasets import to_uint8


def image_grid(images, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile images [N, H, W, C] in [−1, 1] (or uint8) into one uint8 [H', W', C] picture."""
    images = images if np.asarray(images).dtype == np.uint8 else to_uint8(images)
    images = np.asarray(images)
    n, h, w, c = images.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    return grid


def labelled_grid(blocks, ncols: int = 8, pad: int = 2, line: int = 12) -> np.ndarray:
    """Each (text, images [K, H, W, C] in [−1, 1] or uint8) of ``blocks`` as its text written above its
    images tiled ``ncols`` wide (``image_grid``), the blocks stacked downwards on white: a prompt grid."""
    from PIL import Image, ImageDraw
    grids = [image_grid(images, ncols=min(ncols, len(images)), pad=pad) for _, images in blocks]
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    width = max(max(g.shape[1] for g in grids), *(int(measure.textlength(t)) + 2 * pad for t, _ in blocks))
    channels = grids[0].shape[2]
    parts = []
    for (text, _), grid in zip(blocks, grids):
        band = Image.new("L", (width, line), 255)
        ImageDraw.Draw(band).text((pad, 0), text, fill=0)
        parts.append(np.repeat(np.asarray(band)[..., None], channels, axis=2))
        parts.append(np.pad(grid, ((0, 0), (0, width - grid.shape[1]), (0, 0)), constant_values=255))
    return np.concatenate(parts)


def save_png(picture: np.ndarray, path, scale: int = 1):
    """Write a uint8 [H, W, C] picture as PNG, optionally enlarged ``scale``× (nearest)."""
    from PIL import Image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)
    return path


def trajectory_strip(frames) -> np.ndarray:
    """Frames [F, N, H, W, C] (x_t over the reverse process) as N rows of F columns."""
    frames = np.asarray(frames)
    F, N = frames.shape[:2]
    return image_grid(frames.transpose(1, 0, 2, 3, 4).reshape((N * F,) + frames.shape[2:]), ncols=F)


def toy_figure(data, samples, trajectory, path, title: str = ""):
    """Data | samples | reverse trajectory side by side (seed 002's swiss-roll figure)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    trajectory = np.asarray(trajectory)
    last = len(trajectory) - 1
    # The structure appears late in the reverse process: show more of its end.
    picks = np.unique((last - np.round(last * np.array([1.0, 0.4, 0.2, 0.1, 0.0]))).astype(int))
    fig, axes = plt.subplots(1, 2 + len(picks), figsize=(3 * (2 + len(picks)), 3.2))
    lim = float(np.abs(np.asarray(data)).max()) * 1.3
    panels = [("data", data), ("samples", samples)] + [(f"reverse frame {i}/{last}", trajectory[i]) for i in picks]
    for ax, (name, pts) in zip(axes, panels):
        pts = np.asarray(pts)
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.5)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
