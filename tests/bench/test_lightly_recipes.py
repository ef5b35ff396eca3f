"""lightly's contender in the equal-time comparison gets lightly's own benchmark recipe, method by method.

Each expected value below is written out from lightly's benchmark files in lightly-ai/lightly (C =
docs/source/getting_started/benchmarks/cifar10_benchmark.py, I = docs/source/getting_started/benchmarks/
imagenette_benchmark.py) and the defaults of the lightly 1.6.0 class each one calls; the test builds every
contender (bench/lightly_recipes.py) and reads the values back from the built objects.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("lightly")
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("lightly_recipes", ROOT / "bench" / "lightly_recipes.py")
recipes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipes)

# per view: crop scale, colour-jitter probability, jitter (brightness, contrast, saturation, hue), grey, blur, solarize
SIMCLR_HALF = {"scale": (0.08, 1.0), "cj_p": 0.8, "jitter": (0.4, 0.4, 0.4, 0.1), "grey": 0.2, "blur": 0.0,
               "solarize": None}  # C l. 168-256: SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)
BYOL_1 = {"scale": (0.08, 1.0), "cj_p": 0.8, "jitter": (0.4, 0.4, 0.2, 0.1), "grey": 0.2, "blur": 0.0,
          "solarize": 0.0}  # C l. 168-256: BYOLView1Transform(input_size=32, gaussian_blur=0.0)
BYOL_2 = {**BYOL_1, "solarize": 0.2}  # C l. 168-256: BYOLView2Transform(input_size=32, gaussian_blur=0.0)
VIEWS = {
    "simclr": [SIMCLR_HALF] * 2, "moco": [SIMCLR_HALF] * 2, "nnclr": [SIMCLR_HALF] * 2,  # C: simclr_transform
    "byol": [BYOL_1, BYOL_2], "barlowtwins": [BYOL_1, BYOL_2],  # C: byol_transform
    # C: SimSiamTransform(input_size=32, gaussian_blur=0.0): min scale 0.2, jitter 0.4/0.4/0.4/0.1
    "simsiam": [{"scale": (0.2, 1.0), "cj_p": 0.8, "jitter": (0.4, 0.4, 0.4, 0.1), "grey": 0.2, "blur": 0.0,
                 "solarize": None}] * 2,
    # C: SwaVTransform(crop_sizes=[32], crop_counts=[2], crop_min_scales=[0.14], cj_strength=0.5, gaussian_blur=0)
    "swav": [{"scale": (0.14, 1.0), "cj_p": 0.8, "jitter": (0.4, 0.4, 0.4, 0.1), "grey": 0.2, "blur": 0.0,
              "solarize": None}] * 2,
    # C: DINOTransform(global_crop_size=32, n_local_views=0, cj_strength=0.5, gaussian_blur=(0, 0, 0))
    "dino": [{"scale": (0.4, 1.0), "cj_p": 0.8, "jitter": (0.4, 0.4, 0.2, 0.1), "grey": 0.2, "blur": 0.0,
              "solarize": 0.0},
             {"scale": (0.4, 1.0), "cj_p": 0.8, "jitter": (0.4, 0.4, 0.2, 0.1), "grey": 0.2, "blur": 0.0,
              "solarize": 0.2}],
    # I: VICRegTransform(input_size=input_size, cj_strength=0.5): blur 0.5 and solarize 0.1 stay on
    "vicreg": [{"scale": (0.08, 1.0), "cj_p": 0.8, "jitter": (0.4, 0.4, 0.2, 0.1), "grey": 0.2, "blur": 0.5,
                "solarize": 0.1}] * 2,
    # I: VICRegLTransform(global_crop_size=128, n_local_views=0, global_grid_size=4, cj_strength=0.5): its class
    # defaults jitter with probability 1.0
    "vicregl": [{"scale": (0.2, 1.0), "cj_p": 1.0, "jitter": (0.4, 0.4, 0.2, 0.1), "grey": 0.2, "blur": 0.5,
                 "solarize": 0.0}] * 2,
}
# Linear layers (in-out) and 1-d batch norms, in order, of each head
HEADS = {
    "simclr": {"head": "L512-512 BN512 L512-128 BN128"},  # C SimCLRModel: SimCLRProjectionHead(512, 512, 128)
    "moco": {"head": "L512-512 L512-128", "head_m": "L512-512 L512-128"},  # C l. 292-313: MoCoProjectionHead(512, 512, 128)
    "byol": {"head": "L512-1024 BN1024 L1024-256", "predictor": "L256-1024 BN1024 L1024-256",  # C BYOLModel
             "head_m": "L512-1024 BN1024 L1024-256"},
    # C SimSiamModel: 2-layer projector 512-2048 (BN) -2048 (BN), SimSiamPredictionHead(2048, 512, 2048)
    "simsiam": {"head": "L512-2048 BN2048 L2048-2048 BN2048", "predictor": "L2048-512 BN512 L512-2048"},
    "barlowtwins": {"head": "L512-2048 BN2048 L2048-2048"},  # C BarlowTwinsModel: 512-2048 (BN) -2048, no BN last
    # C NNCLRModel: projector 512-2048 (BN) -256 (BN), NNCLRPredictionHead(256, 4096, 256)
    "nnclr": {"head": "L512-2048 BN2048 L2048-256 BN256", "predictor": "L256-4096 BN4096 L4096-256", "support": ""},
    "swav": {"head": "L512-512 BN512 L512-128", "prototypes": "L128-512"},  # C SwaVModel: 512 prototypes
    # C DINOModel: DINOProjectionHead(512, 2048, 256, 2048, batch_norm=True) cut to 512-2048 (BN, GELU) -256
    "dino": {"head": "L512-2048 BN2048 L2048-256 L256-2048", "head_m": "L512-2048 BN2048 L2048-256 L256-2048"},
    "vicreg": {"head": "L512-2048 BN2048 L2048-2048 BN2048 L2048-2048"},  # I: BarlowTwinsProjectionHead(512, 2048, 2048)
    "vicregl": {"head": "L512-2048 BN2048 L2048-2048 BN2048 L2048-2048",
                "local_head": "L512-128 L128-128 L128-128"},  # I: VicRegLLocalProjectionHead(512, 128, 128)
}
# optimizer class, peak lr at batch 128 and 256, momentum, weight decay
OPTIMIZERS = {
    **{m: ("SGD", 0.06, 0.12, 0.9, 5e-4) for m in ("simclr", "moco", "byol", "barlowtwins", "nnclr", "dino")},
    "simsiam": ("SGD", 0.06, 0.06, 0.9, 5e-4),  # C SimSiamModel: "lr=6e-2, # no lr-scaling"
    "swav": ("Adam", 1e-3, 2e-3, None, 1e-6),  # C SwaVModel: Adam lr=1e-3 * lr_factor, weight_decay=1e-6
    "vicreg": ("LARS", 0.15, 0.3, 0.9, 1e-4), "vicregl": ("LARS", 0.15, 0.3, 0.9, 1e-4),  # I: 0.3 x batch/256
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    from PIL import Image

    root = tmp_path_factory.mktemp("lightly-data")
    for c, cls in enumerate("ab"):
        (root / cls).mkdir()
        for i in range(8):
            Image.new("RGB", (32, 32), (i * 30, 120 * c, 60)).save(root / cls / f"{i}.png")
    return str(root)


def _view(view) -> dict:
    """The augmentation parameters of one lightly view transform, read off its torchvision Compose."""
    from lightly.transforms.gaussian_blur import GaussianBlur
    from lightly.transforms.solarize import RandomSolarization
    from lightly.transforms.torchvision_v2_compatibility import torchvision_transforms as T

    out = {"solarize": None}
    if isinstance(view, tuple):  # VICRegL: (crop-and-flip with location, the rest)
        out["scale"], out["size"] = tuple(view[0].resized_crop.scale), tuple(view[0].resized_crop.size)
        view = view[1]

    def flat(t):  # a view class holds a Compose; SwaV's crops are a Compose of a crop and a Compose
        t = t.transform if isinstance(getattr(t, "transform", None), T.Compose) else t
        return [x for c in t.transforms for x in flat(c)] if isinstance(t, T.Compose) else [t]

    for t in flat(view):
        if isinstance(t, T.RandomResizedCrop):
            out["scale"], out["size"] = tuple(t.scale), tuple(t.size)
        elif isinstance(t, T.RandomApply) and isinstance(t.transforms[0], T.ColorJitter):
            cj = t.transforms[0]
            out["cj_p"] = t.p
            out["jitter"] = tuple(round(v, 6) for v in (cj.brightness[1] - 1, cj.contrast[1] - 1,
                                                        cj.saturation[1] - 1, cj.hue[1]))
        elif isinstance(t, T.RandomGrayscale):
            out["grey"] = t.p
        elif isinstance(t, GaussianBlur):
            out["blur"] = t.prob
        elif isinstance(t, RandomSolarization):
            out["solarize"] = t.prob
    return out


def _layers(module: nn.Module) -> str:
    return " ".join(f"L{x.in_features}-{x.out_features}" if isinstance(x, nn.Linear) else f"BN{x.num_features}"
                    for x in module.modules() if isinstance(x, (nn.Linear, nn.BatchNorm1d)))


@pytest.mark.parametrize("method", sorted(VIEWS))
def test_views_are_the_benchmarks(method, data) -> None:
    backbone, loader, step, *_ = recipes.build(method, 32, data, 16, workers=0)
    transform = loader.dataset.transform
    views = [_view(v) for v in transform.transforms]
    assert [v.pop("size") for v in views] == [(32, 32)] * len(VIEWS[method])  # every view at 32 px
    assert views == VIEWS[method]


@pytest.mark.parametrize("method", sorted(HEADS))
def test_heads_are_the_benchmarks(method, data) -> None:
    contender = recipes.build(method, 32, data, 16, workers=0)
    heads = {k: _layers(v) for k, v in contender.modules.items() if k not in ("backbone", "backbone_m")}
    assert heads == HEADS[method]
    ema = {k for k in contender.modules if k.endswith("_m")}
    assert ema == ({"backbone_m", "head_m"} if method in ("moco", "byol", "dino") else set())
    assert all(not p.requires_grad for k in ema for p in contender.modules[k].parameters())


@pytest.mark.parametrize("method", sorted(OPTIMIZERS))
def test_optimizer_and_lr_scaling_are_the_benchmarks(method, data) -> None:
    name, lr128, lr256, momentum, wd = OPTIMIZERS[method]
    for batch, lr in ((128, lr128), (256, lr256)):
        opt = recipes.build(method, 32, data, batch, workers=0).optimizer
        assert type(opt).__name__ == name
        group = opt.param_groups[0]
        assert group.get("initial_lr", group["lr"]) == pytest.approx(lr)
        assert group["weight_decay"] == pytest.approx(wd)
        if momentum is not None:
            assert group["momentum"] == momentum
        trainable = {id(p) for p in recipes.build(method, 32, data, batch, workers=0).modules.parameters()
                     if p.requires_grad}
        assert len(trainable) == sum(len(g["params"]) for g in opt.param_groups)


def test_vicreg_warm_up_is_the_imagenette_benchmarks(data) -> None:
    # I: VICRegModel warm-up 20 of 200 epochs, VICRegLModel 10 of 200, then cosine
    for method, warmup in (("vicreg", 20), ("vicregl", 10)):
        contender = recipes.build(method, 32, data, 256, workers=0, total_steps=200)
        lrs = []
        for _ in range(200):
            lrs.append(contender.optimizer.param_groups[0]["lr"])
            contender.optimizer.step()
            contender.scheduler.step()
        assert max(range(200), key=lrs.__getitem__) == warmup - 1  # linear up to the peak, step by step
        assert [lrs[k] for k in (0, warmup - 1)] == pytest.approx([0.3 / warmup, 0.3])
        assert lrs[-1] < 0.01 * 0.3 and lrs[warmup + 1] < lrs[warmup]  # then the cosine down


def test_moco_has_the_benchmarks_split_batch_norm(data) -> None:
    # C l. 292-313: ResNetGenerator("resnet-18", num_splits=8) for MoCo only
    from lightly.models.batchnorm import SplitBatchNorm

    for backbone in recipes.BACKBONES:
        m = recipes.build("moco", 32, data, 16, workers=0, backbone=backbone).modules
        for net in ("backbone", "backbone_m"):
            splits = [x.num_splits for x in m[net].modules() if isinstance(x, SplitBatchNorm)]
            plain = [x for x in m[net].modules() if type(x) is nn.BatchNorm2d]
            assert splits and set(splits) == {8} and not plain
    simclr = recipes.build("simclr", 32, data, 16, workers=0).modules["backbone"]
    assert not any(isinstance(x, SplitBatchNorm) for x in simclr.modules())
    # split: images k and k + 8 of a batch of 16 share their statistics; shifting them leaves the others unchanged
    bn = next(x for x in m["backbone"].modules() if isinstance(x, SplitBatchNorm))
    x = torch.randn(16, bn.num_features, 2, 2)
    y = x.clone()
    y[[0, 8]] += 5.0
    rest = [i for i in range(16) if i not in (0, 8)]
    assert torch.allclose(bn(x)[rest], bn(y)[rest], atol=1e-5)
    assert not torch.allclose(bn(x)[[0, 8]], bn(y)[[0, 8]] - 5.0, atol=1e-2)  # not a plain batch norm either
    with pytest.raises(ValueError, match="multiple of 8"):
        recipes.build("moco", 32, data, 12, workers=0)


def test_every_contender_trains_a_step(data) -> None:
    torch.set_num_threads(1)
    for method in recipes.METHODS:
        contender = recipes.build(method, 32, data, 16, workers=0, total_steps=4)
        before = [p.detach().clone() for p in contender.modules["head"].parameters()]
        loss = contender.step(next(iter(contender.loader)), 0)
        assert loss == loss  # not NaN
        after = list(contender.modules["head"].parameters())
        assert any(not torch.equal(a, b) for a, b in zip(before, after)), method


def test_the_resolved_recipe_names_its_source_and_values() -> None:
    r = recipes.resolve("swav", 32, 256)
    assert r["source"].endswith("cifar10_benchmark.py") and r["optimizer"]["peak_lr"] == pytest.approx(2e-3)
    assert r["views"] == ("SwaVTransform", {"crop_sizes": (32,), "crop_counts": (2,), "crop_min_scales": (0.14,),
                                            "crop_max_scales": (1.0,), "cj_strength": 0.5, "gaussian_blur": 0.0})
    assert recipes.resolve("vicregl", 32, 128)["loss"] == ("VICRegLLoss", {"num_matches": (1, 1)})
    assert recipes.resolve("vicregl", 128, 128)["loss"] == ("VICRegLLoss", {"num_matches": (16, 4)})
    with pytest.raises(ValueError, match="no benchmark recipe"):
        recipes.resolve("pirl", 32, 128)
    with pytest.raises(ValueError, match="Imagenette"):
        recipes.resolve("vicreg", 32, 128, backbone="resnetgenerator")
