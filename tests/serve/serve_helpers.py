"""A served model for the serve tests: a tiny model dir with a probe head, and an index of a tiny image folder."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from shared_helpers import write_image_folder

from export.embedder import Embedder
from retrieval import Index

sys.path.append(str(Path(__file__).resolve().parents[1] / "export"))  # export's test helpers, when run alone
from export_helpers import make_model_dir  # noqa: E402

CLASSES = ["class_0", "class_1", "class_2"]


def make_served(root: Path, head: bool = True, seed: int = 0) -> tuple[Path, Path, Path]:
    """(model dir, index dir, image folder): 3 classes x 4 JPEGs at 32 px, indexed with the model's embeddings."""
    images = write_image_folder(root / "images", per_class=4)
    model = make_model_dir(root / "model", classes=CLASSES if head else None, seed=seed)
    files = sorted(images.rglob("*.jpg"))
    vectors = Embedder.load(model).embed(files)
    index = Index.build(vectors, [f.relative_to(images).as_posix() for f in files], [f.parent.name for f in files],
                        model_fingerprint=model.fingerprint, progress=False)
    index.info["root"] = str(images)
    index.save(root / "index")
    return model.path, root / "index", images


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


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Poll /readyz until 200; fail with the server's log if it exits first."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def start_bentoml(env: dict[str, str], port: int, cwd: Path, log: Path) -> subprocess.Popen:
    """`bentoml serve` from the project root (its bentofile.yaml), as a user runs it; output to `log` (a pipe
    nobody reads would fill up and stall the server)."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)


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
