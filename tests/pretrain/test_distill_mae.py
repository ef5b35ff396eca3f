"""Feature distillation and MAE: their losses against plain loops, the teacher kept out of what is saved, the
teacher cache, MAE's masking and its encoder against the backbone's own forward."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from pretrain.ground.backbones import build_backbone, resolve_spec
from pretrain.ground.errors import ConfigError
from pretrain.methods import build_method, method_hparams
from pretrain.methods.losses import feature_distillation_loss, mae_loss
from pretrain.methods.mae import patchify, random_masking, sincos_2d
from pretrain.train.trainer import Trainer

VIT = {"backbone": "test_vit", "backbone_args": {"img_size": 32, "patch_size": 8}}


def test_feature_distillation_losses_match_loops() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g) * 3
    cosine = sum(1 - float(s[n] @ t[n]) / (float(s[n].norm()) * float(t[n].norm())) for n in range(5)) / 5
    assert feature_distillation_loss(s, t, "cosine").item() == pytest.approx(cosine, rel=1e-5)

    def huber(d: float, beta: float) -> float:
        return 0.5 * d * d / beta if abs(d) < beta else abs(d) - 0.5 * beta

    for beta in (1.0, 0.5):
        expected = sum(huber(float(s[n, i] - t[n, i]), beta) for n in range(5) for i in range(7)) / 35
        assert feature_distillation_loss(s, t, "smooth_l1", beta).item() == pytest.approx(expected, rel=1e-5)
    assert feature_distillation_loss(t * 2, t, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="cosine, smooth_l1"):
        feature_distillation_loss(s, t, "l2")


def test_mae_loss_matches_a_loop_over_masked_patches() -> None:
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, 6, 12, generator=g), torch.randn(2, 6, 12, generator=g) * 2 + 1
    mask = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 1, 1, 0, 1, 1]], dtype=torch.float32)
    for norm in (True, False):
        total, count = 0.0, 0
        for b in range(2):
            for i in range(6):
                if mask[b, i]:
                    y = target[b, i].tolist()
                    if norm:
                        mean = sum(y) / 12
                        var = sum((v - mean) ** 2 for v in y) / 11  # unbiased, as the paper's code
                        y = [(v - mean) / math.sqrt(var + 1e-6) for v in y]
                    total += sum((float(p) - v) ** 2 for p, v in zip(pred[b, i], y)) / 12
                    count += 1
        assert mae_loss(pred, target, mask, norm).item() == pytest.approx(total / count, rel=1e-5)


def test_patchify_masking_and_positions() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    patches = patchify(x, 4)
    assert patches.shape == (2, 4, 48)
    # patch 1 is the top-right 4 x 4 block, pixels row by row, channels last
    assert torch.equal(patches[1, 1], x[1, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1))
    torch.manual_seed(0)
    keep, restore, mask = random_masking(3, 16, 0.75, torch.device("cpu"))
    assert keep.shape == (3, 4) and mask.sum(1).tolist() == [12.0] * 3
    for b in range(3):  # the kept patches are exactly the unmasked ones
        assert sorted(keep[b].tolist()) == [i for i in range(16) if mask[b, i] == 0]
    pos = sincos_2d(2, 3, 8)
    assert pos.shape == (1, 6, 8)
    omega = [1.0, 1.0 / 100]  # 1 / 10000^(k / 2), k = 0, 1
    r, c = 1, 2  # patch 5
    assert pos[0, 5].tolist() == pytest.approx([math.sin(r * w) for w in omega] + [math.cos(r * w) for w in omega]
                                               + [math.sin(c * w) for w in omega] + [math.cos(c * w) for w in omega])


@pytest.mark.parametrize("args", [{}, {"global_pool": "avg", "class_token": False}, {"reg_tokens": 2}])
def test_mae_encoder_with_every_patch_visible_is_the_backbones_forward(args: dict) -> None:
    torch.manual_seed(0)
    spec = resolve_spec("test_vit", None, 32, {**VIT["backbone_args"], **args})
    backbone, dim = build_backbone(spec, 32)
    mae = build_method("mae", backbone, dim, method_hparams("mae", {"decoder_dim": 32, "decoder_heads": 2})).eval()
    x = torch.randn(2, 3, 32, 32)
    every = torch.arange(16).expand(2, 16)
    with torch.no_grad():
        tokens = mae.encode_visible(x, every)
        want = backbone.forward_features(x)
        if mae.encoder_norm == "fc_norm":
            want = backbone.fc_norm(want)
    torch.testing.assert_close(tokens, want)


def test_mae_refuses_a_backbone_that_is_not_a_vit() -> None:
    backbone, dim = build_backbone(resolve_spec("test_resnet", None, 32), 32)
    with pytest.raises(ConfigError, match="^method mae: needs a timm ViT backbone .vit_.., not ResNet"):
        build_method("mae", backbone, dim, method_hparams("mae"))


def test_feature_distillation_from_a_vit_teacher_saves_only_the_student(image_folder: Path, tmp_path: Path,
                                                                       tiny_config) -> None:
    teacher = Trainer(tiny_config(image_folder, tmp_path / "teacher", epochs=1, **VIT), progress=False).fit()
    cfg = tiny_config(image_folder, tmp_path / "student", method="distill_features", epochs=1,
                      method_args={"teacher": str(teacher), "proj_hidden_dim": 32})
    trainer = Trainer(cfg, progress=False)
    out = trainer.fit()
    method = trainer.model
    assert method.patch and method.teacher_tap.map.shape[-2:] == (4, 4)  # the ViT's 4 x 4 patch tokens
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert "embedding_loss" in header and "patch_loss" in header
    saved = load_file(out / "backbone.safetensors")
    student = {k: v for k, v in method.backbone.state_dict().items()}
    assert saved.keys() == student.keys() and not any(k.startswith(("blocks.", "pos_embed")) for k in saved)
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert not any(k.startswith("teacher") for k in checkpoint)
    teacher_weights = load_file(teacher / "backbone.safetensors")
    for key, value in method.teacher.state_dict().items():  # frozen: exactly the teacher's weights after training
        assert torch.equal(value, teacher_weights[key]), key
    assert not any(p.requires_grad for p in method.teacher.parameters())


def test_the_patch_term_is_the_resampled_teachers_map(image_folder: Path, tmp_path: Path, tiny_config) -> None:
    fine = {"backbone": "test_vit", "backbone_args": {"img_size": 32, "patch_size": 4}}  # 8 x 8 patch tokens
    teacher = Trainer(tiny_config(image_folder, tmp_path / "teacher", epochs=1, **fine), progress=False).fit()
    torch.manual_seed(0)
    student, dim = build_backbone(resolve_spec("test_resnet", None, 32), 32)
    method = build_method("distill_features", student, dim,
                          method_hparams("distill_features", {"teacher": str(teacher), "proj_hidden_dim": 16,
                                                              "patch_weight": 0.5})).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        loss, logs = method([x])
        t_emb = method.teacher(x)  # the views' normalisation is the teacher's own: no change of input
        tokens = method.teacher.forward_features(x)[:, 1:]  # after the final norm, class token dropped
        t_map = tokens.transpose(1, 2).reshape(3, -1, 8, 8)
        on_grid = (t_map[..., 0::2, 0::2] + t_map[..., 0::2, 1::2] + t_map[..., 1::2, 0::2]
                   + t_map[..., 1::2, 1::2]) / 4  # each student cell: the mean of the 2 x 2 teacher cells it covers
        pooled = student(x)
        s_map = method.student_tap.map
        assert s_map.shape[-2:] == (4, 4)
        s = method.patch_projector(s_map)
        emb = 1 - F.cosine_similarity(method.projector(pooled), t_emb, dim=1).mean()
        patch = 1 - F.cosine_similarity(s.flatten(2), on_grid.flatten(2), dim=1).mean()
    assert logs["embedding_loss"] == pytest.approx(float(emb), rel=1e-4)
    assert logs["patch_loss"] == pytest.approx(float(patch), rel=1e-4)
    assert float(loss) == pytest.approx(float(emb + 0.5 * patch), rel=1e-4)


def test_teacher_cache_computes_each_fixed_view_once(image_folder: Path, tmp_path: Path, tiny_config) -> None:
    teacher = Trainer(tiny_config(image_folder, tmp_path / "teacher", epochs=1), progress=False).fit()
    fixed = {"views": 1, "min_scale": 1.0, "hflip_p": 0.0, "jitter_p": 0.0, "gray_p": 0.0}
    cfg = tiny_config(image_folder, tmp_path / "cached", method="distill_features", epochs=3, transform_args=fixed,
                      method_args={"teacher": str(teacher), "proj_hidden_dim": 32, "cache_teacher": True})
    trainer = Trainer(cfg, progress=False)
    trainer._build()
    seen = []
    trainer.model.teacher.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    trainer._build = lambda: None
    trainer.fit()
    # 24 images, batches of 8: epoch 1 computes all; epoch 2's first batch meets cached values and checks them
    # against a fresh computation; after that the cache answers
    assert seen == [8, 8, 8, 8]
    with pytest.raises(ConfigError, match="cache_teacher needs fixed views"):
        Trainer(cfg.replace(out=str(tmp_path / "random"), transform_args={}), progress=False).fit()


def test_feature_distillation_needs_a_teacher_it_can_find(tmp_path: Path) -> None:
    backbone, dim = build_backbone(resolve_spec("test_resnet", None, 32), 32)
    with pytest.raises(ConfigError, match="needs a teacher"):
        build_method("distill_features", backbone, dim, method_hparams("distill_features"))
    with pytest.raises(ConfigError, match="unknown timm model"):
        build_method("distill_features", backbone, dim, method_hparams("distill_features", {"teacher": "timm:nope"}))
    (tmp_path / "w.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="teacher_backbone=NAME"):
        build_method("distill_features", backbone, dim,
                     method_hparams("distill_features", {"teacher": str(tmp_path / "w.safetensors")}))


def test_a_timm_vit_teacher_from_the_cache_is_built_at_the_asked_size(tmp_path: Path, monkeypatch) -> None:
    """timm:NAME read offline from a Hugging Face cache made here; its 10 x 10 position embeddings (160 px) are
    resampled by timm to the 2 x 2 grid of teacher_image_size=32, and its own mean and std (0.5) are kept."""
    import timm
    from huggingface_hub import constants
    from test_startfrom import hf_cache_with

    torch.manual_seed(0)
    weights = timm.create_model("test_vit", pretrained=False).state_dict()
    hf_cache_with(tmp_path / "hf", "timm/test_vit.r160_in1k", weights)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    backbone, dim = build_backbone(resolve_spec("test_resnet", None, 32), 32)
    method = build_method("distill_features", backbone, dim, method_hparams(
        "distill_features", {"teacher": "timm:test_vit.r160_in1k", "teacher_image_size": 32, "proj_hidden_dim": 8}))
    assert method.teacher.pos_embed.shape == (1, 1 + 4, weights["pos_embed"].shape[-1])
    assert torch.equal(method.teacher.blocks[0].attn.qkv.weight, weights["blocks.0.attn.qkv.weight"])
    assert method.teacher_input["mean"] == (0.5, 0.5, 0.5) and method.teacher_input["size"] == 32
    loss, logs = method([torch.randn(2, 3, 32, 32)])
    assert torch.isfinite(loss) and "patch_loss" in logs
