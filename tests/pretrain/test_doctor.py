"""`sslforge doctor`: one line per thing, each stage's lines from the same choice its code makes."""
from __future__ import annotations

import json

import pytest

from pretrain.cli import main
from pretrain.ground.doctor import render, sections


def test_doctor_reports_every_stage(capsys):
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    for section in ("[pretrain]", "[export]", "[retrieval]", "[serve]"):
        assert section in text
    import torch

    assert f"torch                {torch.__version__}" in text or torch.__version__ in text
    if not torch.cuda.is_available():
        assert "training runs on" in text and "cpu, fp32" in text


def test_doctor_json_matches_the_text(capsys):
    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["pretrain"]["torch"]
    import onnxruntime

    from export.runtimes import preferred_providers

    assert data["export"]["--backend onnx uses"] == preferred_providers(onnxruntime.get_available_providers())[0]
    from retrieval.exact import exact_backend

    assert data["retrieval"]["exact search uses"] == exact_backend("auto")


def test_both_onnxruntime_wheels_is_a_warning(monkeypatch):
    import export.doctor as doctor

    monkeypatch.setattr(doctor, "package_version", lambda d: {"onnxruntime": "1.0", "onnxruntime-gpu": "1.1"}.get(d))
    lines = dict(doctor.onnxruntime_lines())
    assert lines["onnxruntime"].startswith("onnxruntime-gpu 1.1")
    assert "share one module" in lines["warning"] and "pip uninstall" in lines["warning"]


def test_missing_extras_are_lines_not_errors(monkeypatch):
    import export.doctor as export_doctor
    import retrieval.doctor as retrieval_doctor

    monkeypatch.setattr(export_doctor, "package_version", lambda d: None)
    assert "not installed" in dict(export_doctor.onnxruntime_lines())["onnxruntime"]
    monkeypatch.setattr(retrieval_doctor, "faiss_or_none", lambda: None)
    assert "not installed (pip install 'sslforge[retrieval]')" in dict(retrieval_doctor.lines())["Faiss"]


def test_a_broken_plugin_is_reported_and_the_rest_still_runs(monkeypatch):
    import pretrain.ground.doctor as doctor

    class Broken:
        name = "broken"

        def load(self):
            def lines():
                raise OSError("libcudart.so.12: cannot open shared object file")
            return lines

    monkeypatch.setattr(doctor, "entry_points", lambda group: [Broken()])
    parts = sections()
    assert parts[0][0] == "pretrain" and dict(parts[1][1])["error"].startswith("OSError: libcudart")
    assert "[broken]" in render(parts)


@pytest.mark.parametrize("extra", ["gpu", "tensorrt"])
def test_gpu_extras_are_declared(extra):
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    wanted = {"gpu": {"onnxruntime-gpu", "faiss-gpu-cu12"}, "tensorrt": {"tensorrt"}}[extra]
    names = {r.split(">")[0].split("=")[0].split("<")[0] for r in project["optional-dependencies"][extra]}
    assert wanted <= names


def test_a_provider_that_does_not_load_is_not_reported_as_used():
    import onnxruntime as ort

    from export.doctor import providers_that_load

    # onnxruntime keeps only what loads: asking for CUDA on a machine without it gets the CPU provider
    got = providers_that_load(ort, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert got[-1] == "CPUExecutionProvider"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert got == ["CPUExecutionProvider"]
