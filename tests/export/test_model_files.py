"""Hostile or broken model dirs (model.json, backbone.safetensors, head.safetensors): every one is refused
with one line naming the file and the field, by the loader every stage uses, and by serve's startup."""
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pretrain.ground.modeldir import ModelDirError, file_fingerprint, load_model_dir


@pytest.fixture
def model_dir(resnet_dir, tmp_path: Path) -> Path:
    """A writable copy of the session's test_resnet model dir (with a head, without model.onnx)."""
    path = tmp_path / "model"
    shutil.copytree(resnet_dir.path, path, ignore=shutil.ignore_patterns("model.onnx", "cache"))
    return path


def edit(path: Path, change) -> None:
    info = json.loads((path / "model.json").read_text())
    change(info)
    (path / "model.json").write_text(json.dumps(info))


def refit(path: Path, file: str = "backbone.safetensors") -> None:
    """Record the (changed) weights' fingerprint, as an attacker who hands over the whole dir would."""
    fp = file_fingerprint(path / file)
    edit(path, lambda i: i.update(fingerprint=fp) if file == "backbone.safetensors" else None)


def load_fully(path: Path) -> None:
    model = load_model_dir(path)
    model.load_backbone()
    model.load_head()


def refused(path: Path, match: str) -> str:
    with pytest.raises(ModelDirError, match=match) as e:
        load_fully(path)
    message = str(e.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize(("change", "match"), [
    (lambda i: i["backbone"].update(name="os.system"), r"unknown backbone 'os.system'"),
    (lambda i: i["backbone"].update(name="../../etc/passwd"), r"backbone.name must be a string matching"),
    (lambda i: i["backbone"].update(source="importlib"), r"backbone.source must be one of timm, torchvision"),
    (lambda i: i["backbone"].update(kwargs={"checkpoint_path": "/etc/passwd"}), r"checkpoint_path.*not allowed"),
    (lambda i: i["backbone"].update(kwargs={"drop_rate": {"nested": [1]}}), r"drop_rate must be a number, "),
    (lambda i: i["backbone"].update(kwargs={"drop_rate": "high"}), r"backbone 'test_resnet'.*drop_rate"),
    (lambda i: i["backbone"].update(kwargs=["drop_rate"]), r"backbone.kwargs must be a JSON object, not a list"),
    (lambda i: i["preprocessing"].update(crop=20000), r"preprocessing.crop must be an integer from 1 to 1024"),
    (lambda i: i["preprocessing"].update(resize=10, crop=32), r"preprocessing.crop must be .* resize"),
    (lambda i: i["preprocessing"].update(std=[0, 1, 1]), r"preprocessing.std"),
    (lambda i: i["preprocessing"].update(interpolation="__import__"), r"preprocessing.interpolation must be one"),
    (lambda i: i.update(embedding_dim=10**9), r"embedding_dim must be an integer from 1 to 65536"),
    (lambda i: i.update(embedding_dim=7), r"embeds to .* model.json says 7"),
    (lambda i: i.update(neck=[2**40]), r"neck"),
    (lambda i: i.update(fingerprint=None), r"fingerprint must be a string"),
    (lambda i: i.update(head={"file": "../../x", "classes": ["a"], "fingerprint": i["fingerprint"]}),
     r"head.file must be one of head.safetensors"),
    (lambda i: i["head"].update(classes="abc"), r"head.classes must be a list"),
    (lambda i: i["head"].update(classes=["a", "b"]), r"head.safetensors .* 2 classes"),
    (lambda i: i.update(method=[]), r"method must be a JSON object, not a list"),
])
def test_hostile_model_json_is_refused_in_one_line(model_dir: Path, change, match: str) -> None:
    edit(model_dir, change)
    refused(model_dir, match)


@pytest.mark.parametrize(("content", "match"), [
    (b"[1, 2, 3]", r"must hold a JSON object, not a list"),
    (b'{"schema_version": 1, "name": "caf\xe9"}', r"is not UTF-8 text"),
    (b"[" * 100_000 + b"]" * 100_000, r"nests deeper than 32 levels"),
    (b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", r"nests deeper than 32 levels"),
    (b'{"schema_version": ' + b"9" * 5000 + b"}", r"not valid JSON"),
    (b"\x00\xff garbage", r"not UTF-8|not valid JSON"),
])
def test_model_json_that_is_not_a_record_is_refused(model_dir: Path, content: bytes, match: str) -> None:
    (model_dir / "model.json").write_bytes(content)
    refused(model_dir, match)


def safetensors_with_header(path: Path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@pytest.mark.parametrize("kind", ["lying", "garbage", "header too long", "other shapes", "other names"])
def test_lying_or_foreign_weights_are_refused(model_dir: Path, kind: str) -> None:
    weights = model_dir / "backbone.safetensors"
    if kind == "lying":  # says 10^12 floats, holds 16 bytes
        safetensors_with_header(weights, {"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 16]}},
                                b"\x00" * 16)
    elif kind == "garbage":
        weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    elif kind == "header too long":
        weights.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    elif kind == "other shapes":  # a real safetensors file of a far wider network
        save_file({k: torch.zeros(tuple(4 * s for s in v.shape)) for k, v in load_model_dir(model_dir)
                   .load_backbone().state_dict().items() if v.ndim}, str(weights))
    else:
        save_file({"layer.weight": torch.zeros(3, 3)}, str(weights))
    refit(model_dir)
    message = refused(model_dir, "backbone.safetensors")
    assert ("not a readable safetensors file" in message) == (kind in ("lying", "garbage", "header too long"))


def test_a_foreign_head_is_refused(model_dir: Path) -> None:
    save_file({"weight": torch.zeros(3, 5), "bias": torch.zeros(3)}, str(model_dir / "head.safetensors"))
    refused(model_dir, r"head.safetensors holds a \(3, 5\) head, the backbone embeds to")


def test_serve_and_embed_startup_say_one_line(model_dir: Path, tmp_path: Path, capsys) -> None:
    from pretrain.cli import main
    from serve.engine import Engine
    from serve.settings import Settings, SettingsError

    edit(model_dir, lambda i: i["preprocessing"].update(crop=20000))
    with pytest.raises(SettingsError, match="preprocessing.crop") as e:
        Engine.load(Settings(model=str(model_dir)))
    assert "\n" not in str(e.value)
    images = tmp_path / "images"
    images.mkdir()
    assert main(["embed", "--model", str(model_dir), "--images", str(images), "--out", str(tmp_path / "e")]) != 0
    err = capsys.readouterr().err
    assert "preprocessing.crop" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_broken_export_records_are_refused_in_one_line(resnet_dir, tmp_path: Path) -> None:
    import onnx

    from export.errors import ExportError
    from export.onnxfile import read_onnx_info
    from export.tensorrt import read_sidecar

    proto = onnx.load(str(resnet_dir.path / "model.onnx"))
    kept = [p for p in proto.metadata_props if not p.key.endswith("preprocessing")]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(tmp_path / "model.onnx"))
    with pytest.raises(ExportError, match="has broken sslforge metadata"):
        read_onnx_info(tmp_path / "model.onnx")
    for content, match in ((b"[1]", "not a valid engine sidecar"), (b"\xff\xfe", "not UTF-8 text")):
        (tmp_path / "model.plan.json").write_bytes(content)
        with pytest.raises(ExportError, match=match):
            read_sidecar(tmp_path / "model.plan")
