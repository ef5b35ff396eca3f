"""A PNG contact sheet of a search: each query image, then its neighbours with label and score."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from pretrain.ground.atomic import atomic_path

TILE, CAPTION = 128, 28


def _tile(path: Path | None, lines: list[str]) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE + CAPTION), "white")
    try:
        with Image.open(path) as im:  # type: ignore[arg-type]
            tile.paste(ImageOps.contain(ImageOps.exif_transpose(im).convert("RGB"), (TILE, TILE)), (0, 0))
    except (OSError, TypeError, AttributeError):
        ImageDraw.Draw(tile).text((4, TILE // 2), "not readable", fill="red")
    draw = ImageDraw.Draw(tile)
    for i, line in enumerate(lines):
        draw.text((3, TILE + 2 + 12 * i), line[:22], fill="black")
    return tile


def contact_sheet(out: str | Path, queries: list[tuple[Path | None, str]],
                  results: list[list[tuple[Path | None, str, float]]], first: str = "query") -> Path:
    """One row per query: the query tile (`first`, caption), then (path, label, score) tiles of its results."""
    cols = 1 + max((len(r) for r in results), default=0)
    sheet = Image.new("RGB", (cols * (TILE + 4), len(queries) * (TILE + CAPTION + 4)), (220, 220, 220))
    for row, ((qpath, qcaption), hits) in enumerate(zip(queries, results)):
        y = row * (TILE + CAPTION + 4)
        sheet.paste(_tile(qpath, [first, qcaption]), (0, y))
        for col, (path, label, score) in enumerate(hits, 1):
            sheet.paste(_tile(path, [f"{col}. {label}", f"{score:.3f}"]), (col * (TILE + 4), y))
    out = Path(out)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out
