"""Helpers shared by the test packages (import as `from shared_helpers import ...`; conftest modules
are not importable by name when several exist)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLORS = [(220, 40, 40), (40, 200, 60), (40, 60, 220)]


def write_image_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 32, seed: int = 0) -> Path:
    """An ImageFolder of small JPEGs: each class a noisy tint of its own colour (so probes can learn it)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.array(COLORS[c % len(COLORS)], dtype=np.float32)
            pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.jpg", quality=90)
    return root


def make_tiny_config(data: Path, out: Path, **changes):
    """A seconds-long SimCLR run: timm's test_resnet at 32 px, batch 8, no loader workers."""
    from pretrain.train.config import PretrainConfig

    return PretrainConfig(method="simclr", data=str(data), out=str(out), backbone="test_resnet", image_size=32,
                          epochs=2, batch_size=8, workers=0, optimizer="sgd", lr=0.5,
                          method_args={"out_dim": 16}, seed=1).replace(**changes)


def interrupt_run(cfg, at_step: int = 3) -> None:
    """Run `cfg` and stop it with Ctrl-C (KeyboardInterrupt) as step `at_step` ends, leaving its checkpoint."""
    import pytest

    from pretrain.train.trainer import Trainer

    def stop(step: int) -> None:
        if step == at_step:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, on_step=stop, progress=False).fit()


def full_and_resumed(config) -> tuple[Path, Path]:
    """The run dirs of config("full") trained straight through and of config("cut") interrupted, then resumed."""
    from pretrain.train.trainer import Trainer

    full = Trainer(config("full"), progress=False).fit()
    interrupt_run(config("cut"))
    return full, Trainer(config("cut"), resume=True, progress=False).fit()


def make_tiny_finetune_config(model: Path | None, train: Path, out: Path, **changes):
    """A seconds-long fine-tuning run of `model` (None: test_resnet from scratch) on `train`: batch 4, no workers."""
    from pretrain.train.config import FinetuneConfig

    scratch = {} if model else {"backbone": "test_resnet", "image_size": 32}
    return FinetuneConfig(model=str(model) if model else None, train=str(train), out=str(out), epochs=2, batch_size=4,
                          workers=0, lr=0.5, seed=1, **scratch).replace(**changes)


def header_only_png(path: Path, width: int, height: int) -> Path:
    """A valid PNG header of width x height with a tiny 1-row IDAT: a decompression bomb (or a thin image)
    of a few hundred bytes, written without ever allocating its pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\x00" * (1 + min(width, 4096)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path
