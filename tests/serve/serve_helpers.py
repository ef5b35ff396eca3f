"""A served model for the serve tests: a tiny fine-tuned model dir (its head is the fine-tuned classifier), and an
index of a tiny image folder."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
from shared_helpers import make_tiny_finetune_config, write_image_folder

from export.embedder import Embedder
from pretrain.finetune.run import finetune
from pretrain.ground.modeldir import load_model_dir
from retrieval import Index
from serve.settings import Limits

sys.path.append(str(Path(__file__).resolve().parents[1] / "export"))  # export's test helpers, when run alone
from export_helpers import make_model_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["class_0", "class_1", "class_2"]
TOKEN = "test-token-0123456789"  # the writable test server's write token
# docs/security.md: an API worker's peak RSS grows by at most 16 bytes per pixel of SSLFORGE_DECODE_PIXELS + 96 MB
RSS_BOUND = 16 * Limits.decode_pixels + 96 * 2**20
MAX_BYTES = 200_000  # the test server's byte limit per upload (small, so over-limit uploads are cheap)
HEADER_TIMEOUT, BODY_TIMEOUT, MAX_PENDING = 3, 5, 40  # short, so slow-client tests are quick; 40 > 32 test clients
SERVER_ENV = {"SSLFORGE_MAX_BYTES": str(MAX_BYTES), "SSLFORGE_MAX_BATCH_SIZE": "16",
              "SSLFORGE_HEADER_TIMEOUT": str(HEADER_TIMEOUT), "SSLFORGE_BODY_TIMEOUT": str(BODY_TIMEOUT),
              "SSLFORGE_MAX_PENDING": str(MAX_PENDING)}


@dataclass(frozen=True)
class LiveServer:
    """A running `bentoml serve`: its URL, port, process (the tree's root) and log file."""

    url: str
    port: int
    proc: subprocess.Popen
    log: Path


def make_served(root: Path, head: bool = True, seed: int = 0) -> tuple[Path, Path, Path]:
    """(model dir, index dir, image folder): 3 classes x 4 JPEGs at 32 px, indexed with the model's embeddings.

    With a head the model dir is what `sslforge finetune` writes (a random test_resnet fine-tuned on the images for
    one epoch), so the service is tested on a fine-tuned model dir as users deploy one."""
    images = write_image_folder(root / "images", per_class=4)
    model = make_model_dir(root / ("base" if head else "model"), seed=seed)
    if head:
        cfg = make_tiny_finetune_config(model.path, images, root / "model", epochs=1, seed=seed)
        model = load_model_dir(finetune(cfg, progress=False))
        assert model.classes == CLASSES
    files = sorted(images.rglob("*.jpg"))
    vectors = Embedder.load(model).embed(files)
    index = Index.build(vectors, [f.relative_to(images).as_posix() for f in files], [f.parent.name for f in files],
                        model_fingerprint=model.fingerprint, progress=False)
    index.info["root"] = str(images)
    index.save(root / "index")
    return model.path, root / "index", images


def serve(tmp_path_factory, env: dict[str, str]):
    """`bentoml serve` from the project root (this checkout's code) on a free loopback port, with SERVER_ENV and
    `env`: a generator for a fixture, yielding the LiveServer and stopping it after."""
    from tools.process import start_bentoml, wait_ready

    port, log = free_port(), tmp_path_factory.mktemp("server") / "bentoml.log"
    proc = start_bentoml({**SERVER_ENV, **env}, port, ROOT, log)
    server = LiveServer(f"http://127.0.0.1:{port}", port, proc, log)
    try:
        wait_ready(server.url, proc, log)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def free_port() -> int:
    """A free port below the ephemeral range (a client dialling an unused ephemeral port can connect to itself)."""
    for port in range(20000 + os.getpid() % 5000, 32000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def png_bytes(size: int = 32, seed: int = 0) -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels but holds one tiny compressed row: a decompression-bomb stand-in."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def server_processes(proc) -> dict[str, psutil.Process]:
    """The `bentoml serve` process and its workers, by name (the worker's service name)."""
    root = psutil.Process(proc.pid)
    named = {"bentoml serve": root}
    for p in root.children(recursive=True):
        cmd = p.cmdline()
        named[cmd[cmd.index("--service-name") + 1] if "--service-name" in cmd else str(p.pid)] = p
    return named


def reset_peak_rss(p: psutil.Process) -> bool:
    """Restart the kernel's peak-RSS count (VmHWM) of `p`; False where /proc does not allow it."""
    try:
        Path(f"/proc/{p.pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss(p: psutil.Process) -> int:
    status = Path(f"/proc/{p.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


def tcp_listening(processes: dict[str, psutil.Process]) -> list[tuple[str, int]]:
    """(process name, port) of every listening TCP socket (IPv4 or IPv6) of these processes."""
    return [(name, c.laddr.port) for name, p in processes.items() for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN]
