"""--init: starting weights from a model dir, a safetensors file, a PyTorch state dict, timm's weights (saved
locally, or in a Hugging Face cache made here), mismatches, and timm:NAME with neither network nor cache."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from shared_helpers import interrupt_run

from pretrain.cli import main
from pretrain.finetune.run import FinetuneTrainer
from pretrain.ground.errors import ConfigError
from pretrain.ground.startfrom import weights_sha256
from pretrain.train.config import FinetuneConfig
from pretrain.train.trainer import Trainer


def backbone_state(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.build_model().backbone.state_dict().items()}


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key].to(got[key].dtype)), key


def random_backbone(seed: int) -> dict[str, torch.Tensor]:
    """test_resnet with the small stem, as the tiny config builds it, with seeded random weights."""
    from pretrain.ground.backbones import build_backbone, resolve_spec

    torch.manual_seed(seed)
    model, _ = build_backbone(resolve_spec("test_resnet", None, 32), 32)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def test_init_from_a_model_dir_takes_its_weights_architecture_and_records_them(image_folder: Path, tmp_path: Path,
                                                                                tiny_config, tiny_run: Path) -> None:
    cfg = tiny_config(image_folder, tmp_path / "continued", backbone=None, init=str(tiny_run), epochs=1)
    trainer = Trainer(cfg, progress=False)
    assert (trainer.cfg.backbone, trainer.cfg.small_stem) == ("timm/test_resnet", True)  # the model dir's own
    source = load_file(tiny_run / "backbone.safetensors")
    assert_same(backbone_state(trainer), source)
    out = trainer.fit()
    record = json.loads((out / "model.json").read_text())["init"]
    assert record["kind"] == "model_dir" and record["loaded"] == record["of"] == len(source)
    assert record["sha256"] == weights_sha256(source)
    digest = hashlib.sha256((tiny_run / "backbone.safetensors").read_bytes()).hexdigest()
    assert record["file_sha256"] == "sha256:" + digest
    fresh = json.loads((tiny_run / "model.json").read_text())
    assert fresh["init"] is None  # a run from random weights says so


def test_init_from_safetensors_and_pytorch_state_dicts(image_folder: Path, tmp_path: Path, tiny_config) -> None:
    weights = random_backbone(seed=7)
    save_file(weights, str(tmp_path / "w.safetensors"))
    # a DDP-style checkpoint: the state dict under "state_dict", every name prefixed with "module."
    torch.save({"state_dict": {"module." + k: v for k, v in weights.items()}, "epoch": 3}, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        cfg = tiny_config(image_folder, tmp_path / f"run-{name}", init=str(tmp_path / name))
        assert_same(backbone_state(Trainer(cfg, progress=False)), weights)


def test_init_from_timm_weights_saved_locally_drops_their_classifier(image_folder: Path, tmp_path: Path,
                                                                     tiny_config) -> None:
    torch.manual_seed(3)
    model = timm.create_model("test_resnet", pretrained=False)  # with its 1000-class head, as timm saves it
    torch.save(model.state_dict(), tmp_path / "timm.pth")
    cfg = tiny_config(image_folder, tmp_path / "run", init=str(tmp_path / "timm.pth"), small_stem=False, epochs=1)
    got = backbone_state(Trainer(cfg, progress=False))
    assert_same(got, {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")})
    out = Trainer(cfg, progress=False).fit()
    assert json.loads((out / "model.json").read_text())["init"]["dropped_classifier"] == 2


def test_mismatched_weights_are_listed_or_loaded_in_part(image_folder: Path, tmp_path: Path, tiny_config,
                                                          capsys) -> None:
    weights = random_backbone(seed=5)
    bad = dict(weights)
    bad["layer1.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    bad["extra.weight"] = torch.zeros(2)
    del bad["layer1.0.bn1.bias"]
    save_file(bad, str(tmp_path / "bad.safetensors"))
    cfg = tiny_config(image_folder, tmp_path / "strict", init=str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConfigError) as e:
        Trainer(cfg, progress=False).build_model()
    message = str(e.value)
    assert "\n" not in message and "1 missing (layer1.0.bn1.bias)" in message
    assert "1 unexpected (extra.weight)" in message and "--init-strict false" in message
    assert "layer1.0.conv1.weight (3, 3, 1, 1) in the source" in message

    args = ["pretrain", "--data", str(image_folder), "--backbone", "test_resnet", "--image-size", "32",
            "--epochs", "1", "--batch-size", "8", "--workers", "0", "--method-arg", "out_dim=16", "--quiet",
            "--init", str(tmp_path / "bad.safetensors")]
    assert main([*args, "--out", str(tmp_path / "cli-strict")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.warns(UserWarning, match=f"loaded {len(weights) - 2} of the backbone's {len(weights)} tensors"):
        assert main([*args, "--out", str(tmp_path / "loose"), "--init-strict", "false"]) == 0
    record = json.loads((tmp_path / "loose" / "model.json").read_text())["init"]
    assert record["strict"] is False and record["loaded"] == len(weights) - 2
    assert record["missing"] == ["layer1.0.bn1.bias"] and record["unexpected"] == ["extra.weight"]
    with pytest.raises(ConfigError, match="none of its 1 tensors fits"):
        save_file({"other": torch.zeros(1)}, str(tmp_path / "none.safetensors"))
        Trainer(tiny_config(image_folder, tmp_path / "none", init=str(tmp_path / "none.safetensors"),
                            init_strict=False), progress=False).build_model()
    with pytest.raises(ConfigError, match="no such model dir or weights file"):
        Trainer(tiny_config(image_folder, tmp_path / "x", init=str(tmp_path / "nowhere")), progress=False)


def hf_cache_with(home: Path, repo: str, state: dict) -> None:
    """A Hugging Face cache holding `repo`'s model.safetensors, laid out as huggingface_hub writes it."""
    commit = "0" * 40
    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "snapshots" / commit / "model.safetensors"))


def offline(home: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub")}


def test_timm_name_reads_the_local_cache_offline_and_takes_its_preprocessing(image_folder: Path,
                                                                              tmp_path: Path) -> None:
    torch.manual_seed(11)
    weights = timm.create_model("test_resnet", pretrained=False).state_dict()
    hf_cache_with(tmp_path / "hf", "timm/test_resnet.r160_in1k", weights)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "pretrain", "pretrain", "--init", "timm:test_resnet.r160_in1k",
                           "--data", str(image_folder), "--out", str(out), "--image-size", "32", "--no-small-stem",
                           "--epochs", "1", "--batch-size", "8", "--workers", "0", "--method-arg", "out_dim=16",
                           "--quiet"], capture_output=True, text=True, env=offline(tmp_path / "hf"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((out / "model.json").read_text())
    assert info["backbone"]["name"] == "test_resnet"  # the source's architecture: no --backbone given
    assert info["init"]["kind"] == "timm" and info["init"]["pretrained"] == "timm/test_resnet.r160_in1k"
    assert info["init"]["sha256"] == weights_sha256({k: v for k, v in weights.items() if not k.startswith("fc.")})
    # timm's data config of these weights: mean and std 0.5, bilinear
    assert info["preprocessing"]["mean"] == [0.5] * 3 and info["preprocessing"]["interpolation"] == "bilinear"


def test_timm_name_without_network_or_cache_is_one_line_naming_the_cache(image_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "pretrain", "pretrain", "--init", "timm:test_resnet.r160_in1k",
                           "--data", str(image_folder), "--out", str(tmp_path / "run"), "--image-size", "32",
                           "--epochs", "1", "--quiet"], capture_output=True, text=True,
                          env=offline(tmp_path / "empty"), timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and str(tmp_path / "empty" / "hub") in proc.stderr, proc.stderr
    assert "timm:test_resnet.r160_in1k" in proc.stderr


def test_the_image_size_defaults_to_the_sources_own(image_folder: Path, tmp_path: Path, tiny_config) -> None:
    from pretrain.data.images import scan_images
    from pretrain.train.runconfig import resolve_config

    cfg = tiny_config(image_folder, tmp_path / "r", backbone=None, image_size=None, init="timm:test_vit.r160_in1k")
    resolved = resolve_config(cfg, scan_images(image_folder))
    assert (resolved.backbone, resolved.image_size) == ("timm/test_vit", 160)


def test_finetune_and_distill_take_init(image_folder: Path, tmp_path: Path, tiny_run: Path) -> None:
    from shared_helpers import make_tiny_finetune_config

    cfg = make_tiny_finetune_config(None, image_folder, tmp_path / "ft", backbone=None, image_size=None,
                                    init=str(tiny_run), epochs=1)
    trainer = FinetuneTrainer(cfg, progress=False)
    assert trainer.cfg.from_scratch is False and trainer.cfg.image_size == 32
    assert_same(backbone_state(trainer), load_file(tiny_run / "backbone.safetensors"))
    with pytest.raises(ConfigError, match="drop --model"):
        FinetuneConfig(model=str(tiny_run), init=str(tiny_run))
    with pytest.raises(ConfigError, match="drop --from-scratch"):
        FinetuneConfig(from_scratch=True, init=str(tiny_run))
    help_text = subprocess.run([sys.executable, "-m", "pretrain", "distill", "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert "--init INIT" in help_text and "--init-strict" in help_text


def test_a_resumed_run_keeps_its_start_record_without_reading_the_source(image_folder: Path, tmp_path: Path,
                                                                        tiny_config) -> None:
    weights = random_backbone(seed=9)
    save_file(weights, str(tmp_path / "w.safetensors"))
    cfg = tiny_config(image_folder, tmp_path / "run", init=str(tmp_path / "w.safetensors"), checkpoint_every_steps=2)
    interrupt_run(cfg)
    (tmp_path / "w.safetensors").unlink()  # the checkpoint holds the weights and the record
    out = Trainer(cfg, resume=True, progress=False).fit()
    record = json.loads((out / "model.json").read_text())["init"]
    assert record["sha256"] == weights_sha256(weights) and record["loaded"] == len(weights)


def test_views_are_renormalised_to_the_runs_mean_and_std() -> None:
    from pretrain.ground.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, view_renormaliser

    pixels = torch.rand(2, 3, 4, 4)
    mean0, std0 = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    view = (pixels - mean0) / std0  # as the training views come
    pre = Preprocessing(4, 4, (0.5, 0.4, 0.3), (0.25, 0.2, 0.1))
    want = (pixels - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    torch.testing.assert_close(view_renormaliser(pre)(view), want)
    assert view_renormaliser(Preprocessing.for_size(32))(view) is view
