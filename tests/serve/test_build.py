"""`bentoml build` from the project root packs the service's code and pinned requirements (no model: the model
dir and index come from SSLFORGE_MODEL / SSLFORGE_INDEX when the bento is served)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def pins(file: Path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in file.read_text().splitlines()]
    return dict(line.split("==") for line in lines if "==" in line)


def test_bentoml_build_packs_the_service(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "SSLFORGE_MODEL": ""}
    out = subprocess.run([sys.executable, "-m", "bentoml", "build"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    (bento,) = [p for p in (tmp_path / "bentos" / "sslforge").iterdir() if p.is_dir()]
    assert yaml.safe_load((bento / "bento.yaml").read_text())["service"] == "serve.service:SSLForge"
    src = bento / "src"
    # every module of the four stages, subpackages included: the service imports across all of them
    modules = {p.relative_to(ROOT).as_posix() for stage in ("pretrain", "export", "retrieval", "serve")
               for p in (ROOT / stage).rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(m for m in modules if not (src / m).is_file())
    assert not missing, f"not packed into the bento: {missing}"
    assert not (src / "tests").exists() and not list(src.rglob("__pycache__"))
    packed = pins(bento / "env" / "python" / "requirements.txt")
    constraints = pins(ROOT / "constraints.txt")
    for name in ("torch", "timm", "pillow", "faiss-cpu", "onnxruntime", "bentoml"):
        assert packed[name] == constraints[name], name
