"""Fine-tuning: the labelled subset is saved, resuming equals an uninterrupted run, --from-head-layer starts from
the kept head layer, the supervised baseline starts from random weights, and the trainer's safeguards hold."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from shared_helpers import make_tiny_config, make_tiny_finetune_config, write_image_folder

from pretrain.data.images import scan_images
from pretrain.finetune.labels import select_labels
from pretrain.finetune.run import RECORD, FinetuneTrainer, finetune
from pretrain.ground.errors import ConfigError
from pretrain.ground.modeldir import load_model_dir
from pretrain.train.checkpoint import CHECKPOINT
from pretrain.train.config import FinetuneConfig
from pretrain.train.trainer import Trainer, TrainingDiverged

NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")  # batch norms update them in training


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("finetune-data")
    return write_image_folder(root / "train", per_class=8), write_image_folder(root / "test", per_class=4, seed=1)


@pytest.fixture(scope="module")
def simclr2(data, tmp_path_factory) -> Path:
    """A one-epoch simclr2 model dir: test_resnet + the first head layer (24 wide), read-only for the tests."""
    cfg = make_tiny_config(data[0], tmp_path_factory.mktemp("ssl") / "run", method="simclr2", epochs=1,
                           method_args={"out_dim": 16, "hidden_dim": 24})
    return Trainer(cfg, progress=False).fit()


def rows(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))


def weights(run: Path, trained_only: bool = False) -> dict[str, torch.Tensor]:
    w = load_file(run / "backbone.safetensors")
    return {k: v for k, v in w.items() if not (trained_only and k.endswith(NORM_STATS))}


class Interrupt(Exception):
    pass


def test_the_run_trains_on_its_saved_class_balanced_subset_and_is_a_model_dir_with_the_head(data, simclr2,
                                                                                            tmp_path: Path) -> None:
    train, test = data
    out = finetune(make_tiny_finetune_config(simclr2, train, tmp_path / "ft", label_fraction=0.5, test=str(test)),
                   progress=False)
    record = json.loads((out / RECORD).read_text())
    expected = select_labels(scan_images(train), fraction=0.5, seed=1)
    assert record["labels"]["files"] == [p.relative_to(train).as_posix() for p in expected.paths]
    assert record["labels"]["classes"] == {"class_0": 4, "class_1": 4, "class_2": 4}
    assert record["labels"]["seed"] == 1 and record["labels"]["label_fraction"] == 0.5
    assert record["source"]["fingerprint"] == load_model_dir(simclr2).fingerprint
    model = load_model_dir(out)
    assert model.classes == ["class_0", "class_1", "class_2"] and model.info["neck"] == [24]
    assert model.load_head().weight.shape == (3, 24)
    metrics = model.info["head"]["metrics"]
    assert metrics["trained_by"] == "finetune" and metrics["images"] == 12
    # the recorded top-1 is the saved backbone + head's accuracy on the 12 test images, counted here by argmax
    from pretrain.data.datasets import EvalDataset

    backbone, head, tests = model.load_backbone("cpu").eval(), model.load_head("cpu"), scan_images(test)
    items = [EvalDataset(tests, model.preprocessing)[i] for i in range(len(tests))]
    with torch.no_grad():
        predicted = head(backbone(torch.stack([x for x, _, _ in items]))).argmax(dim=1)
    right = sum(int(p) == int(y) for p, (_, y, _) in zip(predicted, items))
    assert metrics["top1"] == pytest.approx(right / 12)
    assert model.info["method"]["name"] == "finetune" and model.info["method"]["labelled_images"] == 12
    assert model.info["training"]["steps"] == 6 and model.info["training"]["num_images"] == 12  # 12 / 4 x 2 epochs
    assert model.preprocessing == load_model_dir(simclr2).preprocessing
    assert "train_top1" in rows(out)[0] and "emb_std" in rows(out)[0] and any((out / "tb").iterdir())
    saved = FinetuneConfig.from_dict(yaml.safe_load((out / "config.yaml").read_text()))
    assert saved.from_head_layer == 1 and saved.backbone_lr_scale == 0.3 and saved.batch_size == 4


def test_an_interrupted_and_resumed_run_equals_an_uninterrupted_one(data, simclr2, tmp_path: Path) -> None:
    train, _ = data
    full = finetune(make_tiny_finetune_config(simclr2, train, tmp_path / "full", label_fraction=0.5), progress=False)
    cfg = make_tiny_finetune_config(simclr2, train, tmp_path / "cut", label_fraction=0.5, checkpoint_every_steps=2)

    def interrupt(step: int) -> None:
        if step == 5:
            raise Interrupt

    with pytest.raises(Interrupt):  # killed at step 5 of 6, after the checkpoint of step 4 (mid-epoch 2)
        FinetuneTrainer(cfg, on_step=interrupt, progress=False).fit()
    assert torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)["step"] == 4
    assert not (tmp_path / "cut" / "model.json").exists()
    (train / "class_0" / "late.jpg").write_bytes((train / "class_0" / "000.jpg").read_bytes())  # the folder grows
    try:
        resumed = finetune(cfg, resume=True, progress=False)
    finally:
        (train / "class_0" / "late.jpg").unlink()
    for a, b in ((weights(full), weights(resumed)), (load_file(full / "head.safetensors"),
                                                     load_file(resumed / "head.safetensors"))):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    assert [r["step"] for r in rows(resumed)] == [str(s) for s in range(1, 7)]
    for x, y in zip(rows(full), rows(resumed)):
        assert float(x["loss"]) == pytest.approx(float(y["loss"]), abs=1e-6)
    assert json.loads((resumed / RECORD).read_text()) == json.loads((full / RECORD).read_text())


def test_from_head_layer_1_starts_from_the_kept_head_layer_and_0_from_the_backbone_alone(data, simclr2,
                                                                                         tmp_path: Path) -> None:
    train, _ = data
    source = load_model_dir(simclr2).load_backbone()
    trainer = FinetuneTrainer(make_tiny_finetune_config(simclr2, train, tmp_path / "h1", from_head_layer=1),
                              progress=False)
    trainer._build()
    assert trainer.model.classifier.in_features == 24
    for key, value in source.state_dict().items():  # backbone and head layer, tensor for tensor
        torch.testing.assert_close(trainer.model.backbone.state_dict()[key], value, rtol=0, atol=0, msg=key)
    # Fine-tuned with the network's learning rate at 0, its weights stay the source's (only the classifier learns).
    frozen = finetune(make_tiny_finetune_config(simclr2, train, tmp_path / "frozen", from_head_layer=1,
                                                backbone_lr_scale=0.0), progress=False)
    src, now = weights(simclr2, trained_only=True), weights(frozen, trained_only=True)
    assert src.keys() == now.keys() and any(k.startswith("neck.0.") for k in now)
    for key in src:
        torch.testing.assert_close(now[key], src[key], rtol=0, atol=0, msg=key)
    moved = finetune(make_tiny_finetune_config(simclr2, train, tmp_path / "moved", from_head_layer=1), progress=False)
    assert not torch.equal(weights(moved)["neck.0.weight"], src["neck.0.weight"])  # 0.3 x lr: it does train

    bare = finetune(make_tiny_finetune_config(simclr2, train, tmp_path / "h0", from_head_layer=0), progress=False)
    model = load_model_dir(bare)
    assert model.info["neck"] == [] and model.embedding_dim == source.neck[0].in_features
    assert not any(k.startswith("neck.") for k in weights(bare))
    with pytest.raises(ConfigError, match="keeps 1 head layer.*keep_layers=2"):
        FinetuneTrainer(make_tiny_finetune_config(simclr2, train, tmp_path / "h2", from_head_layer=2), progress=False)


def test_the_supervised_baseline_starts_from_random_weights_with_the_same_recipe(data, tmp_path: Path) -> None:
    train, test = data
    out = finetune(make_tiny_finetune_config(None, train, tmp_path / "sup", labels_per_class=2, test=str(test)),
                   progress=False)
    model = load_model_dir(out)
    assert model.info["method"]["from_scratch"] and model.info["method"]["source"] is None
    assert model.info["method"]["backbone_lr_scale"] == 1.0 and model.info["method"]["labels_per_class"] == 2
    assert model.spec.name == "test_resnet" and model.spec.small_stem and model.classes == ["class_0", "class_1",
                                                                                            "class_2"]
    assert json.loads((out / RECORD).read_text())["labels"]["count"] == 6
    with pytest.raises(ConfigError, match="exclude each other"):
        FinetuneConfig(model="runs/x", from_scratch=True)
    with pytest.raises(ConfigError, match="backbone is the model dir's own"):
        FinetuneConfig(model="runs/x", backbone="resnet50")


def test_nan_stops_with_the_finetune_resume_hint_and_settings_are_checked_on_resume(data, simclr2,
                                                                                  tmp_path: Path) -> None:
    train, test = data
    trainer = FinetuneTrainer(make_tiny_finetune_config(simclr2, train, tmp_path / "nan", checkpoint_every_steps=1),
                              progress=False)

    def poison(step: int) -> None:
        if step == 2:
            with torch.no_grad():
                trainer.model.classifier.weight.fill_(float("nan"))

    trainer.on_step = poison
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 3 .*sslforge finetune --resume"):
        trainer.fit()
    assert torch.load(tmp_path / "nan" / CHECKPOINT, weights_only=True)["step"] == 2
    with pytest.raises(ConfigError, match="--resume: lr was 0.5"):
        FinetuneTrainer(FinetuneConfig(out=str(tmp_path / "nan"), lr=0.1), resume=True, progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        FinetuneTrainer(make_tiny_finetune_config(simclr2, train, tmp_path / "nan"), progress=False)
    with pytest.raises(ConfigError, match="--eval-every needs --test"):
        FinetuneTrainer(make_tiny_finetune_config(simclr2, train, tmp_path / "e", eval_every=1), progress=False)
    online = finetune(make_tiny_finetune_config(simclr2, train, tmp_path / "online", eval_every=1, test=str(test)),
                      progress=False)
    evals = list(csv.DictReader((online / "eval.csv").read_text().splitlines()))
    assert [r["epoch"] for r in evals] == ["1", "2"] and float(evals[-1]["top1"]) == pytest.approx(
        load_model_dir(online).info["head"]["metrics"]["top1"])
