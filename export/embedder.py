"""The Embedder: one runtime over torch, onnxruntime and TensorRT, with the model dir's preprocessing.

    emb = Embedder.load("runs/NAME", backend="onnx")
    vectors = emb.embed(["a.jpg", pil_image, uint8_array])   # float32 (n, D), rows L2-normalised
    probs = emb.predict(images)                              # (n, C) with emb.classes, needs head.safetensors

The backend only maps a preprocessed batch to raw features; preprocessing (from model.json),
normalisation and the linear-probe head are applied here, identically for every backend, so an
image gets the same embedding whichever backend computed it.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from export.backends import BACKENDS, LoadOptions
from export.errors import ExportError
from pretrain.data.images import load_rgb
from pretrain.ground.knn import l2_normalize
from pretrain.ground.modeldir import ModelDir, load_model_dir
from pretrain.ground.preprocess import Preprocessing

ImageInput = Image.Image | np.ndarray | str | os.PathLike


def to_rgb(image: ImageInput) -> Image.Image:
    """A path (decoded with the same loader as training), a PIL image or an (H, W[, 3|4]) uint8 array, as RGB."""
    if isinstance(image, (str, os.PathLike)):
        return load_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ExportError(f"an image array must be uint8 (H, W) or (H, W, C), got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    raise ExportError(f"cannot embed a {type(image).__name__}: pass PIL images, uint8 arrays or paths")


class Embedder:
    """Embeddings (and linear-probe predictions) of images with a model dir and one backend."""

    def __init__(self, model: ModelDir, runner, backend: str):
        self.model, self.runner, self.backend = model, runner, backend
        self.preprocessing: Preprocessing = model.preprocessing
        self._head: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def load(cls, model_dir: str | Path | ModelDir, backend: str = "torch", *, device: str = "auto",
             onnx_path: str | Path | None = None, providers: list[str] | None = None,
             threads: int | None = None) -> "Embedder":
        """`backend`: a name of export.backends.BACKENDS: torch (on `device`), onnx (model.onnx, best providers)
        or tensorrt (model.plan)."""
        if backend not in BACKENDS:
            raise ExportError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        model = model_dir if isinstance(model_dir, ModelDir) else load_model_dir(model_dir)
        options = LoadOptions(device=device, onnx_path=onnx_path, providers=providers, threads=threads)
        return cls(model, BACKENDS[backend].load(model, options), backend)

    @property
    def fingerprint(self) -> str:
        return self.model.fingerprint

    @property
    def runs_on(self) -> str:
        """Where the embeddings are computed, in words: the device, or the onnxruntime providers a session got."""
        return BACKENDS[self.backend].runs_on(self.runner)

    @property
    def dim(self) -> int:
        return self.model.embedding_dim

    @property
    def classes(self) -> list[str] | None:
        return self.model.classes

    def preprocess(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """(n, 3, crop, crop) float32, exactly as training-time evaluation prepares images."""
        if not len(images):
            return torch.zeros(0, 3, self.preprocessing.crop, self.preprocessing.crop)
        return torch.stack([self.preprocessing(to_rgb(im)) for im in images])

    def features(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """Raw backbone features (n, D) float32 of a preprocessed batch."""
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(self.runner(batch), dtype=np.float32)

    def embed_batch(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """L2-normalised embeddings (n, D) float32 of a preprocessed batch."""
        return l2_normalize(self.features(batch))

    def embed(self, images: Sequence[ImageInput]) -> np.ndarray:
        """L2-normalised embeddings (n, D) float32 of PIL images, uint8 arrays or paths."""
        return self.embed_batch(self.preprocess(images))

    def predict(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Class probabilities (n, C) of the linear-probe head (column order: `classes`)."""
        return self.probabilities(self.features(self.preprocess(images)))

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities (n, C) of the linear-probe head from raw features (what a server batched)."""
        if self._head is None:
            head = self.model.load_head()
            self._head = (head.weight.detach().numpy().T.copy(), head.bias.detach().numpy().copy())
        weight, bias = self._head
        logits = np.asarray(features, dtype=np.float32) @ weight + bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)
