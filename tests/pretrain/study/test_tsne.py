"""`sslforge plot tsne`: a 2-d map that keeps clusters apart, drawn from a model dir's embeddings."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from pretrain.cli import main
from pretrain.study.tsne import tsne_2d


def test_tsne_keeps_separated_clusters_apart() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 64, generator=g) * 5
    labels = torch.arange(3).repeat_interleave(30)
    feats = centres[labels] + torch.randn(90, 64, generator=g)
    points = torch.from_numpy(tsne_2d(feats, perplexity=10, seed=0))
    assert points.shape == (90, 2) and torch.isfinite(points).all()
    d = torch.cdist(points, points).fill_diagonal_(float("inf"))
    assert (labels[d.argmin(1)] == labels).float().mean() >= 0.95


def test_plot_tsne_command_writes_a_png(tiny_run: Path, image_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tsne.png"
    assert main(["plot", "tsne", "--model", str(tiny_run), "--data", str(image_folder), "--out", str(out),
                 "--workers", "0", "--quiet"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 400
    assert main(["plot", "tsne", "--model", str(tmp_path / "nope"), "--data", str(image_folder)]) == 2
    assert "does not exist" in capsys.readouterr().err
