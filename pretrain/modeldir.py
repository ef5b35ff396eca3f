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
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pretrain import __version__
from pretrain.atomic import write_json, write_with
from pretrain.backbones import BackboneSpec, build_backbone
from pretrain.heads import Neck, WithNeck
from pretrain.preprocess import Preprocessing

SCHEMA_VERSION = 1
MODEL_JSON = "model.json"
BACKBONE_FILE = "backbone.safetensors"
HEAD_FILE = "head.safetensors"


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
                    preprocessing: Preprocessing, method: dict, training: dict, neck: list[int] | None = None) -> dict:
    """Write backbone.safetensors and model.json (each atomically); return the model.json record.

    With a `neck` (widths of head layers kept after the backbone, SimCLRv2), `backbone` is the
    `WithNeck` module and the file holds both parts.
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
        model, dim = build_backbone(self.spec, self.preprocessing.crop)
        if self.info.get("neck"):
            model = WithNeck(model, Neck(dim, self.info["neck"]))
        return model.eval()

    def load_backbone(self, device: str | torch.device = "cpu") -> nn.Module:
        model = self.random_backbone()
        state = load_file(str(self.path / BACKBONE_FILE))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelDirError(f"{self.path / BACKBONE_FILE} does not fit backbone {self.spec.name} "
                                f"({len(missing)} missing, {len(unexpected)} unexpected tensors, e.g. "
                                f"{(missing or unexpected)[0]})")
        return model.to(device).eval()

    def load_head(self, device: str | torch.device = "cpu") -> nn.Linear:
        head_info = self.info.get("head")
        if not head_info:
            raise ModelDirError(f"{self.path} has no linear-probe head: run `sslforge eval linear --model {self.path} "
                                f"--train DIR --test DIR` first")
        if head_info.get("fingerprint") != self.fingerprint:
            raise ModelDirError(f"{self.path / HEAD_FILE} was trained on another backbone "
                                f"({head_info.get('fingerprint')} != {self.fingerprint}): "
                                f"run `sslforge eval linear` again")
        state = load_file(str(self.path / HEAD_FILE))
        head = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
        head.load_state_dict(state)
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
    try:
        info = json.loads(record.read_text())
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{record} is not valid JSON ({e})") from None
    version = info.get("schema_version")
    if version != SCHEMA_VERSION:
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        raise ModelDirError(f"{path} has model-dir schema version {version}; this sslforge ({__version__}) reads "
                            f"version {SCHEMA_VERSION}: " + ("upgrade sslforge" if newer else "retrain or convert it"))
    weights = path / BACKBONE_FILE
    if not weights.is_file():
        raise ModelDirError(f"{path} has no {BACKBONE_FILE}")
    if verify and file_fingerprint(weights) != info.get("fingerprint"):
        raise ModelDirError(f"{weights} does not match the fingerprint in {record}: the file was changed or "
                            f"is incomplete")
    return ModelDir(path, info)
