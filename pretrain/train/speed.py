"""The speed defaults of a training run, each a function of what the run knows before it starts, and each
switchable by an option: whether to compile (`--compile auto|true|false`), how to split the cores between
loader workers and intra-op threads (`--workers`, `--threads`), whether views would be made batched in the
training process (the `--gpu-augment` path), and how often the loss is read back from the device
(`--sync-every`).

The constants below are the one place where measured break-even points live; bench/profile_step.py
measures them (`--break-even`) and docs/benchmarks/profile.md records the figures they come from.
"""
from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable

import torch

from pretrain.ground.errors import ConfigError

# Planned optimizer steps from which torch.compile's one-off start-up (tracing + code generation, 30-60 s for a
# ResNet-18 on a CPU, less with a warm cache) is repaid by its faster steps. Provisional until measured on a
# quiet machine with `python bench/profile_step.py --break-even` (docs/benchmarks/profile.md); None: never
# compile by default on that device.
COMPILE_BREAK_EVEN_STEPS: dict[str, int | None] = {"cpu": 400, "cuda": 200, "mps": None}

# Loader workers up to which making the views batched in the training process (views/gpu.py) beats
# per-image views in the workers on a CPU. None until bench/profile_step.py shows that it pays (its `views`
# rows time both paths); set to N, `--gpu-augment` becomes the CPU default for runs with at most N workers.
BATCHED_VIEWS_MAX_WORKERS: int | None = None

# Steps between two reads of the loss from a GPU (a host sync each); a CPU reads every step (no sync to save).
GPU_SYNC_EVERY = 10


# -- compile -------------------------------------------------------------------------------------------------
def has_cpp_compiler() -> bool:
    return shutil.which(os.environ.get("CXX", "g++")) is not None


def compile_decision(setting: str, planned_steps: int, device: torch.device) -> tuple[bool, str]:
    """(compile?, why) for `--compile auto|true|false` and a run of `planned_steps` optimizer steps."""
    if setting == "false":
        return False, "off (--no-compile)"
    cpu_needs = device.type == "cpu" and not has_cpp_compiler()
    if setting == "true":
        if cpu_needs:
            raise ConfigError("--compile on a CPU needs a C++ compiler (g++) for torch.compile: install one "
                              "(apt-get install g++) or drop --compile")
        return True, "on (--compile)"
    break_even = COMPILE_BREAK_EVEN_STEPS.get(device.type)
    if break_even is None:
        return False, f"off (not repaid on {device.type}; --compile turns it on)"
    if planned_steps < break_even:
        return False, f"off ({planned_steps} steps planned, it repays its start-up from {break_even}; --compile " \
                      f"turns it on)"
    if cpu_needs:
        return False, "off (no C++ compiler (g++) for torch.compile on a CPU; install one to get faster steps)"
    return True, f"on ({planned_steps} steps planned >= {break_even}; --no-compile turns it off)"


def use_compile_cache() -> None:
    """Keep torch.compile's artefacts (Inductor's FX-graph and AOTAutograd caches) across runs and reboots, in
    sslforge's cache folder, unless TORCHINDUCTOR_CACHE_DIR says where."""
    from pretrain.data.images import cache_dir

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "torchinductor"))
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True


def inductor(graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
    """torch.compile's default backend (a module attribute, so a test can make it fail)."""
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(graph, example_inputs)


def compile_networks(method: torch.nn.Module, say: Callable[[str], None] | None = None) -> list[torch.nn.Module]:
    """torch.compile each network of `method` in place (backbone, heads, momentum copies; not the loss code, which
    keeps its queues, gathers and logged floats in Python); returns them. Compiling in place keeps the state_dict
    keys, so checkpoints and model dirs do not depend on the option.

    If code generation fails (the forward's or the backward's: both are compiled on the first call), `say` gets one
    line, the graph runs as traced (the same operations, uncompiled) and
    every network goes back to plain eager calls from the next one on."""
    say = say or (lambda line: print(line, file=sys.stderr))
    use_compile_cache()
    networks = [n for n in method.children() if any(True for _ in n.parameters())]
    failed: list[str] = []

    def backend(graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
        if failed:
            return graph.forward
        try:
            # the backward is compiled now too (torch defers it to the first backward pass, outside this guard)
            with torch._functorch.config.patch(force_non_lazy_backward_lowering=True):
                return inductor(graph, example_inputs)
        except Exception as e:  # noqa: BLE001 - any failure of the compiler: train without it
            reason = (str(e).strip().splitlines() or [""])[0][:200]
            failed.append(reason)
            for network in networks:
                network._compiled_call_impl = None  # plain calls from the next one on
            say(f"compile: torch.compile failed ({type(e).__name__}: {reason}); training without it")
            return graph.forward

    for network in networks:
        network.compile(backend=backend)
    return networks


# -- cores -----------------------------------------------------------------------------------------------------
def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's share), per process under torchrun."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def split_cores(cores: int, device_type: str, workers: int | None = None, threads: int | None = None
                ) -> tuple[int, int]:
    """(loader workers, intra-op threads of the training process) for `cores` cores; given values are kept.

    On a CPU the step gets every core as threads and one worker a core (at most 8) makes the views in the gaps,
    the split every published CPU figure was measured with; a smaller share of workers becomes the default only
    once bench/profile_step.py shows that it pays. On a GPU the workers are the CPU's main work: all cores but
    one (at most 8), the rest as threads."""
    if device_type == "cpu":
        workers = min(8, max(1, cores)) if workers is None else workers
        return workers, threads or cores
    workers = min(8, max(1, cores - 1)) if workers is None else workers
    return workers, threads or max(1, cores - workers)


def resolve_cores(workers: int | None, threads: int | None, device: str) -> tuple[int, int]:
    """`split_cores` for this machine and the device setting (`auto`, `cpu`, `cuda:N`, ...)."""
    kind = device.split(":")[0]
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    return split_cores(available_cores(), kind, workers, threads)


# -- views and the loss ------------------------------------------------------------------------------------------
def batched_views_pay(device_type: str, workers: int, transform: str, per_image_state: bool) -> bool:
    """Whether views made batched in the training process (from uint8 images the workers only decode) would
    beat per-image views in the workers. On a GPU that is the user's choice (--gpu-augment); on a CPU: with at
    most BATCHED_VIEWS_MAX_WORKERS workers, for the pipelines the batched path has, for methods without
    per-image state (their batches carry no image index yet)."""
    from pretrain.views.gpu import SUPPORTED

    if BATCHED_VIEWS_MAX_WORKERS is None or device_type != "cpu" or per_image_state or transform not in SUPPORTED:
        return False
    return workers <= BATCHED_VIEWS_MAX_WORKERS


def sync_every(setting: int | None, device: torch.device) -> int:
    """Steps between reads of the loss into Python: the setting, else every step on a CPU and GPU_SYNC_EVERY on
    a GPU (a read waits for the device to finish the step)."""
    if setting is not None:
        return setting
    return 1 if device.type == "cpu" else GPU_SYNC_EVERY
