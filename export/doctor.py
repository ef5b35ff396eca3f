"""export's lines of `sslforge doctor`: ONNX, onnxruntime (its wheel, the providers the Embedder picks), TensorRT."""
from __future__ import annotations

from pretrain.ground.doctor import Line, not_installed, package_version


def onnxruntime_lines() -> list[Line]:
    cpu, gpu = package_version("onnxruntime"), package_version("onnxruntime-gpu")
    if cpu is None and gpu is None:
        return [("onnxruntime", not_installed("export") + ", or 'sslforge[gpu]' for CUDA")]
    import onnxruntime as ort

    from export.runtimes import preferred_providers

    wheel = f"onnxruntime-gpu {gpu}" if gpu else f"onnxruntime {cpu} (CPU wheel)"
    lines: list[Line] = [("onnxruntime", wheel)]
    if cpu and gpu:
        lines.append(("warning", f"both onnxruntime {cpu} and onnxruntime-gpu {gpu} are installed and share one "
                                 "module: pip uninstall -y onnxruntime onnxruntime-gpu, then pip install "
                                 "onnxruntime-gpu"))
    available = ort.get_available_providers()
    chosen = preferred_providers(available)
    lines.append(("onnx providers", ", ".join(available)))
    used = chosen[0] if chosen else "none"
    if used != "CPUExecutionProvider" and chosen:
        loaded = providers_that_load(ort, chosen)
        if loaded[0] != used:  # listed, but its CUDA/cuDNN libraries do not load: onnxruntime falls back
            used = f"{loaded[0]} ({used} is listed but does not load: its CUDA or cuDNN libraries are missing)"
    lines.append(("--backend onnx uses", used))
    return lines


def providers_that_load(ort, providers: list[str]) -> list[str]:
    """The providers a session really gets: a one-node model opened with `providers` (onnxruntime drops any
    whose libraries fail to load, silently, so a listed provider proves nothing)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(),
                                options, providers=providers).get_providers()


def tensorrt_lines() -> list[Line]:
    try:
        import tensorrt
    except ImportError:
        return [("TensorRT", "not installed (pip install 'sslforge[tensorrt]' on a machine with an NVIDIA GPU)")]
    except Exception as e:  # the wheel is there but its CUDA libraries are not
        return [("TensorRT", f"installed but does not load: {type(e).__name__}: {e}")]
    import torch

    where = "--backend tensorrt builds engines for this GPU" if torch.cuda.is_available() else \
        "no CUDA GPU visible: --backend tensorrt cannot run here"
    return [("TensorRT", f"{tensorrt.__version__}; {where}")]


def lines() -> list[Line]:
    onnx = package_version("onnx")
    from export.backends import BACKENDS

    return [("backends", ", ".join(BACKENDS)), ("onnx", onnx or not_installed("export")), *onnxruntime_lines(),
            *tensorrt_lines()]
