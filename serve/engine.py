"""The serving core, free of any web framework: check uploads, embed, classify, search, change the collection.

    engine = Engine.load(settings)            # fails fast: missing model/index, index of another model
    batch = engine.prepare([path, ...])       # decoded and preprocessed; BadInput for a bad upload
    feats = engine.features(batch)            # raw backbone features (what adaptive batching batches)
    engine.embeddings(feats) / engine.classify(feats, k) / engine.search(feats, k, where)
    engine.add(feats, uploads, meta) / engine.remove(ids) / engine.duplicates(feats, threshold)

Decoding, preprocessing and the backbone are export's Embedder; the collection is a retrieval Store (an index dir
or a PostgreSQL table that other processes may change too: every search sees their changes). The service and the
demo both call this, so they answer alike.
"""
from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from export.embedder import Embedder
from export.errors import ExportError
from pretrain.data.images import load_rgb
from pretrain.ground.knn import l2_normalize
from pretrain.ground.modeldir import ModelDirError, load_model_dir
from retrieval import IndexDirError
from retrieval.filters import Filter, FilterError, UnknownField
from retrieval.keys import MAX_KEY_TEXT, KeyReused
from retrieval.store import Store, display, open_store
from retrieval.store_pgsql import DatabaseError
from retrieval.text import clean
from serve.fields import FieldError, parse_ids, parse_meta, parse_where
from serve.settings import Limits, Settings, SettingsError


class BadInput(ValueError):
    """A request the service refuses (answered with a 4xx and this one-line reason); `status` is the HTTP code."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class NoHead(BadInput):
    """/classify on a model dir without a linear-probe head."""


def read_image(path: str | os.PathLike, limits: Limits, name: str = "image") -> Image.Image:
    """An uploaded file as RGB, refused (BadInput) when empty, too big, too many pixels, not an image or truncated.

    The header is read first, so a decompression bomb is refused before any pixel is decoded.
    """
    image_pixels(path, limits, name)
    return decode(path, name)


def image_pixels(path: str | os.PathLike, limits: Limits, name: str = "image") -> int:
    """An upload's pixel count from its header alone; BadInput when empty, too big, not an image or over the limit."""
    size = Path(path).stat().st_size
    if size == 0:
        raise BadInput(f"{name}: the upload is empty")
    if size > limits.max_bytes:
        raise BadInput(f"{name}: {size:,} bytes is over the limit of {limits.max_bytes:,}", status=413)
    try:
        with Image.open(path) as im:
            width, height = im.size
    except UnidentifiedImageError:
        raise BadInput(f"{name}: not an image (no decoder recognises the file)", status=415) from None
    except Image.DecompressionBombError:
        raise BadInput(f"{name}: too many pixels (decompression bomb); the limit is {limits.max_pixels:,}",
                       status=413) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise BadInput(f"{name}: unreadable image header ({e})") from None
    if width * height > limits.max_pixels:
        raise BadInput(f"{name}: {width}x{height} = {width * height:,} pixels is over the limit of "
                       f"{limits.max_pixels:,}", status=413)
    return width * height


def decode(path: str | os.PathLike, name: str = "image") -> Image.Image:
    """The upload decoded to RGB (its header checked by `image_pixels`); BadInput when truncated or corrupt."""
    try:
        return load_rgb(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadInput(f"{name}: the image is truncated or corrupt ({str(e) or type(e).__name__})") from None


MMAP_THRESHOLD = 4 * 2**20  # bytes: allocations this large get a mapping of their own (glibc's M_MMAP_THRESHOLD)


def hand_back_freed_images() -> bool:
    """Make glibc serve every allocation of MMAP_THRESHOLD bytes or more (a decoded image's blocks) from a mapping of
    its own, returned to the system when freed. Its default threshold rises to 32 MB after the first big free, after
    which each decoding thread's heap keeps its last image: the worker's memory would grow with its thread count,
    not with what it decodes at once. False where the C library is not glibc (nothing changed)."""
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(-3, MMAP_THRESHOLD))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


class PixelBudget:
    """Pixels that may be decoded at once in this process: a decode waits until its pixels are free (an image over
    the whole budget waits for all of it), so concurrent requests never hold more decoded images than this."""

    def __init__(self, total: int):
        self.total, self.free = total, total
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.total)
        with self._cond:
            self._cond.wait_for(lambda: self.free >= pixels)
            self.free -= pixels
        try:
            yield
        finally:
            with self._cond:
                self.free += pixels
                self._cond.notify_all()


class Engine:
    """An Embedder and, optionally, a collection (a Store) of vectors from the same model."""

    def __init__(self, embedder: Embedder, collection: Store | None, limits: Limits):
        self.embedder, self.collection, self.limits = embedder, collection, limits
        self.budget = PixelBudget(limits.decode_pixels)

    @property
    def index(self) -> Store | None:
        return self.collection

    def close(self) -> None:
        if self.collection is not None:
            self.collection.close()

    @classmethod
    def load(cls, settings: Settings, *, backbone: bool = True) -> Engine:
        """Load and cross-check the model dir and index; any problem is one SettingsError line.

        `backbone=False` skips the backbone (a front end that preprocesses, applies the head and searches,
        while another process runs the model): `features` is then unavailable.
        """
        try:
            if backbone:
                embedder = Embedder.load(settings.model, settings.backend, device=settings.device)
            else:
                embedder = Embedder(load_model_dir(settings.model), None, settings.backend)
        except (ModelDirError, ExportError, FileNotFoundError) as e:
            raise SettingsError(f"model dir {settings.model}: {e}") from None
        collection = None
        if settings.index:
            try:
                collection = open_store(settings.index, model_fingerprint=embedder.fingerprint)
            except IndexDirError as e:
                raise SettingsError(f"index {display(settings.index)}: {e}") from None
            if collection.dim != embedder.dim:
                collection.close()
                raise SettingsError(f"index {display(settings.index)} holds dimension {collection.dim}, model "
                                    f"{settings.model} embeds to {embedder.dim}: rebuild the index with this model")
        return cls(embedder, collection, settings.limits)

    # ---- requests ---------------------------------------------------------------------------------------
    def prepare(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """Uploaded image files -> one preprocessed float32 batch (n, 3, crop, crop); BadInput on any bad one.

        Every header is checked first (the pixels of each image and of the whole request), then the images are
        decoded and preprocessed one at a time, each within the process's PixelBudget: a request holds at most
        one decoded image at a time, however many it uploads."""
        limits = self.limits
        if not paths:
            raise BadInput("no image in the request: upload one or more image files")
        if len(paths) > limits.max_images:
            raise BadInput(f"{len(paths)} images in one request; the limit is {limits.max_images}", status=413)
        names = [f"image {i}" if len(paths) > 1 else "image" for i in range(len(paths))]
        pixels = [image_pixels(p, limits, name) for p, name in zip(paths, names)]
        if sum(pixels) > limits.max_request_pixels:
            raise BadInput(f"{len(paths)} images of {sum(pixels):,} pixels in all; the limit per request is "
                           f"{limits.max_request_pixels:,} (send fewer or smaller images per request)", status=413)
        crop = self.embedder.preprocessing.crop
        batch = np.empty((len(paths), 3, crop, crop), np.float32)
        for i, (path, name) in enumerate(zip(paths, names)):
            with self.budget.hold(pixels[i]):
                image = decode(path, name)
                batch[i] = self.embedder.preprocess([image])[0].numpy()
                image.close()
                del image
        return batch

    def check_k(self, k: int, available: int) -> int:
        if not 1 <= k <= self.limits.max_k:
            raise BadInput(f"k must be between 1 and {self.limits.max_k} (got {k})", status=422)
        return min(k, available)

    def require_head(self) -> list[str]:
        """The probe's classes; NoHead (404) when the model dir has none."""
        if not self.embedder.classes:
            raise NoHead(f"model {self.embedder.model.path.name!r} has no linear-probe head: train one with "
                         f"`sslforge eval linear`, or serve a `sslforge finetune` model dir (or use /embed and "
                         f"/search)", status=404)
        return self.embedder.classes

    def require_index(self) -> Store:
        if self.collection is None:
            raise BadInput("no index was given at startup: restart with --index (SSLFORGE_INDEX) to search",
                           status=404)
        try:
            self.collection.refresh()
        except DatabaseError as e:
            raise BadInput(str(e), status=503) from None
        return self.collection

    def check_threshold(self, threshold: float) -> float:
        if not 0.0 < threshold <= 1.0:
            raise BadInput(f"threshold must be a cosine similarity in (0, 1] (got {threshold})", status=422)
        return threshold

    @staticmethod
    def parse_where(where: str = "", path_prefix: str = "") -> Filter:
        try:
            return parse_where(where, path_prefix)
        except FieldError as e:
            raise BadInput(str(e)) from None

    @staticmethod
    def check_key(key: str | None) -> str | None:
        """An Idempotency-Key header's value (None when absent); BadInput unless 1-MAX_KEY_TEXT printable ASCII."""
        if key is not None and not (0 < len(key) <= MAX_KEY_TEXT and key.isascii() and key.isprintable()):
            raise BadInput(f"the Idempotency-Key header takes 1 to {MAX_KEY_TEXT} printable ASCII characters (a "
                           f"UUID, say)")
        return key

    def features(self, batch: np.ndarray) -> np.ndarray:
        """Raw backbone features (n, D) float32 of a preprocessed batch: the one model call."""
        return self.embedder.features(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))

    # ---- answers ----------------------------------------------------------------------------------------
    def embeddings(self, features: np.ndarray) -> np.ndarray:
        return l2_normalize(features)

    def classify(self, features: np.ndarray, k: int = 5) -> list[list[dict]]:
        """Top-k linear-probe labels with probabilities, per image."""
        classes = self.require_head()
        k = self.check_k(k, len(classes))
        probs = self.embedder.probabilities(features)
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[{"label": classes[j], "probability": float(row[j])} for j in idx] for row, idx in zip(probs, top)]

    def search(self, features: np.ndarray, k: int = 10, where: Filter | None = None) -> list[list[dict]]:
        """The k nearest indexed images (id, path, label, cosine score, user fields) among those `where` allows,
        per image."""
        k = self.check_k(k, max(1, len(self.require_index())))
        try:
            _, _, hits = self.collection.search(self.embeddings(features), k, where=where)
        except UnknownField as e:  # the index's field names are not an anonymous client's business
            raise BadInput(f"no field {e.field[:64]!r} in this index: filter on label, or on a field given "
                           f"when the rows were added") from None
        except FilterError as e:
            raise BadInput(str(e)) from None
        except DatabaseError as e:  # the database is unreachable: try again later
            raise BadInput(str(e), status=503) from None
        return [[clean(h) for h in row if h is not None] for row in hits]

    def duplicates(self, features: np.ndarray, threshold: float, where: Filter | None = None) -> list[list[dict]]:
        """The indexed rows at cosine >= threshold of each image, most similar first (at most max_k of them)."""
        self.check_threshold(threshold)
        hits = self.search(features, self.limits.max_k, where)
        return [[h for h in row if h["score"] >= threshold] for row in hits]

    def add(self, features: np.ndarray, names: Sequence[str], meta: str = "", key: str | None = None) -> list[int]:
        """Append the uploaded images' embeddings to the collection (durable when this returns); their new ids.
        `names`: the uploads' file names (a row's path unless `meta` gives one). With an idempotency `key` that an
        earlier add used, nothing is added and that add's ids are answered."""
        self.require_index()
        try:
            paths, labels, fields = parse_meta(meta, list(names))
            return self.collection.add(self.embeddings(features), paths, labels, fields,
                                       key=self.check_key(key)).tolist()
        except KeyReused as e:
            raise BadInput(str(e), status=422) from None
        except DatabaseError as e:
            raise BadInput(str(e), status=503) from None
        except (FieldError, IndexDirError) as e:
            raise BadInput(str(e)) from None

    def remove(self, ids: str) -> dict:
        """Stop returning these rows (durable when this returns): {"removed": live rows removed, "count": live rows}."""
        self.require_index()
        try:
            removed = self.collection.remove(parse_ids(ids))
        except FieldError as e:
            raise BadInput(str(e)) from None
        except DatabaseError as e:
            raise BadInput(str(e), status=503) from None
        except IndexDirError as e:
            raise BadInput(str(e), status=404) from None
        return {"removed": removed, "count": len(self.collection)}

    @property
    def image_root(self) -> Path | None:
        """Where the indexed paths live (recorded at index time), for showing the hits."""
        root = self.index.info.get("root") if self.index is not None else None
        return Path(root) if root else None

    def indexed_file(self, path: str) -> Path | None:
        """The file of an indexed path, or None unless the path is relative, has no `..`, and names a regular file
        inside the image root once links are resolved: index.json's root and ids come from a file, not trusted."""
        rel, root = PurePosixPath(path), self.image_root
        if root is None or not rel.parts or rel.is_absolute() or ".." in rel.parts:
            return None
        try:
            base = root.resolve(strict=True)
            file = (base / rel).resolve(strict=True)
            return file if file.is_relative_to(base) and file.is_file() else None
        except (OSError, RuntimeError, ValueError):  # missing, a link loop, a NUL in the name
            return None
