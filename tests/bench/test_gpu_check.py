"""The prepared GPU check runs its every probe on the CPU (--device cpu --tiny), so it cannot rot between GPU draws."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, str, Path]:
    out = tmp_path_factory.mktemp("gpu-check")
    proc = subprocess.run([sys.executable, str(CHECK), "--device", "cpu", "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "report.json").read_text()), (out / "report.md").read_text(), out


def _result(report: dict, section: str, name: str) -> dict:
    rows = [r for r in report["results"] if r["section"] == section and r["name"].startswith(name)]
    assert rows, f"no probe {section}/{name}"
    return rows[0]


def test_every_probe_ran_or_says_why_not(report):
    data, _, out = report
    assert data["results"], "no probes ran"
    for row in data["results"]:
        assert row["status"] in ("ok", "skipped"), row
        if row["status"] == "skipped":  # only what a CPU machine cannot have (or the bench extra), never the budget
            assert any(w in row["reason"] for w in ("CUDA", "tensorrt", "GPU", "lightly is not installed")), row
    assert not (out / "work").exists(), "work files must not come back from the GPU machine"


def test_training_probes_report_speed_memory_and_loss(report):
    data, _, _ = report
    trained = [r["result"] for r in data["results"] if r["section"] in ("training", "methods", "versus lightly")
               and r["status"] == "ok" and "gpu_augment" in r["result"]]
    assert {r["method"] for r in trained} >= {"simclr", "byol", "vicregl"}
    assert {r["gpu_augment"] for r in trained} == {True, False}
    for r in trained:
        assert r["steps"] == data["sizes"]["steps"] and r["images_per_s"] > 0 and r["finite"]
        assert r["precision"] == "fp32" and r["peak_gpu_memory_mb"] is None  # CPU: no autocast, no CUDA memory


def test_lightly_side_by_side(report):
    pytest.importorskip("lightly")
    data, markdown, _ = report
    row = _result(data, "versus lightly", "lightly simclr")
    assert row["status"] == "ok" and row["result"]["images_per_s"] > 0 and row["result"]["finite"]
    assert "| simclr | 32 |" in markdown.split("## Every method")[0]  # the ratio table has the pair


def test_deploy_paths_agree_with_torch(report):
    data, markdown, _ = report
    embed = _result(data, "embed", "torch backend")["result"]
    assert embed["images"] == data["sizes"]["embed_images"] and embed["cpu_parity_min_cosine"] > 0.9999
    onnx = _result(data, "export", "onnx")["result"]
    assert onnx["ok"] and onnx["min_cosine"] > 0.999 and onnx["providers"]
    search = _result(data, "retrieval", "exact search")["result"]
    assert search["n"] == data["sizes"]["search_n"]
    assert all(b["agreement_with_torch_cpu"] == 1.0 for b in search["backends"].values())
    ddp = _result(data, "distributed", "torchrun")["result"]
    assert ddp == {**ddp, "backend": "gloo", "processes": 1, "sync_bn": True, "steps": data["sizes"]["steps"]}
    for title in ("## Environment", "## Every method", "## Retrieval: exact search", "## Failed and skipped"):
        assert title in markdown


def test_without_cuda_it_says_where_to_run_it(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run([sys.executable, str(CHECK), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "no CUDA device here" in proc.stderr and "--device cpu --tiny" in proc.stderr
