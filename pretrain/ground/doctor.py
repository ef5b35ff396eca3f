"""`sslforge doctor`: what this machine has and where each stage will run, one line each.

    sslforge doctor [--json]

pretrain reports torch (version, CUDA and cuDNN builds, the GPUs, bf16, MPS, CPU threads). The later stages
add their own lines through the `sslforge.doctor` entry point group (export: onnxruntime and its providers,
TensorRT; retrieval: Faiss and its GPUs; serve: BentoML, Gradio), each from the same choice its code makes,
so pretrain never imports them (imports point one way) and a missing extra is a line, not an error.
"""
from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, entry_points, version

DOCTOR_PLUGINS = "sslforge.doctor"  # entry points: `lines() -> list[(name, value)]`

Line = tuple[str, str]


def package_version(dist: str) -> str | None:
    """The installed version of distribution `dist`, or None."""
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def not_installed(extra: str) -> str:
    return f"not installed (pip install 'sslforge[{extra}]')"


def torch_lines() -> list[Line]:
    import torch

    lines: list[Line] = [("torch", torch.__version__),
                         ("CUDA build", torch.version.cuda or "none (a CPU-only torch)")]
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    lines.append(("cuDNN", str(cudnn) if cudnn else "none"))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        for i in range(gpus):
            p = torch.cuda.get_device_properties(i)
            lines.append((f"GPU {i}", f"{p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability "
                                      f"{p.major}.{p.minor}"))
        bf16 = torch.cuda.is_bf16_supported()
        lines.append(("bf16", "yes: training autocasts to bf16" if bf16 else "no: training autocasts to fp16"))
        lines.append(("training runs on", "cuda (--device auto)"))
    else:
        lines.append(("GPUs", "none visible to torch" + (" (CUDA build present)" if torch.version.cuda else "")))
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            lines.append(("MPS", "available (--device mps)"))
        lines.append(("training runs on", "cpu, fp32 (--device auto)"))
    lines.append(("CPU threads", f"{torch.get_num_threads()} of {os.cpu_count()} cores"))
    return lines


def sections() -> list[tuple[str, list[Line]]]:
    """(section name, lines): pretrain first, then each installed stage's plugin, by name."""
    out = [("pretrain", [("sslforge", package_version("sslforge") or "source tree (not installed)"),
                         *torch_lines()])]
    for ep in sorted(entry_points(group=DOCTOR_PLUGINS), key=lambda e: e.name):
        try:
            out.append((ep.name, ep.load()()))
        except Exception as e:  # a broken extra is what a doctor is for: report it, keep going
            out.append((ep.name, [("error", f"{type(e).__name__}: {e}")]))
    return out


def render(parts: list[tuple[str, list[Line]]]) -> str:
    width = max(len(name) for _, lines in parts for name, _ in lines)
    rows = []
    for section, lines in parts:
        rows.append(f"[{section}]")
        rows.extend(f"  {name.ljust(width)}  {value}" for name, value in lines)
    return "\n".join(rows)


def as_json(parts: list[tuple[str, list[Line]]]) -> str:
    return json.dumps({section: dict(lines) for section, lines in parts}, indent=2)
