import csv
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pretrain.train.monitor import CollapseMonitor, effective_rank, embedding_std
from pretrain.train.trainer import Trainer


def test_embedding_std_against_numpy() -> None:
    z = torch.randn(64, 32)
    n = z.numpy() / np.linalg.norm(z.numpy(), axis=1, keepdims=True)
    expected = n.std(axis=0, ddof=1).mean() * math.sqrt(32)
    assert embedding_std(z) == pytest.approx(expected, rel=1e-5)
    assert embedding_std(torch.randn(4096, 64)) == pytest.approx(1.0, abs=0.02)  # random directions
    assert embedding_std(torch.ones(16, 8) * torch.arange(1, 17.0)[:, None]) < 1e-6  # one direction


def test_effective_rank_against_numpy_svd() -> None:
    for shape in [(40, 10), (10, 40)]:  # both branches: Gram of the batch or of the dimensions
        z = torch.randn(*shape, dtype=torch.float64) @ torch.diag(torch.linspace(0.1, 3, shape[1], dtype=torch.float64))
        c = z.numpy() - z.numpy().mean(axis=0)
        s = np.linalg.svd(c, compute_uv=False)
        p = s / s.sum()
        expected = math.exp(-(p * np.log(p)).sum())
        assert effective_rank(z) == pytest.approx(expected, rel=1e-4)
    line = torch.randn(50, 1) * torch.randn(1, 20)
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-3)
    # a known spectrum: rows +-3 e1 and +-1 e2 (mean zero) have singular values 3 sqrt(2) and sqrt(2), so
    # p = (0.75, 0.25) and the rank is exp(-(0.75 ln 0.75 + 0.25 ln 0.25)) = exp(0.562335) = 1.754765
    known = torch.tensor([[3.0, 0, 0], [-3, 0, 0], [0, 1, 0], [0, -1, 0]])
    assert effective_rank(known) == pytest.approx(1.754765, abs=1e-5)
    assert effective_rank(torch.eye(4) - 0.25) == pytest.approx(3.0, abs=1e-5)  # centred simplex: 3 equal values


def test_monitor_warns_once_when_embeddings_collapse() -> None:
    collapsed = nn.Linear(4, 8)
    nn.init.zeros_(collapsed.weight)  # every input maps to the bias: one point
    monitor = CollapseMonitor(collapsed, patience=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, 7):
            collapsed(torch.randn(16, 4))
            collapsed(torch.randn(16, 4))  # only the first call of a step is watched
            stats = monitor.stats(step)
            assert stats["emb_std"] < 1e-6
            assert ("eff_rank" in stats) == (step in (1,))
    assert len([w for w in caught if "collapsing" in str(w.message)]) == 1
    collapsed.eval()
    collapsed(torch.randn(16, 4))
    assert monitor.stats(7) == {}  # evaluation passes are not training embeddings


def test_every_run_logs_the_collapse_statistics(image_folder: Path, tmp_path: Path, tiny_config,
                                                monkeypatch) -> None:
    import pretrain.train.trainer

    seen: list[torch.Tensor] = []

    class Recording(CollapseMonitor):  # keeps a copy of every batch the monitor watches
        def _capture(self, module, inputs, output):
            if self._batch is None and module.training:
                seen.append(output.detach().clone())
            super()._capture(module, inputs, output)

    monkeypatch.setattr(pretrain.train.trainer, "CollapseMonitor", Recording)
    out = Trainer(tiny_config(image_folder, tmp_path / "run", epochs=1), progress=False).fit()
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(0 < float(r["emb_std"]) < 2 for r in rows)
    # step 1's logged rank is the numpy SVD's of the first embeddings the backbone produced in that step
    c = seen[0].double().flatten(1).numpy()
    s = np.linalg.svd(c - c.mean(axis=0), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    assert float(rows[0]["eff_rank"]) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-3)
    assert (out / "plots" / "loss.png").stat().st_size > 0
