"""Each SSL loss against a plain reference computation, and every registered method through the trainer."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from shared_helpers import full_and_resumed
from torch import nn

from pretrain.methods import method_class, method_names
from pretrain.methods.ema import cosine_momentum, ema_update, frozen_copy
from pretrain.methods.losses import BarlowTwinsLoss, VICRegLoss, byol_loss, negative_cosine
from pretrain.train.trainer import Trainer


def random_pair(n: int = 16, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 2 + 1, torch.randn(n, d, generator=g)


def test_barlow_twins_matches_explicit_sums() -> None:
    z1, z2 = random_pair()
    n, d = z1.shape
    a = [(z1[:, i] - z1[:, i].mean()) / (z1[:, i].var(unbiased=False) + 1e-5).sqrt() for i in range(d)]
    b = [(z2[:, j] - z2[:, j].mean()) / (z2[:, j].var(unbiased=False) + 1e-5).sqrt() for j in range(d)]
    c = [[float((a[i] * b[j]).sum() / n) for j in range(d)] for i in range(d)]
    on = sum((1 - c[i][i]) ** 2 for i in range(d))
    off = sum(c[i][j] ** 2 for i in range(d) for j in range(d) if i != j)
    assert BarlowTwinsLoss(0.01)(z1, z2).item() == pytest.approx(on + 0.01 * off, rel=1e-5)


def test_vicreg_terms_match_loops_over_dimensions() -> None:
    z1, z2 = random_pair(seed=1)
    n, d = z1.shape
    inv = sum(float((z1[k, i] - z2[k, i]) ** 2) for k in range(n) for i in range(d)) / (n * d)
    var = cov = 0.0
    for z in (z1, z2):
        mean = [float(z[:, i].mean()) for i in range(d)]
        var += sum(max(0.0, 1 - (float(z[:, i].var()) + 1e-4) ** 0.5) for i in range(d)) / d / 2
        for i in range(d):
            for j in range(d):
                if i != j:
                    cij = sum((float(z[k, i]) - mean[i]) * (float(z[k, j]) - mean[j]) for k in range(n)) / (n - 1)
                    cov += cij ** 2 / d
    terms = VICRegLoss().terms(z1, z2)
    assert [t.item() for t in terms] == pytest.approx([inv, var, cov], rel=1e-4)
    assert VICRegLoss()(z1, z2).item() == pytest.approx(25 * inv + 25 * var + cov, rel=1e-4)


@pytest.mark.parametrize("loss, at_equal", [(negative_cosine, -1.0), (byol_loss, 0.0)])
def test_stop_gradient_losses_send_no_gradient_to_the_target(loss, at_equal: float) -> None:
    p = torch.randn(4, 8, requires_grad=True)
    z = torch.randn(4, 8, requires_grad=True)
    loss(p, z).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0 and z.grad is None
    assert loss(z.detach() * 3, z.detach()).item() == pytest.approx(at_equal, abs=1e-6)


def test_ema_update_formula_and_schedule() -> None:
    online = nn.Linear(3, 2)
    target = frozen_copy(online)
    assert not any(p.requires_grad for p in target.parameters())
    before = target.weight.detach().clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    ema_update(target, online, 0.9)
    torch.testing.assert_close(target.weight, 0.9 * before + 0.1 * online.weight.detach())
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99) and cosine_momentum(100, 100, 0.99) == 1.0
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)


SMALL = {"simclr": {"out_dim": 16}, "byol": {"proj_hidden_dim": 32, "proj_dim": 16},
         "simsiam": {"proj_dim": 32, "pred_hidden_dim": 16}, "barlowtwins": {"proj_dim": 32},
         "vicreg": {"proj_dim": 32}, "moco": {"proj_hidden_dim": 32, "proj_dim": 16, "queue_size": 24},
         "drlim": {"out_dim": 16}, "swav": {"prototypes": 10, "proj_hidden_dim": 32, "proj_dim": 16,
                                             "freeze_prototypes_epochs": 0.3, "queue_length": 16,
                                             "queue_start_epoch": 0.2},
         "dino": {"out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 16, "freeze_last_layer_epochs": 0.3},
         "vicregl": {"proj_dim": 32, "local_proj_dim": 16}, "simclr2": {"out_dim": 16, "hidden_dim": 24},
         "nnclr": {"queue_size": 24, "proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32},
         "npid": {"proj_dim": 16, "negatives": 16}, "pirl": {"proj_dim": 16, "negatives": 16},
         "deepcluster": {"clusters": 4, "pca_dim": 8, "hidden_dim": 16, "kmeans_iterations": 3},
         "sela": {"clusters": 4, "hidden_dim": 16, "sinkhorn_iterations": 10},
         "cpc": {"code_dim": 16, "hidden_dim": 16, "context_layers": 1},
         "distill": {"temperature": 2.0},  # + a teacher, made by `teacher_with_head`
         "distill_features": {"proj_hidden_dim": 16},  # + a teacher model dir
         "mae": {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}}
# methods that need another backbone than the tiny config's test_resnet
BACKBONES = {"mae": {"backbone": "test_vit", "backbone_args": {"img_size": 32, "patch_size": 8}}}


def teacher_with_head(folder: Path, tiny_config, image_folder: Path) -> Path:
    """A one-epoch run with a (random) linear head over the image folder's classes."""
    from pretrain.ground.modeldir import load_model_dir

    run = Trainer(tiny_config(image_folder, folder, epochs=1), progress=False).fit()
    model = load_model_dir(run)
    classes = sorted(p.name for p in image_folder.iterdir() if p.is_dir())
    model.save_head(nn.Linear(model.embedding_dim, len(classes)), classes, {})
    return run


def test_every_registered_method_has_a_small_test_setting() -> None:
    assert set(SMALL) == set(method_names())


@pytest.mark.parametrize("method", sorted(SMALL))
def test_method_trains_and_resumes_exactly(method: str, image_folder: Path, tmp_path: Path, tiny_config) -> None:
    args = dict(SMALL[method])
    if method == "distill":
        args["teacher"] = str(teacher_with_head(tmp_path / "teacher", tiny_config, image_folder))
    if method == "distill_features":
        args["teacher"] = str(Trainer(tiny_config(image_folder, tmp_path / "teacher", epochs=1), progress=False).fit())

    local = method_class(method).default_views in ("multicrop", "vicregl")
    views = {"transform_args": {"local_views": 2}} if local else {}

    def config(name: str, **changes):
        return tiny_config(image_folder, tmp_path / name, method=method, method_args=args,
                           optimizer="adamw", lr=1e-3, checkpoint_every_steps=2, **views,
                           **BACKBONES.get(method, {}), **changes)

    full, resumed = full_and_resumed(config)
    a, b = load_file(full / "backbone.safetensors"), load_file(resumed / "backbone.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    full_ckpt = torch.load(full / "checkpoint.pt", weights_only=True)["model"]
    resumed_ckpt = torch.load(resumed / "checkpoint.pt", weights_only=True)["model"]
    for key in full_ckpt:  # EMA targets and every head too
        torch.testing.assert_close(full_ckpt[key], resumed_ckpt[key], rtol=0, atol=1e-6, msg=key)


def test_swav_prototypes_are_normalised_and_frozen_in_the_first_epoch() -> None:
    from pretrain.methods.base import Progress
    from pretrain.methods.swav import SwAV

    swav = SwAV(nn.Flatten(), 12, prototypes=5, proj_hidden_dim=8, proj_dim=4)
    views = [torch.randn(6, 3, 2, 2) for _ in range(3)]
    for epoch_step, frozen in ((0, True), (10, False)):
        swav.progress = Progress(epoch_step, 10, 100)
        swav.zero_grad()
        swav(views)[0].backward()
        torch.testing.assert_close(swav.prototypes.weight.norm(dim=1), torch.ones(5))
        assert (swav.prototypes.weight.grad is None) == frozen


def test_dino_teacher_temperature_warms_up_linearly() -> None:
    from pretrain.methods.base import Progress
    from pretrain.methods.dino import DINO

    dino = DINO(nn.Flatten(), 12, out_dim=8, hidden_dim=8, bottleneck_dim=4, warmup_teacher_temp=0.04,
                teacher_temp=0.07, warmup_teacher_temp_epochs=10)
    temps = []
    for step in (0, 50, 100, 200):
        dino.progress = Progress(step, 10, 1000)
        temps.append(dino.current_teacher_temp())
    assert temps == pytest.approx([0.04, 0.055, 0.07, 0.07])


def test_dino_head_depth_is_an_option() -> None:
    from pretrain.ground.heads import DINOHead
    from pretrain.methods.dino import DINO

    def linears(head: nn.Module) -> list[tuple[int, int]]:
        return [(m.in_features, m.out_features) for m in head.mlp if isinstance(m, nn.Linear)]

    assert linears(DINOHead(12, 8, 16, 4)) == [(12, 16), (16, 16), (16, 4)]  # the paper's 3 layers
    assert linears(DINO(nn.Flatten(), 12, out_dim=8, hidden_dim=16, bottleneck_dim=4, head_layers=2).head) == \
        [(12, 16), (16, 4)]
    assert linears(DINOHead(12, 8, 16, 4, mlp_layers=1)) == [(12, 4)]
    out = DINOHead(12, 8, 16, 4, batch_norm=True, mlp_layers=2)(torch.randn(5, 12))
    assert out.shape == (5, 8) and out.abs().max() <= 1 + 1e-6  # cosine to unit-norm prototypes
    with pytest.raises(ValueError, match="mlp_layers"):
        DINOHead(12, 8, mlp_layers=0)


def test_a_method_that_needs_crop_boxes_rejects_views_without_them(image_folder: Path, tmp_path: Path,
                                                                   tiny_config) -> None:
    from pretrain.ground.errors import ConfigError

    cfg = tiny_config(image_folder, tmp_path / "run", method="vicregl", transform="simclr",
                      method_args=SMALL["vicregl"])
    with pytest.raises(ConfigError, match="needs per-view boxes"):
        Trainer(cfg, progress=False).fit()


def test_distillation_loss_matches_a_loop() -> None:
    from pretrain.methods.losses import distillation_loss

    s, t = torch.randn(3, 4), torch.randn(3, 4)
    expected = sum(-(torch.softmax(t[n] / 2, 0) * torch.log_softmax(s[n] / 2, 0)).sum() for n in range(3)) / 3
    assert distillation_loss(s, t, 2.0).item() == pytest.approx(float(expected), rel=1e-5)


def test_simclr2_model_dir_embeds_from_the_middle_head_layer(image_folder: Path, tmp_path: Path, tiny_config) -> None:
    from pretrain.ground.modeldir import load_model_dir

    run = Trainer(tiny_config(image_folder, tmp_path / "run", method="simclr2", method_args=SMALL["simclr2"]),
                  progress=False).fit()
    model = load_model_dir(run)
    assert model.info["neck"] == [24] and model.embedding_dim == 24
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model.load_backbone()(x)
        ckpt = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    assert out.shape == (2, 24) and (out >= 0).all()  # after the kept layer's ReLU
    # The stored network is the trained backbone + first head layer, weight for weight.
    net = model.load_backbone()
    torch.testing.assert_close(net.neck[0].weight, ckpt["neck.0.weight"])
    assert model.random_backbone()(x).shape == (2, 24)


def test_distill_cli_gives_the_student_the_teachers_classes(image_folder: Path, tmp_path: Path, tiny_config) -> None:
    from pretrain.cli import main
    from pretrain.ground.modeldir import load_model_dir

    teacher = teacher_with_head(tmp_path / "teacher", tiny_config, image_folder)
    out = tmp_path / "student"
    assert main(["distill", "--teacher", str(teacher), "--temperature", "2", "--data", str(image_folder),
                 "--out", str(out), "--backbone", "test_resnet", "--image-size", "32", "--batch-size", "8",
                 "--epochs", "1", "--workers", "0", "--quiet"]) == 0
    student = load_model_dir(out)
    assert student.classes == load_model_dir(teacher).classes
    assert student.info["method"]["hparams"]["temperature"] == 2.0
    assert student.load_head().out_features == len(student.classes)
    assert "agreement" in (out / "metrics.csv").read_text().splitlines()[0]
    assert main(["distill", "--teacher", str(tmp_path / "nowhere"), "--data", str(image_folder),
                 "--out", str(tmp_path / "s2"), "--quiet"]) == 2


def test_simsiam_projector_ends_in_batch_norm_without_scale_and_shift() -> None:
    from pretrain.methods.simsiam import SimSiam

    last = SimSiam(nn.Flatten(), 12, proj_dim=8, pred_hidden_dim=4).projector[-1]
    assert isinstance(last, nn.BatchNorm1d) and not last.affine
    out = SimSiam(nn.Flatten(), 12, proj_dim=8, pred_hidden_dim=4).projector(torch.randn(16, 12))
    torch.testing.assert_close(out.mean(0), torch.zeros(8), atol=1e-5, rtol=0)  # plain standardisation


def test_pirl_refuses_a_grid_its_views_do_not_have(image_folder: Path, tmp_path: Path, tiny_config) -> None:
    from pretrain.ground.errors import ConfigError

    cfg = tiny_config(image_folder, tmp_path / "run", method="pirl", method_args={**SMALL["pirl"], "grid": 3})
    with pytest.raises(ConfigError, match="grid=3, its views .jigsaw. grid=2"):
        Trainer(cfg, progress=False).fit()
