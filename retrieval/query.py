"""Query vectors from image files: the one place where retrieval reaches model code.

retrieval is numpy in, numpy out; turning images into vectors belongs to the model stages. This
module imports them lazily, inside `embed_images` only, so `import retrieval` never loads torch or
pretrain. When export's Embedder (ONNX / TensorRT / torch, one preprocessing) lands, point this
function at it; nothing else in retrieval changes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class QueryError(ValueError):
    """A query image or model dir could not be used."""


def embed_images(model_dir: str | Path, images: list[str | Path], *, device: str = "auto",
                 batch_size: int = 64) -> tuple[np.ndarray, str]:
    """Embed image files with a model dir's backbone and preprocessing: (vectors (N, D), model fingerprint)."""
    from pretrain.data import ImageList
    from pretrain.evaluate import extract_features
    from pretrain.modeldir import ModelDirError, load_model_dir
    from pretrain.trainer import select_device

    files = [Path(p) for p in images]
    for f in files:
        if not f.is_file():
            raise QueryError(f"query image {f} not found")
    try:
        model = load_model_dir(model_dir)
    except ModelDirError as e:
        raise QueryError(str(e)) from None
    dev = select_device(device)
    feats = extract_features(model.load_backbone(dev), ImageList(Path("."), files, None, None), model.preprocessing,
                             batch_size=batch_size, workers=0, device=dev, progress=False)
    if feats.failed:
        raise QueryError(f"{feats.failed} of the query images could not be decoded: pass readable images")
    return feats.features.numpy(), model.fingerprint
