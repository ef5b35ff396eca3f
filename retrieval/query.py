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
    from pretrain.data.images import ImageList
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


def embed_folder(model_dir: str | Path, folder: str | Path, *, device: str = "auto",
                 progress: bool = True) -> tuple[np.ndarray, list[str], list[str | None], str]:
    """Embed an image folder (labels from class sub-folders), reusing the model dir's feature cache.

    Returns (vectors, paths relative to `folder`, labels, model fingerprint).
    """
    from pretrain.data.images import scan_images
    from pretrain.evaluate import cached_features
    from pretrain.modeldir import load_model_dir
    from pretrain.trainer import select_device

    model = load_model_dir(model_dir)
    images = scan_images(folder)
    feats = cached_features(model, images, device=select_device(device), progress=progress,
                            desc=f"embedding {Path(folder).name}")
    if feats.failed:
        raise QueryError(f"{folder}: {feats.failed} images failed to decode; embed the folder with `sslforge embed`, "
                         f"which skips and lists them")
    labels = [None] * len(images) if images.labels is None else [images.classes[y] for y in images.labels]
    return feats.features.numpy(), [str(p.relative_to(images.root)) for p in images.paths], labels, model.fingerprint
