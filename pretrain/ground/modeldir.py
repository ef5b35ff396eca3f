"""The model dir: what pretraining writes and every later stage (eval, export, serve) reads.

    runs/NAME/model.json            schema version, backbone spec, embedding dim, preprocessing,
                                    method, training summary, optional head record, fingerprint
    runs/NAME/backbone.safetensors  backbone weights only: all that deployment needs
    runs/NAME/head.safetensors      optional linear-probe head (class names in model.json)

`load_model_dir` checks the schema version and that the weights match the recorded fingerprint,
so a reader never silently runs with the wrong file.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from pretrain import __version__
from pretrain.ground.atomic import write_json, write_with
from pretrain.ground.backbones import BackboneSpec, _instantiate, apply_small_stem, build_backbone
from pretrain.ground.errors import ConfigError
from pretrain.ground.heads import Neck, WithNeck
from pretrain.ground.preprocess import Preprocessing
from pretrain.ground.schema import Fields, read_json

SCHEMA_VERSION = 1
MODEL_JSON = "model.json"
BACKBONE_FILE = "backbone.safetensors"
HEAD_FILE = "head.safetensors"
FINGERPRINT = r"sha256:[0-9a-f]{16}"
MAX_DIM, MAX_NECK, MAX_CLASSES = 65536, 8, 100_000


class ModelDirError(ValueError):
    """A model dir is missing, incomplete, of another schema version, or does not match its record."""


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a weights file, shortened: identifies a model in embeddings, indexes and services."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()[:16]


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def write_model_dir(path: str | Path, backbone: nn.Module, *, spec: BackboneSpec, embedding_dim: int,
                    preprocessing: Preprocessing, method: dict, training: dict, neck: list[int] | None = None,
                    start: dict | None = None) -> dict:
    """Write backbone.safetensors and model.json (each atomically); return the model.json record.

    With a `neck` (widths of head layers kept after the backbone, SimCLRv2), `backbone` is the
    `WithNeck` module and the file holds both parts. `start`: where the weights started from (--init: the
    source and the sha256 of its weights; pretrain/ground/startfrom.py), None for random weights.
    """
    path = Path(path)
    write_with(path / BACKBONE_FILE, lambda tmp: save_file(_cpu_state(backbone), str(tmp), metadata={"format": "pt"}))
    info: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "sslforge_version": __version__,
        "fingerprint": file_fingerprint(path / BACKBONE_FILE),
        "backbone": spec.to_dict(),
        "neck": list(neck or []),
        "embedding_dim": embedding_dim,
        "preprocessing": preprocessing.to_dict(),
        "method": method,
        "training": training,
        "init": start,
        "head": None,
    }
    write_json(path / MODEL_JSON, info)
    return info


@dataclass
class ModelDir:
    """A read model dir. Build modules with `load_backbone()` / `load_head()`."""

    path: Path
    info: dict

    @property
    def fingerprint(self) -> str:
        return self.info["fingerprint"]

    @property
    def spec(self) -> BackboneSpec:
        return BackboneSpec.from_dict(self.info["backbone"])

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.info["preprocessing"])

    @property
    def embedding_dim(self) -> int:
        return int(self.info["embedding_dim"])

    @property
    def classes(self) -> list[str] | None:
        return (self.info.get("head") or {}).get("classes")

    def random_backbone(self) -> nn.Module:
        """The same architecture with fresh random weights (the baseline of every evaluation)."""
        try:
            model, dim = build_backbone(self.spec, self.preprocessing.crop)
        except ConfigError as e:
            raise ModelDirError(f"{self.path / MODEL_JSON}: backbone {self.spec.name!r} with arguments "
                                f"{self.spec.kwargs}: {e}") from None
        if self.info.get("neck"):
            model = WithNeck(model, Neck(dim, self.info["neck"]))
        embeds = self.info["neck"][-1] if self.info.get("neck") else dim
        if embeds != self.embedding_dim:
            raise ModelDirError(f"{self.path / MODEL_JSON}: backbone {self.spec.name} embeds to {embeds} "
                                f"dimensions, model.json says {self.embedding_dim}: train or export the model again")
        return model.eval()

    def load_backbone(self, device: str | torch.device = "cpu") -> nn.Module:
        """The trained network. Its architecture is first built without memory (on the meta device) and
        compared, tensor by tensor, with the weights file's header: weights that do not fit, and arguments
        that would build a network larger than its weights, are refused before anything is allocated."""
        file = self.path / BACKBONE_FILE
        self._check_fit(file, self._meta_shapes(weight_shapes(file)))
        model = self.random_backbone()
        try:
            model.load_state_dict(_load(file), strict=True)
        except RuntimeError as e:
            raise ModelDirError(f"{file} does not fit backbone {self.spec.name} ({str(e).splitlines()[-1].strip()})"
                                f": train or export the model again") from None
        return model.to(device).eval()

    def _meta_shapes(self, stored: dict[str, tuple]) -> dict[str, tuple]:
        try:
            with torch.device("meta"):
                model = _instantiate(self.spec, meta=True)
                if self.spec.small_stem:
                    apply_small_stem(model, self.spec.name)
                if self.info.get("neck"):  # its input width is the backbone's: taken from the file, checked later
                    model = WithNeck(model, Neck(stored.get("neck.0.weight", (0, 1))[-1], self.info["neck"]))
        except ConfigError as e:
            raise ModelDirError(f"{self.path / MODEL_JSON}: {e}") from None
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def _check_fit(self, file: Path, expected: dict[str, tuple]) -> None:
        stored = weight_shapes(file)
        missing = sorted(expected.keys() - stored.keys())
        unexpected = sorted(stored.keys() - expected.keys())
        other = sorted(k for k in expected.keys() & stored.keys() if expected[k] != stored[k])
        if missing or unexpected or other:
            first = (missing or unexpected or other)[0]
            raise ModelDirError(f"{file} does not fit backbone {self.spec.name} ({len(missing)} missing, "
                                f"{len(unexpected)} unexpected, {len(other)} of another shape, e.g. {first[:80]}): "
                                f"train or export the model again")

    def load_head(self, device: str | torch.device = "cpu") -> nn.Linear:
        head_info = self.info.get("head")
        if not head_info:
            raise ModelDirError(f"{self.path} has no linear-probe head: run `sslforge eval linear --model {self.path} "
                                f"--train DIR --test DIR` first, or fine-tune it (`sslforge finetune --model "
                                f"{self.path} ...` writes a model dir with a head)")
        if head_info.get("fingerprint") != self.fingerprint:
            raise ModelDirError(f"{self.path / HEAD_FILE} was trained on another backbone "
                                f"({head_info.get('fingerprint')} != {self.fingerprint}): "
                                f"run `sslforge eval linear` again")
        file = self.path / HEAD_FILE
        shapes = weight_shapes(file)
        fits = (shapes.keys() == {"weight", "bias"} and shapes["weight"] == (len(self.classes), self.embedding_dim)
                and shapes["bias"] == (len(self.classes),))
        if not fits:
            raise ModelDirError(f"{file} holds a {shapes.get('weight', '?')} head, the backbone embeds to "
                                f"{self.embedding_dim} dimensions and model.json names {len(self.classes)} classes: "
                                f"run `sslforge eval linear` again")
        head = nn.Linear(self.embedding_dim, len(self.classes))
        head.load_state_dict(_load(file))
        return head.to(device).eval()

    def save_head(self, head: nn.Linear, classes: list[str], metrics: dict) -> None:
        """Store a linear-probe head on this backbone's raw features, and record it in model.json."""
        if head.out_features != len(classes):
            raise ValueError(f"head has {head.out_features} outputs for {len(classes)} classes")
        write_with(self.path / HEAD_FILE, lambda tmp: save_file(_cpu_state(head), str(tmp)))
        self.info["head"] = {"file": HEAD_FILE, "classes": list(classes), "fingerprint": self.fingerprint,
                             "metrics": metrics}
        write_json(self.path / MODEL_JSON, self.info)


def load_model_dir(path: str | Path, *, verify: bool = True) -> ModelDir:
    """Read and check a model dir; `verify` also re-hashes the weights against the recorded fingerprint."""
    path = Path(path).expanduser()
    record = path / MODEL_JSON
    if not path.is_dir():
        raise ModelDirError(f"model dir {path} does not exist")
    if not record.is_file():
        hint = " (training has not finished: resume it with `sslforge pretrain --resume --out " \
               f"{path}`)" if (path / "checkpoint.pt").is_file() else ""
        raise ModelDirError(f"{path} is not a model dir: it has no {MODEL_JSON}{hint}")
    info = read_json(record, ModelDirError, "a model dir's record")
    version = info.get("schema_version") if isinstance(info, dict) else None
    if isinstance(info, dict) and version != SCHEMA_VERSION:
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        raise ModelDirError(f"{path} has model-dir schema version {version}; this sslforge ({__version__}) reads "
                            f"version {SCHEMA_VERSION}: " + ("upgrade sslforge" if newer else "retrain or convert it"))
    check_record(info, record)
    weights = path / BACKBONE_FILE
    if not weights.is_file():
        raise ModelDirError(f"{path} has no {BACKBONE_FILE}")
    if verify and file_fingerprint(weights) != info.get("fingerprint"):
        raise ModelDirError(f"{weights} does not match the fingerprint in {record}: the file was changed or "
                            f"is incomplete")
    return ModelDir(path, info)


def check_record(info: object, record: Path) -> None:
    """Check every field of a model.json against its schema (types and bounds); ModelDirError names the first
    bad one. `method` and `training` are free-form summaries: they need only be objects."""
    f = Fields(info, str(record), ModelDirError)
    f.str("fingerprint", pattern=FINGERPRINT)
    f.str("sslforge_version", max_len=64, default="")
    BackboneSpec.from_dict(f.obj("backbone"), str(record), ModelDirError)
    f.int("embedding_dim", 1, MAX_DIM)
    for width in f.list("neck", MAX_NECK, default=[]):
        if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= MAX_DIM:
            f.fail("neck", f"must list layer widths from 1 to {MAX_DIM} (got {str(width)[:40]})")
    Preprocessing.from_dict(f.obj("preprocessing"), str(record), ModelDirError)
    f.obj("method", default={})
    f.obj("training", default={})
    f.obj("init", default=None)
    head = f.sub("head", default=None)
    if head is not None:
        head.str("file", choices=(HEAD_FILE,))
        if not all(isinstance(c, str) and 0 < len(c) <= 1000 for c in head.list("classes", MAX_CLASSES)):
            head.fail("classes", "must be class names (strings of 1 to 1000 characters)")
        head.str("fingerprint", pattern=FINGERPRINT)
        head.obj("metrics", default={})


def weight_shapes(file: Path) -> dict[str, tuple]:
    """Tensor name -> shape from a safetensors header (no tensor is read); ModelDirError when it cannot be read."""
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError, and OSError
        raise ModelDirError(f"{file} is not a readable safetensors file ({str(e).splitlines()[0][:200]}): "
                            f"train or export the model again") from None


def _load(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except Exception as e:  # noqa: BLE001 - as in weight_shapes
        raise ModelDirError(f"{file} is not a readable safetensors file ({str(e).splitlines()[0][:200]}): "
                            f"train or export the model again") from None
