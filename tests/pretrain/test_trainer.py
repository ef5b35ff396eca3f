import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from pretrain.ground.errors import ConfigError
from pretrain.ground.modeldir import ModelDirError, load_model_dir
from pretrain.train.checkpoint import CHECKPOINT
from pretrain.train.config import PretrainConfig
from pretrain.train.trainer import Trainer, TrainingDiverged


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.read_text().splitlines()))


class Interrupt(Exception):
    pass


def interrupt_at(step: int):
    def hook(s: int) -> None:
        if s == step:
            raise Interrupt
    return hook


def test_interrupted_and_resumed_run_equals_uninterrupted(image_folder: Path, tmp_path: Path, tiny_config) -> None:
    full = Trainer(tiny_config(image_folder, tmp_path / "full"), progress=False).fit()
    cfg = tiny_config(image_folder, tmp_path / "cut", checkpoint_every_steps=2)
    with pytest.raises(Interrupt):  # killed at step 5 of 6, after the checkpoint of step 4 (mid-epoch 2)
        Trainer(cfg, on_step=interrupt_at(5), progress=False).fit()
    assert not (tmp_path / "cut" / "model.json").exists()
    assert torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)["step"] == 4
    resumed = Trainer(cfg, resume=True, progress=False).fit()

    a, b = load_file(full / "backbone.safetensors"), load_file(resumed / "backbone.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    rows = lambda run: read_csv(run / "metrics.csv")  # noqa: E731
    assert [r["step"] for r in rows(resumed)] == [str(s) for s in range(1, 7)]
    for x, y in zip(rows(full), rows(resumed)):
        assert float(x["loss"]) == pytest.approx(float(y["loss"]), abs=1e-6)


def test_model_dir_round_trip(image_folder: Path, tmp_path: Path, tiny_config) -> None:
    trainer = Trainer(tiny_config(image_folder, tmp_path / "run", epochs=1), progress=False)
    out = trainer.fit()
    for name in ("model.json", "backbone.safetensors", CHECKPOINT, "config.yaml", "metrics.csv", "plots/loss.png"):
        assert (out / name).is_file(), name
    assert (out / "plots/loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((out / "tb").iterdir())
    saved = PretrainConfig.from_dict(yaml.safe_load((out / "config.yaml").read_text()))
    assert saved.backbone == "test_resnet" and saved.small_stem is True and saved.method_args["temperature"] == 0.2

    model = load_model_dir(out)
    assert model.embedding_dim == trainer.feature_dim and model.preprocessing.crop == 32
    assert model.info["training"]["steps"] == 3 and model.info["training"]["num_images"] == 24
    x = torch.randn(4, 3, 32, 32)
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.load_backbone()(x), trainer.model.backbone(x), rtol=1e-5, atol=1e-6)


def test_model_dir_reader_rejects_other_versions_and_changed_weights(image_folder: Path, tmp_path: Path,
                                                                     tiny_config) -> None:
    out = Trainer(tiny_config(image_folder, tmp_path / "run", epochs=1), progress=False).fit()
    info = json.loads((out / "model.json").read_text())
    (out / "model.json").write_text(json.dumps({**info, "schema_version": 99}))
    with pytest.raises(ModelDirError, match="schema version 99.*upgrade sslforge"):
        load_model_dir(out)
    (out / "model.json").write_text(json.dumps(info))
    weights = out / "backbone.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ModelDirError, match="does not match the fingerprint"):
        load_model_dir(out)
    with pytest.raises(ModelDirError, match="does not exist"):
        load_model_dir(tmp_path / "nothing")
    with pytest.raises(ModelDirError, match="no linear-probe head"):
        load_model_dir(out, verify=False).load_head()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(image_folder: Path, tmp_path: Path, tiny_config) -> None:
    cfg = tiny_config(image_folder, tmp_path / "run", checkpoint_every_steps=1)
    trainer = Trainer(cfg, progress=False)

    def poison(step: int) -> None:
        if step == 2:
            with torch.no_grad():
                next(trainer.model.projector.parameters()).fill_(float("nan"))

    trainer.on_step = poison
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 3 .*--resume"):
        trainer.fit()
    ckpt = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "model.json").exists()


def test_existing_run_is_never_overwritten_and_resume_checks_settings(image_folder: Path, tmp_path: Path,
                                                                       tiny_config) -> None:
    cfg = tiny_config(image_folder, tmp_path / "run", epochs=1)
    Trainer(cfg, progress=False).fit()
    with pytest.raises(ConfigError, match="already holds a run"):
        Trainer(cfg, progress=False)
    with pytest.raises(ConfigError, match="batch_size was 8"):
        Trainer(cfg.replace(batch_size=4), resume=True, progress=False)
    with pytest.raises(ConfigError, match="new.config.yaml does not exist"):
        Trainer(cfg.replace(out=str(tmp_path / "new")), resume=True, progress=False)
    longer = Trainer(cfg.replace(epochs=2), resume=True, progress=False).fit()  # extending a run is allowed
    assert load_model_dir(longer).info["training"]["steps"] == 6


def test_batch_larger_than_data_is_a_config_error(image_folder: Path, tmp_path: Path, tiny_config) -> None:
    with pytest.raises(ConfigError, match="larger than the 24 training images"):
        Trainer(tiny_config(image_folder, tmp_path / "run", batch_size=32), progress=False).fit()


def test_online_knn_is_logged(image_folder: Path, tmp_path: Path, tiny_config) -> None:
    out = Trainer(tiny_config(image_folder, tmp_path / "run", epochs=1, knn_every=1, knn_test=str(image_folder),
                              knn_k=5), progress=False).fit()
    rows = read_csv(out / "eval.csv")
    assert len(rows) == 1
    assert load_model_dir(out).info["training"]["knn"]["top1"] == pytest.approx(float(rows[0]["top1"]))
    # the logged top-1 is a plain weighted vote (k=5, exp(cosine / 0.1)) over the saved backbone's embeddings
    from pretrain.data.images import scan_images
    from pretrain.train.evaluate import extract_features

    model = load_model_dir(out)
    feats = extract_features(model.load_backbone("cpu"), scan_images(image_folder), model.preprocessing, workers=0,
                             progress=False)
    x = feats.features.double().numpy()
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = feats.labels.numpy()
    right = 0
    for i, sims in enumerate(x @ x.T):
        votes = np.zeros(y.max() + 1)
        for j in np.argsort(-sims, kind="stable")[:5]:
            votes[y[j]] += np.exp(sims[j] / 0.1)
        right += int(votes.argmax() == y[i])
    assert float(rows[0]["top1"]) == pytest.approx(right / len(y))


def test_bf16_autocast_run_records_its_precision(image_folder: Path, tmp_path: Path, tiny_config) -> None:
    out = Trainer(tiny_config(image_folder, tmp_path / "run", epochs=1, precision="bf16"), progress=False).fit()
    training = load_model_dir(out).info["training"]
    assert training["precision"] == "bfloat16" and training["device"] == "cpu"
    assert math.isfinite(training["last_loss"])


def test_gradient_clipping_bounds_the_update(image_folder: Path, tmp_path: Path, tiny_config) -> None:
    def weight_change(**changes) -> float:
        trainer = Trainer(tiny_config(image_folder, tmp_path / str(len(changes)), epochs=1, weight_decay=0.0,
                                      **changes), progress=False)
        trainer._build()
        before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        trainer.fit()
        return max(float((p.detach() - before[k]).abs().max()) for k, p in trainer.model.named_parameters())

    # SGD with lr 0.5 * 8/256: three steps move weights by at most 3 * lr * |clipped grad| (momentum < 3 steps).
    assert weight_change(grad_clip=1e-6) < 3 * 0.5 * 8 / 256 * 1e-6 * 3
    assert weight_change() > 1e-3


def test_compiled_run_matches_eager_and_keeps_the_checkpoint_keys(image_folder: Path, tmp_path: Path,
                                                                 tiny_config) -> None:
    eager = Trainer(tiny_config(image_folder, tmp_path / "eager", epochs=1), progress=False).fit()
    compiled = Trainer(tiny_config(image_folder, tmp_path / "compiled", epochs=1, compile=True), progress=False).fit()
    a, b = read_csv(eager / "metrics.csv"), read_csv(compiled / "metrics.csv")
    assert len(a) == len(b) >= 2
    # Same views and first weights, only the kernels differ: step 1 agrees to float rounding, and the
    # rounding differences grow through the updates of this tiny high-lr run, but stay small.
    assert float(b[0]["loss"]) == pytest.approx(float(a[0]["loss"]), abs=1e-4)
    for x, y in zip(a, b):
        assert float(y["loss"]) == pytest.approx(float(x["loss"]), rel=1e-2)
        assert float(y["emb_std"]) == pytest.approx(float(x["emb_std"]), rel=1e-3)  # the monitor's hook still runs
    ckpt_keys = lambda run: set(torch.load(run / CHECKPOINT, weights_only=True)["model"])  # noqa: E731
    assert ckpt_keys(compiled) == ckpt_keys(eager)
    assert load_file(compiled / "backbone.safetensors").keys() == load_file(eager / "backbone.safetensors").keys()


def test_compile_without_a_cpp_compiler_is_a_config_error(image_folder: Path, tmp_path: Path, tiny_config,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        Trainer(tiny_config(image_folder, tmp_path / "run", compile=True), progress=False).fit()


def test_resume_accepts_the_run_under_another_spelling_moved_or_copied(image_folder: Path, tmp_path: Path,
                                                                       tiny_config, monkeypatch) -> None:
    import shutil

    import yaml

    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(Path("images"), Path("runs/k1"), epochs=1)  # both paths relative to the working folder
    Trainer(cfg, progress=False).fit()
    spelled = cfg.replace(out=str(tmp_path / "runs" / "k1"), data=str(image_folder) + "/", epochs=2)
    assert load_model_dir(Trainer(spelled, resume=True, progress=False).fit()).info["training"]["steps"] == 6
    shutil.move("runs/k1", "moved")
    shutil.copytree("moved", "copied")
    monkeypatch.chdir(image_folder)  # and from another working folder
    moved = Trainer(cfg.replace(out=str(tmp_path / "moved"), data=None, epochs=3), resume=True, progress=False).fit()
    assert load_model_dir(moved).info["training"]["steps"] == 9
    assert yaml.safe_load((moved / "config.yaml").read_text())["out"] == str(tmp_path / "moved")
    copied = Trainer(cfg.replace(out="../copied", data=None, epochs=2), resume=True, progress=False).fit()
    assert load_model_dir(copied).info["training"]["steps"] == 6  # the copy is a run of its own
    with pytest.raises(ConfigError, match="data was"):  # another folder of images is still another run
        Trainer(cfg.replace(out="../copied", data=str(tmp_path / "images" / "class_0")), resume=True, progress=False)
