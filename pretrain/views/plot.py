"""A picture of what a view pipeline does: source images in rows, their views in columns.

Views are shown un-normalised, each in a cell of the same size with its pixel size on top; crop
boxes (vicregl) are drawn on the source in the colour of their view, LoRot labels written on the view.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pretrain.ground.atomic import write_with  # noqa: E402
from pretrain.ground.preprocess import bound_aspect  # noqa: E402
from pretrain.views.ops import MultiView, denormalize  # noqa: E402

BOX_COLOURS = plt.get_cmap("tab10").colors


def upscale(image: Image.Image, size: int) -> Image.Image:
    """Bicubic upscale so the short side is at least `size` (a 32 px image shown at 224 px views)."""
    image = bound_aspect(image)
    short = min(image.size)
    if short >= size:
        return image
    return image.resize((round(image.width * size / short), round(image.height * size / short)),
                        Image.Resampling.BICUBIC)


def make_views(transform: MultiView, images: list[Image.Image], seed: int) -> list[dict]:
    """Each image's pipeline output as `{"views": [...], extras...}`, seeded per image like training."""
    out = []
    for i, image in enumerate(images):
        torch.manual_seed(seed * 1_000_003 + i)
        result = transform(image)
        out.append(result if isinstance(result, dict) else {"views": result})
    return out


def plot_views(transform: MultiView, images: list[Image.Image], out: str | Path, *, title: str = "",
               seed: int = 0, cell: float = 1.4) -> Path:
    """Write a PNG grid: one row per image (the source, then every view) and return its path."""
    samples = make_views(transform, images, seed)
    columns = 1 + max(len(s["views"]) for s in samples)
    fig, axes = plt.subplots(len(images), columns, figsize=(cell * columns, cell * len(images) + 0.4),
                             squeeze=False)
    for row, (image, sample) in enumerate(zip(images, samples)):
        ax = axes[row, 0]
        ax.imshow(image)
        ax.set_title(f"source {image.width}x{image.height}", fontsize=7)
        for v, box in enumerate(sample.get("boxes", [])):
            x0, y0, x1, y1 = box.tolist()
            left, right = sorted((x0 * image.width, x1 * image.width))
            top, bottom = sorted((y0 * image.height, y1 * image.height))
            ax.add_patch(plt.Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                                       linewidth=1.2, edgecolor=BOX_COLOURS[v % len(BOX_COLOURS)]))
        for v, view in enumerate(sample["views"]):
            ax = axes[row, v + 1]
            ax.imshow(denormalize(view).permute(1, 2, 0).numpy())
            label = f"view {v + 1} ({view.shape[-1]} px)"
            if "rotations" in sample:
                label += f" rot {int(sample['rotations'][v]) * 90}"
            if "boxes" in sample:
                label += " flip" if sample["boxes"][v, 0] > sample["boxes"][v, 2] else ""
                for spine in ax.spines.values():
                    spine.set_edgecolor(BOX_COLOURS[v % len(BOX_COLOURS)])
                    spine.set_linewidth(2)
            ax.set_title(label, fontsize=7)
        for ax in axes[row, len(sample["views"]) + 1:]:
            ax.set_visible(False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    write_with(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return out
