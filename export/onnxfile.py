"""The ONNX file's contract: its name, input and output names, and its sslforge.* metadata (the model's fingerprint,
preprocessing, embedding dim, precision, outputs, classes), read back and checked against a model dir, so a runtime
refuses a graph that belongs to another model. What every reader of model.onnx needs, without the exporter."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from export.errors import ExportError
from pretrain.ground.modeldir import ModelDir

ONNX_FILE = "model.onnx"
INPUT, EMBEDDING, LOGITS = "image", "embedding", "logits"
META_PREFIX = "sslforge."
METADATA_VERSION = 1


@dataclass(frozen=True)
class OnnxInfo:
    """What an exported graph says about itself (its sslforge.* metadata)."""

    fingerprint: str
    preprocessing: dict
    embedding_dim: int
    precision: str
    outputs: list[str]
    classes: list[str] | None
    opset: int

    def to_metadata(self) -> dict[str, str]:
        return {META_PREFIX + "metadata_version": str(METADATA_VERSION),
                META_PREFIX + "model_fingerprint": self.fingerprint,
                META_PREFIX + "preprocessing": json.dumps(self.preprocessing),
                META_PREFIX + "embedding_dim": str(self.embedding_dim),
                META_PREFIX + "precision": self.precision,
                META_PREFIX + "outputs": json.dumps(self.outputs),
                META_PREFIX + "classes": json.dumps(self.classes)}


def read_onnx_info(path: str | Path) -> OnnxInfo:
    """Read the sslforge metadata of an ONNX file (weights are not loaded)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path} does not exist: run `sslforge export onnx {path.parent}` first")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises its own DecodeError
        raise ExportError(f"{path} is not a readable ONNX file ({e})") from None
    meta = {p.key[len(META_PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}
    version = meta.get("metadata_version")
    if version != str(METADATA_VERSION):
        raise ExportError(f"{path} has sslforge metadata version {version} (this sslforge reads "
                          f"{METADATA_VERSION}): export it again with `sslforge export onnx`")
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    try:
        return OnnxInfo(fingerprint=meta["model_fingerprint"], preprocessing=json.loads(meta["preprocessing"]),
                        embedding_dim=int(meta["embedding_dim"]), precision=meta["precision"],
                        outputs=json.loads(meta["outputs"]), classes=json.loads(meta["classes"]), opset=opset)
    except (KeyError, ValueError, RecursionError) as e:
        raise ExportError(f"{path} has broken sslforge metadata ({type(e).__name__}: {str(e)[:80]}): export it "
                          f"again with `sslforge export onnx`") from None


def check_onnx_matches(path: str | Path, model: ModelDir) -> OnnxInfo:
    """The ONNX file must come from this model dir's weights and preprocessing; say what to do otherwise."""
    info = read_onnx_info(path)
    if info.fingerprint != model.fingerprint:
        raise ExportError(f"{path} was exported from other weights ({info.fingerprint}, model dir has "
                          f"{model.fingerprint}): run `sslforge export onnx {model.path}` again")
    if info.preprocessing != model.info["preprocessing"]:
        raise ExportError(f"{path} records another preprocessing than {model.path / 'model.json'}: "
                          f"run `sslforge export onnx {model.path}` again")
    return info


STACK_TRACE = "pkg.torch.onnx.stack_trace"  # the exporter's per-node Python traceback


def strip_source_paths(proto):
    """Drop the exporter's per-node stack traces: they name files of the machine that exported (its checkout and
    venv paths), so the same model gave other bytes from another checkout, and told whoever got the file where
    it was built. Everything the graph computes, and the node names and scopes Netron shows, stay."""
    nodes = [*proto.graph.node, *(n for f in proto.functions for n in f.node)]
    while nodes:
        node = nodes.pop()
        keep = [p for p in node.metadata_props if p.key != STACK_TRACE]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
        for a in node.attribute:  # control flow (If, Loop, Scan) carries subgraphs
            nodes.extend(n for g in ([a.g] if a.HasField("g") else []) + list(a.graphs) for n in g.node)
    return proto


def to_fp16(proto):
    """FP16 weights and compute with float32 inputs/outputs (what TensorRT 11's strongly typed networks need).

    The converter appends its input casts at the end of the node list; the graph is sorted again so
    that onnx.checker (and TensorRT's parser) accept it.
    """
    import onnx_ir
    from onnx_ir.passes.common import TopologicalSortPass
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx_ir.from_proto(convert_float_to_float16(proto, keep_io_types=True))
    return onnx_ir.to_proto(TopologicalSortPass()(model).model)
