"""Training and embedding in several processes (torchrun, gloo on CPU) against one-process references.

All multi-process checks share one torchrun job (tests/pretrain/ddp_worker.py): starting the
processes is the slow part. Batch norms: the parity and the run comparisons use --sync-bn, i.e.
GlobalBatchNorm in training mode (statistics of the global batch), so two processes must match one
process with plain BatchNorm on the combined batch.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ddp_worker import HPARAMS, build, make_inputs, one_step, prepare, whole_data_labels
from safetensors.torch import load_file
from shared_helpers import make_tiny_config, write_image_folder

from pretrain.cli import main
from pretrain.data.datasets import EpochSampler
from pretrain.ground import distributed
from pretrain.ground.backbones import build_backbone, resolve_spec
from pretrain.ground.modeldir import write_model_dir
from pretrain.ground.preprocess import Preprocessing
from pretrain.train.checkpoint import CHECKPOINT
from pretrain.train.config import PretrainConfig
from pretrain.train.trainer import Trainer

WORKER = Path(__file__).with_name("ddp_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
SYNC_TOLERANCE = 1e-3  # see the parity test
STOP_AT = 3  # the two-process run is killed after step 3 of 6; its last checkpoint is step 2


def run_config(images: Path, out: Path) -> PretrainConfig:
    # lr 0.005, not the tiny config's 0.5: there float32 noise (sums in another order, or on 1 thread instead of 2)
    # grows to 1e-3 in the loss within 4 steps, even between two one-process runs; here it stays below 5e-5
    return make_tiny_config(images, out, sync_bn=True, checkpoint_every_steps=2, lr=0.005)


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepare the inputs, run the two-process job once, return its folder."""
    folder = tmp_path_factory.mktemp("ddp")
    images = write_image_folder(folder / "images")
    write_image_folder(folder / "images-odd", classes=1, per_class=23)  # 12 + 11 images: a padded share
    cfg = run_config(images, folder / "run2")
    (folder / "trainer.json").write_text(json.dumps({"config": cfg.to_dict(), "stop_at": STOP_AT}))
    spec = resolve_spec("test_resnet", None, 32, {})
    torch.manual_seed(0)  # the teacher of distill_features: the same weights whatever ran before
    backbone, dim = build_backbone(spec, 32)
    write_model_dir(folder / "model", backbone, spec=spec, embedding_dim=dim, preprocessing=Preprocessing.for_size(32),
                    method={"name": "none"}, training={})
    (folder / "embed.json").write_text(json.dumps(
        ["embed", "--model", str(folder / "model"), "--images", str(images), "--out", str(folder / "emb2"),
         "--workers", "0", "--quiet", "--device", "cpu", "--batch-size", "5"]))
    proc = subprocess.run([*TORCHRUN, str(WORKER), str(folder)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return folder


def max_difference(got: dict, want: dict) -> float:
    """Largest element-wise difference of the loss, the gradients and the buffers, relative to each tensor's
    scale (its largest entry, at least 1)."""
    assert got["grads"].keys() == want["grads"].keys() and got["buffers"].keys() == want["buffers"].keys()
    pairs = [(got["loss"], want["loss"])] + [(got[part][k], want[part][k]) for part in ("grads", "buffers")
                                             for k in want[part]]
    return max(float((a - b).abs().max() / max(1.0, float(b.abs().max()))) for a, b in pairs if b.numel())


@pytest.mark.parametrize("name", sorted(HPARAMS))
def test_one_step_on_two_processes_equals_one_process_on_the_combined_batch(job: Path, name: str) -> None:
    """Loss, every gradient, MoCo's queue and DINO's center after one step. With frozen batch norms within 1e-5.
    With --sync-bn (global statistics in training mode), float32's reordered sums through batch-norm backward over
    8 images leave noise that depends on the CPU's kernels: up to 1.3e-5 on one machine, 3.6e-4 (distill_features)
    on another, so 1e-3. Per-process batch norm, the bug this guards against, is off by 0.1 to 0.7: the control
    below asserts more than 100 times the tolerance."""
    got = torch.load(job / "parity.pt", weights_only=True)
    for bn, tolerance in (("frozen", 1e-5), ("sync", SYNC_TOLERANCE)):
        model = prepare(build(name, job), bn)
        difference = max_difference(got[f"{bn}/{name}"], one_step(model, model, make_inputs(name)))
        assert difference <= tolerance, f"{name} with {bn} batch norm: relative difference {difference:.3g}"
    if name == "simclr":  # the control: statistics of each process's slice are not those of the global batch
        model = prepare(build(name, job), "sync")
        assert max_difference(got["local/simclr"], one_step(model, model, make_inputs(name))) > 100 * SYNC_TOLERANCE


def test_processes_that_disagree_all_stop_with_one_line(job: Path) -> None:
    for rank in (0, 1):
        message = (job / f"disagree-{rank}.txt").read_text()
        assert message == ("the processes disagree: setting batch_size is 64 on rank 0 but 128 on rank 1; start "
                           "every process with the same options and files")


def read_rows(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))


def test_two_process_run_resumes_on_one_process_as_one_process_run(job: Path, tmp_path: Path) -> None:
    images, two = job / "images", job / "run2"
    assert torch.load(two / CHECKPOINT, weights_only=True)["step"] == 2
    assert not (two / "model.json").exists()
    assert [r["step"] for r in read_rows(two)] == ["1", "2", "3"]  # rank 0 alone logs: each step once
    one = Trainer(run_config(images, tmp_path / "run1"), progress=False).fit()
    resumed = Trainer(run_config(images, two), resume=True, progress=False).fit()

    rows_one, rows_resumed = read_rows(one), read_rows(resumed)
    assert [r["step"] for r in rows_resumed] == [str(s) for s in range(1, 7)]
    for a, b in zip(rows_one, rows_resumed):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), abs=2e-4), a["step"]
        assert float(b["lr"]) == pytest.approx(float(a["lr"]), rel=1e-9)
    wa, wb = load_file(one / "backbone.safetensors"), load_file(resumed / "backbone.safetensors")
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-4, msg=key)
    info = json.loads((resumed / "model.json").read_text())["training"]
    assert info["processes"] == 1 and info["steps"] == 6 and info["sync_bn"] is True


def test_data_pass_and_its_clusterings_on_two_processes_equal_one_process(job: Path) -> None:
    ranks = [torch.load(job / f"clusters-{r}.pt") for r in (0, 1)]
    want = whole_data_labels(job / "images-odd")
    assert ranks[0].keys() == ranks[1].keys() == want.keys()
    for key, value in want.items():
        if key.endswith("/features"):
            assert value.shape[0] == 23
            for got in ranks:
                torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6)
        else:  # ok flags and labels: exactly
            assert value.shape == (23,)
            for got in ranks:
                assert torch.equal(got[key], value), key
    assert want["sela/ok"].all() and len(set(want["sela/labels"].tolist())) > 1


def read_embeddings(folder: Path) -> tuple[np.ndarray, list[dict]]:
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] and manifest["part"] is None
    vectors = np.concatenate([np.load(folder / s["vectors"]) for s in manifest["shards"]])
    ids = [json.loads(line) for s in manifest["shards"] for line in (folder / s["ids"]).read_text().splitlines()]
    return vectors, ids


def test_embed_under_two_processes_equals_one_process(job: Path, tmp_path: Path) -> None:
    assert [(job / f"embed-exit-{r}.txt").read_text() for r in (0, 1)] == ["0", "0"]
    assert not (job / "emb2-part0").exists() and not (job / "emb2-part1").exists()  # merged, then removed
    args = json.loads((job / "embed.json").read_text())
    args[args.index("--out") + 1] = str(tmp_path / "emb1")
    assert main(args) == 0
    v2, ids2 = read_embeddings(job / "emb2")
    v1, ids1 = read_embeddings(tmp_path / "emb1")
    assert ids2 == ids1 and len(ids1) == 24
    np.testing.assert_allclose(v2, v1, rtol=1e-5, atol=1e-6)


def test_devices_option_trains_in_processes_started_by_torchrun(tmp_path: Path) -> None:
    images = write_image_folder(tmp_path / "images")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "pretrain", "pretrain", "--devices", "2", "--data", str(images),
                           "--out", str(out), "--backbone", "test_resnet", "--image-size", "32", "--epochs", "1",
                           "--batch-size", "8", "--workers", "0", "--optimizer", "sgd", "--method-arg",
                           "out_dim=16", "--quiet"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("model dir:") == 1  # rank 0 speaks
    assert json.loads((out / "model.json").read_text())["training"]["processes"] == 2


def test_devices_option_checks_the_options_before_starting_processes(tmp_path: Path, capsys, monkeypatch) -> None:
    assert main(["pretrain", "--devices", "2", "--batch-size", "0", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err == "sslforge: error: batch_size must be a positive integer (got 0)\n"
    assert main(["pretrain", "--devices", "2", "--batch-size", "9", "--out", str(tmp_path / "x")]) == 2
    assert "batch_size 9 must be divisible by devices x accumulate = 2 x 1" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["pretrain", "--devices", "2", "--out", str(tmp_path / "x")]) == 2
    assert "drop it when running under torchrun" in capsys.readouterr().err


def test_sampler_shards_each_global_batch_into_process_and_micro_batch_slices() -> None:
    single = list(EpochSampler(20, 8, seed=3))
    for world, accumulate in ((2, 1), (2, 2), (4, 2)):
        shards = [list(EpochSampler(20, 8, seed=3, rank=r, world=world, accumulate=accumulate))
                  for r in range(world)]
        per = 8 // world
        for step in range(2):  # the union of the slices of a step is the single-process batch, in rank order
            joined = [key for shard in shards for key in shard[step * per:(step + 1) * per]]
            assert joined == single[step * 8:(step + 1) * 8]
    with pytest.raises(ValueError, match="divisible by processes x accumulate = 2 x 3"):
        EpochSampler(20, 8, seed=0, world=2, accumulate=3)


def test_helpers_are_identities_in_one_process() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    assert distributed.gather(x) is x and distributed.all_reduce(x) is x
    assert distributed.world_size() == 1 and distributed.is_main()
    assert torch.equal(distributed.shuffled(lambda v: v * 2, x), x * 2)
    distributed.check_same({"a": 1})
    bn = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
    global_bn = distributed.convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)), torch.device("cpu"))
    assert isinstance(global_bn[0], distributed.GlobalBatchNorm)
    images = torch.randn(5, 3, 4, 4)
    torch.testing.assert_close(global_bn(images), bn(images))
    torch.testing.assert_close(global_bn[0].running_var, bn[0].running_var)


def test_accumulation_equals_the_large_batch_for_a_per_image_loss(image_folder: Path, tmp_path: Path) -> None:
    """DINO on a ViT (layer norm; no batch norm anywhere: the default recipe's head batch norm is turned off) with a
    fixed center: each image's loss is its own."""
    def config(out: str, accumulate: int) -> PretrainConfig:
        return make_tiny_config(image_folder, tmp_path / out, method="dino", backbone="test_vit", epochs=1,
                                backbone_args={"img_size": 32}, accumulate=accumulate, transform="simclr",
                                method_args={"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8,
                                             "center_momentum": 1.0, "head_bn": False})
    whole = Trainer(config("whole", 1), progress=False).fit()
    split = Trainer(config("split", 4), progress=False).fit()
    for a, b in zip(read_rows(whole), read_rows(split)):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), abs=1e-5)
    wa, wb = load_file(whole / "backbone.safetensors"), load_file(split / "backbone.safetensors")
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-5, atol=1e-5, msg=key)


def test_accumulation_warns_where_the_loss_needs_the_whole_batch(image_folder: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="couples the images of a batch.*micro-batch of 4 images"):
        Trainer(make_tiny_config(image_folder, tmp_path / "run", accumulate=2), progress=False)
