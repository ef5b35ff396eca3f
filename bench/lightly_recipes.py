"""lightly 1.6.0's own benchmark recipe for each method it shares with sslforge, for side-by-side runs.

Everything below is built from the installed lightly's own classes (lightly.transforms, lightly.models.modules,
lightly.loss, lightly.utils); only the values come from lightly's benchmark files in lightly-ai/lightly:
C = docs/source/getting_started/benchmarks/cifar10_benchmark.py (the CIFAR-10 benchmark, batch 128, 200 epochs),
I = docs/source/getting_started/benchmarks/imagenette_benchmark.py (the Imagenette benchmark, batch 256, 200
epochs; used where C has no such model: VICReg and VICRegL). Lines: C's transforms and their per-model mapping
(`create_dataset_train_ssl`) are lines 168-256 of the revision audited on 2026-12-07, MoCo's model lines 292-313;
the other rows name the statement they come from (`Class.method: code`), which a search of the file finds in
every revision since the move to lightly.transforms.

| method | setting | value | source |
|---|---|---|---|
| all (C) | optimizer | SGD lr 0.06 x batch/128, momentum 0.9, weight decay 5e-4, every trainable parameter | C `configure_optimizers`, `lr_factor = batch_size / 128` |
| all (C) | schedule | cosine annealing to 0 (`CosineAnnealingLR(optim, max_epochs)`) | C `configure_optimizers` |
| simclr, moco, nnclr | views | `SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)`: jitter 0.4/0.4/0.4/0.1 p 0.8, crop scale (0.08, 1), grey 0.2, no blur | C l. 168-256, `simclr_transform` |
| byol, barlowtwins | views | `BYOLTransform(BYOLView1Transform(input_size=32, gaussian_blur=0.0), BYOLView2Transform(..., gaussian_blur=0.0))`: jitter 0.4/0.4/0.2/0.1 p 0.8, crop (0.08, 1), grey 0.2, no blur, solarize 0 / 0.2 | C l. 168-256, `byol_transform` (the 27.03.2023 revision gave both `simclr_transform`) |
| simsiam | views | `SimSiamTransform(input_size=32, gaussian_blur=0.0)`: jitter 0.4/0.4/0.4/0.1 p 0.8, crop (0.2, 1), grey 0.2 | C l. 168-256, `simsiam_transform` |
| swav | views | `SwaVTransform(crop_sizes=[32], crop_counts=[2], crop_min_scales=[0.14], cj_strength=0.5, gaussian_blur=0)` (+ `crop_max_scales=[1.0]`, which lightly 1.6.0 requires) | C l. 168-256, `swav_transform` |
| dino | views | `DINOTransform(global_crop_size=32, n_local_views=0, cj_strength=0.5, gaussian_blur=(0, 0, 0))` | C l. 168-256, `dino_transform` |
| simclr | head, loss | `SimCLRProjectionHead(512, 512, 128)`, `NTXentLoss()` (temperature 0.5) | C `SimCLRModel.__init__` |
| moco | backbone | split batch norm, 8 splits (`ResNetGenerator("resnet-18", num_splits=8)`) | C l. 292-313, `MocoModel.__init__` |
| moco | head, loss, EMA | `MoCoProjectionHead(512, 512, 128)`, `NTXentLoss(temperature=0.1, memory_bank_size=4096)`, momentum 0.99 on backbone and head, `batch_shuffle`, symmetric loss | C l. 292-313, `MocoModel` |
| byol | heads, EMA | `BYOLProjectionHead(512, 1024, 256)`, `BYOLPredictionHead(256, 1024, 256)`, momentum 0.99, `NegativeCosineSimilarity` | C `BYOLModel` |
| simsiam | heads, lr | projector 512-2048 (BN, ReLU) -2048 (BN), `SimSiamPredictionHead(2048, 512, 2048)`; lr 0.06 unscaled ("no lr-scaling") | C `SimSiamModel` |
| barlowtwins | head, loss | projector 512-2048 (BN, ReLU) -2048, `BarlowTwinsLoss()` | C `BarlowTwinsModel.__init__` |
| nnclr | heads, support | projector 512-2048 (BN, ReLU) -256 (BN), `NNCLRPredictionHead(256, 4096, 256)`, `NNMemoryBankModule(size=4096)`, `NTXentLoss()` | C `NNCLRModel.__init__` |
| swav | heads, optimizer | `SwaVProjectionHead(512, 512, 128)`, `SwaVPrototypes(128, 512)`, `SwaVLoss()`; Adam lr 1e-3 x batch/128, weight decay 1e-6 | C `SwaVModel` |
| dino | head, loss, EMA | `DINOProjectionHead(512, 2048, 256, 2048, batch_norm=True)` cut to 2 layers 512-2048 (BN, GELU) -256, `DINOLoss(output_dim=2048)`, momentum 0.99 | C `DINOModel` |
| vicreg | views, head | `VICRegTransform(input_size=128, cj_strength=0.5)` (blur 0.5, solarize 0.1), `BarlowTwinsProjectionHead(512, 2048, 2048)`, `VICRegLoss()` | I `vicreg_transform`, `VICRegModel.__init__` |
| vicregl | views, heads | `VICRegLTransform(global_crop_size=128, n_local_views=0, global_grid_size=4, cj_strength=0.5)`, `BarlowTwinsProjectionHead(512, 2048, 2048)`, `VicRegLLocalProjectionHead(512, 128, 128)`, `VICRegLLoss(num_matches=(16, 4))` | I `vicregl_transform`, `VICRegLModel.__init__` |
| vicreg, vicregl | optimizer | LARS lr 0.3 x batch/256, weight decay 1e-4, momentum 0.9 ("Training diverges without LARS"); `CosineWarmupScheduler`, warm-up 20 of 200 epochs (vicreg), 10 of 200 (vicregl) | I `configure_optimizers`, `self.warmup_epochs = 40 if max_epochs >= 800 else 20` / `20 ... else 10` |

Where this differs from the benchmark, on purpose, for both contenders alike: the views are `size` px (32 for
CIFAR-10; Imagenette's 128 becomes 32 too, and VICRegL's grid shrinks to the feature map, 1x1 at 32 px with the
standard stem, its matches to at most grid^2); the schedule runs per step over the budget's steps instead of per
epoch over 200 epochs (the same curve, compressed to the budget); LARS is lightly's own (`lightly.utils.lars`)
where the Imagenette file imports pl_bolts'. The backbone is the protocol's choice, the same for both contenders:
`backbone="torchvision"` (default) is torchvision's ResNet-18 with the standard stem, as sslforge trains it (the
CIFAR stem costs 16x more per image on a CPU; `"torchvision-cifar-stem"` has it, as sslforge's `small_stem`);
`backbone="resnetgenerator"` is lightly's own CIFAR ResNet-18
(`ResNetGenerator("resnet-18")`), the benchmark's, for CIFAR-file methods. Either way MoCo gets its split batch
norm: with torchvision's ResNet every BatchNorm2d becomes lightly's `SplitBatchNorm(num_splits=8)`.
"""
from __future__ import annotations

import copy
from typing import Any, NamedTuple

import torch
import torchvision
from torch import nn

CIFAR = "docs/source/getting_started/benchmarks/cifar10_benchmark.py"
IMAGENETTE = "docs/source/getting_started/benchmarks/imagenette_benchmark.py"
METHODS = ("simclr", "moco", "byol", "simsiam", "swav", "barlowtwins", "vicreg", "vicregl", "dino", "nnclr")
BACKBONES = ("torchvision", "torchvision-cifar-stem", "resnetgenerator")
MOCO_SPLITS = 8
EMA = 0.99

SGD = {"name": "sgd", "lr": 0.06, "lr_batch": 128, "momentum": 0.9, "weight_decay": 5e-4}
# the views of each method: (lightly class, its keyword arguments); "SIZE" becomes the image size
_SIMCLR_VIEWS = ("SimCLRTransform", {"input_size": "SIZE", "cj_strength": 0.5, "gaussian_blur": 0.0})
_BYOL_VIEWS = ("BYOLTransform", {"view_1_transform": ("BYOLView1Transform", {"input_size": "SIZE", "gaussian_blur": 0.0}),
                                 "view_2_transform": ("BYOLView2Transform", {"input_size": "SIZE", "gaussian_blur": 0.0})})

RECIPES: dict[str, dict[str, Any]] = {
    "simclr": {"source": CIFAR, "views": _SIMCLR_VIEWS, "optimizer": SGD, "loss": ("NTXentLoss", {})},
    "moco": {"source": CIFAR, "views": _SIMCLR_VIEWS, "optimizer": SGD, "ema": EMA, "split_bn": MOCO_SPLITS,
             "loss": ("NTXentLoss", {"temperature": 0.1, "memory_bank_size": (4096, 128)})},
    "byol": {"source": CIFAR, "views": _BYOL_VIEWS, "optimizer": SGD, "ema": EMA,
             "loss": ("NegativeCosineSimilarity", {})},
    "simsiam": {"source": CIFAR, "views": ("SimSiamTransform", {"input_size": "SIZE", "gaussian_blur": 0.0}),
                "optimizer": {**SGD, "lr_batch": None}, "loss": ("NegativeCosineSimilarity", {})},
    "barlowtwins": {"source": CIFAR, "views": _BYOL_VIEWS, "optimizer": SGD, "loss": ("BarlowTwinsLoss", {})},
    "nnclr": {"source": CIFAR, "views": _SIMCLR_VIEWS, "optimizer": SGD, "loss": ("NTXentLoss", {}),
              "support_set": (4096, 256)},
    "swav": {"source": CIFAR, "loss": ("SwaVLoss", {}),
             "views": ("SwaVTransform", {"crop_sizes": ("SIZE",), "crop_counts": (2,), "crop_min_scales": (0.14,),
                                         "crop_max_scales": (1.0,), "cj_strength": 0.5, "gaussian_blur": 0.0}),
             "optimizer": {"name": "adam", "lr": 1e-3, "lr_batch": 128, "weight_decay": 1e-6}},
    "dino": {"source": CIFAR, "optimizer": SGD, "ema": EMA, "loss": ("DINOLoss", {"output_dim": 2048}),
             "views": ("DINOTransform", {"global_crop_size": "SIZE", "n_local_views": 0, "cj_strength": 0.5,
                                         "gaussian_blur": (0.0, 0.0, 0.0)})},
    "vicreg": {"source": IMAGENETTE, "views": ("VICRegTransform", {"input_size": "SIZE", "cj_strength": 0.5}),
               "optimizer": {"name": "lars", "lr": 0.3, "lr_batch": 256, "momentum": 0.9, "weight_decay": 1e-4,
                             "warmup_epochs": 20, "epochs": 200}, "loss": ("VICRegLoss", {})},
    "vicregl": {"source": IMAGENETTE, "loss": ("VICRegLLoss", {"num_matches": (16, 4)}),
                "views": ("VICRegLTransform", {"global_crop_size": "SIZE", "n_local_views": 0,
                                               "global_grid_size": "GRID", "cj_strength": 0.5}),
                "optimizer": {"name": "lars", "lr": 0.3, "lr_batch": 256, "momentum": 0.9, "weight_decay": 1e-4,
                              "warmup_epochs": 10, "epochs": 200}},
}


def _fill(value, size: int, grid: int):
    if value == "SIZE":
        return size
    if value == "GRID":
        return grid
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], dict):
        return (value[0], _fill(value[1], size, grid))
    if isinstance(value, (tuple, list)):
        return type(value)(_fill(v, size, grid) for v in value)
    if isinstance(value, dict):
        return {k: _fill(v, size, grid) for k, v in value.items()}
    return value


def feature_grid(size: int, backbone: str) -> int:
    """The side of ResNet-18's last feature map for `size` px images (stride 32, or 8 for the CIFAR ResNet)."""
    return max(1, size // (32 if backbone == "torchvision" else 8))


def resolve(method: str, size: int, batch_size: int, backbone: str = "torchvision") -> dict:
    """The recipe of lightly's `method`, every value filled in for this size and batch (JSON-able, and the
    contender's identity in result files)."""
    import lightly

    if method not in RECIPES:
        raise ValueError(f"lightly has no benchmark recipe here for {method!r}; one of: {', '.join(METHODS)}")
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, not {backbone!r}")
    recipe = RECIPES[method]
    if backbone == "resnetgenerator" and recipe["source"] != CIFAR:
        raise ValueError(f"{method}'s benchmark (Imagenette) uses torchvision's ResNet-18: use backbone='torchvision'")
    splits = recipe.get("split_bn", 0)
    if splits and (batch_size % splits or batch_size // splits < 2):
        raise ValueError(f"{method}'s split batch norm ({splits} splits) needs a batch of a multiple of {splits}, "
                         f"at least {2 * splits}; got {batch_size}")
    grid = feature_grid(size, backbone)
    out = _fill(copy.deepcopy(recipe), size, grid)
    opt = out["optimizer"]
    opt["peak_lr"] = opt["lr"] * (batch_size / opt["lr_batch"] if opt["lr_batch"] else 1.0)
    if method == "vicregl":  # a match per feature-map cell at most
        out["loss"][1]["num_matches"] = tuple(min(n, grid * grid) for n in out["loss"][1]["num_matches"])
    return {"method": method, "lightly": lightly.__version__, "size": size, "batch_size": batch_size,
            "backbone": backbone, **out, "split_bn": out.get("split_bn", 0), "ema": out.get("ema")}


def _instantiate(spec, module):
    name, kwargs = spec
    kwargs = {k: _instantiate(v, module) if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str)
              and isinstance(v[1], dict) else v for k, v in kwargs.items()}
    return getattr(module, name)(**kwargs)


def _trunk(backbone: str, split_bn: int) -> nn.Module:
    """ResNet-18 up to its last feature map, with split batch norm when `split_bn` > 0."""
    from lightly.models import ResNetGenerator
    from lightly.models.batchnorm import SplitBatchNorm

    if backbone == "resnetgenerator":
        return nn.Sequential(*list(ResNetGenerator("resnet-18", num_splits=split_bn).children())[:-1])
    resnet = torchvision.models.resnet18()
    if backbone == "torchvision-cifar-stem":  # 3x3 stride-1 stem, no max-pool: sslforge's small_stem
        resnet.conv1, resnet.maxpool = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
    trunk = nn.Sequential(*list(resnet.children())[:-2])
    if split_bn:
        for parent in list(trunk.modules()):
            for name, child in parent.named_children():
                if type(child) is nn.BatchNorm2d:
                    setattr(parent, name, SplitBatchNorm(child.num_features, split_bn))
    return trunk


def _heads(method: str) -> dict[str, nn.Module]:
    from lightly.models.modules import NNMemoryBankModule, heads

    def mlp(*layers):  # (in, out, batch norm?, activation) per layer
        return heads.ProjectionHead([(a, b, nn.BatchNorm1d(b) if bn else None, act) for a, b, bn, act in layers])

    if method == "simclr":
        return {"head": heads.SimCLRProjectionHead(512, 512, 128)}
    if method == "moco":
        return {"head": heads.MoCoProjectionHead(512, 512, 128)}
    if method == "byol":
        return {"head": heads.BYOLProjectionHead(512, 1024, 256), "predictor": heads.BYOLPredictionHead(256, 1024, 256)}
    if method == "simsiam":
        return {"head": mlp((512, 2048, True, nn.ReLU(inplace=True)), (2048, 2048, True, None)),
                "predictor": heads.SimSiamPredictionHead(2048, 512, 2048)}
    if method == "barlowtwins":
        return {"head": mlp((512, 2048, True, nn.ReLU(inplace=True)), (2048, 2048, False, None))}
    if method == "nnclr":
        return {"head": mlp((512, 2048, True, nn.ReLU(inplace=True)), (2048, 256, True, None)),
                "predictor": heads.NNCLRPredictionHead(256, 4096, 256),
                "support": NNMemoryBankModule(size=RECIPES["nnclr"]["support_set"])}
    if method == "swav":
        return {"head": heads.SwaVProjectionHead(512, 512, 128), "prototypes": heads.SwaVPrototypes(128, 512)}
    if method == "dino":
        def dino_head():  # 2 layers for CIFAR-10; built twice, as the weight-normed layer cannot be deep-copied
            head = heads.DINOProjectionHead(512, 2048, 256, 2048, batch_norm=True)
            head.layers = mlp((512, 2048, True, nn.GELU()), (2048, 256, False, None)).layers
            return head
        return {"head": dino_head(), "head_m": dino_head()}
    if method == "vicreg":
        return {"head": heads.BarlowTwinsProjectionHead(512, 2048, 2048)}
    return {"head": heads.BarlowTwinsProjectionHead(512, 2048, 2048),
            "local_head": heads.VicRegLLocalProjectionHead(512, 128, 128)}


class Contender(NamedTuple):
    backbone: nn.Module  # images -> (N, 512)
    loader: torch.utils.data.DataLoader
    step: Any  # step(batch, index) -> loss float
    modules: nn.ModuleDict
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    recipe: dict


def build(method: str, size: int, data: str, batch_size: int, workers: int, backbone: str = "torchvision",
          total_steps: int = 10**9, seed: int = 0, device: str = "cpu", cifar_stem: bool | None = None) -> Contender:
    """lightly's contender for `method`: its benchmark's views, heads, loss, optimizer and schedule (per step over
    `total_steps`), on `data` (class sub-folders). `cifar_stem` (the speed benchmarks' switch) picks
    torchvision's ResNet-18 with or without the 3x3 stem."""
    if cifar_stem is not None:
        backbone = "torchvision-cifar-stem" if cifar_stem else "torchvision"
    import lightly.loss
    import lightly.transforms
    from lightly.data import LightlyDataset
    from lightly.models import utils
    from lightly.utils.lars import LARS
    from lightly.utils.scheduler import CosineWarmupScheduler

    recipe = resolve(method, size, batch_size, backbone)
    torch.manual_seed(seed)
    trunk = _trunk(backbone, recipe["split_bn"])
    net = nn.Sequential(trunk, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    m = nn.ModuleDict({"backbone": net, **_heads(method)})
    momentum_nets = [("backbone", "backbone_m"), ("head", "head_m")] if recipe["ema"] else []
    for src, dst in momentum_nets:
        if dst not in m:
            m[dst] = copy.deepcopy(m[src])
        utils.deactivate_requires_grad(m[dst])
    transform = _instantiate(recipe["views"], lightly.transforms)
    loss_fn = _instantiate(recipe["loss"], lightly.loss)
    m.to(device)
    loss_fn.to(device)  # MoCo's memory bank and DINO's center are buffers of the loss
    params = [p for p in m.parameters() if p.requires_grad]
    o = recipe["optimizer"]
    if o["name"] == "sgd":
        opt = torch.optim.SGD(params, lr=o["peak_lr"], momentum=o["momentum"], weight_decay=o["weight_decay"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, total_steps))
    elif o["name"] == "adam":
        opt = torch.optim.Adam(params, lr=o["peak_lr"], weight_decay=o["weight_decay"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, total_steps))
    else:
        opt = LARS(params, lr=o["peak_lr"], weight_decay=o["weight_decay"], momentum=o["momentum"])
        warmup = round(o["warmup_epochs"] / o["epochs"] * total_steps)
        sched = CosineWarmupScheduler(opt, warmup, max(1, total_steps))

    dataset = LightlyDataset(input_dir=data, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    step = _stepper(method, m, trunk, loss_fn, opt, sched, momentum_nets, batch_size, len(dataset))
    return Contender(net, loader, step, m, opt, sched, recipe)


def _stepper(method, m, trunk, loss_fn, opt, sched, momentum_nets, batch_size, n_images):
    from lightly.models import utils

    def embed(x: torch.Tensor) -> torch.Tensor:
        return m["head"](m["backbone"](x))

    def step(batch, index: int) -> float:
        views = batch[0]
        for src, dst in momentum_nets:
            utils.update_momentum(m[src], m[dst], EMA)
        if method == "moco":
            def pair(a, b):
                b, shuffle = utils.batch_shuffle(b)
                return embed(a), utils.batch_unshuffle(m["head_m"](m["backbone_m"](b)), shuffle)
            loss = 0.5 * (loss_fn(*pair(views[0], views[1])) + loss_fn(*pair(views[1], views[0])))
        elif method == "byol":
            p0, p1 = (m["predictor"](embed(x)) for x in views)
            with torch.no_grad():
                t0, t1 = (m["head_m"](m["backbone_m"](x)) for x in views)
            loss = 0.5 * (loss_fn(p0, t1) + loss_fn(p1, t0))
        elif method == "nnclr":
            z0, z1 = (embed(x) for x in views)
            p0, p1 = m["predictor"](z0), m["predictor"](z1)
            n0, n1 = m["support"](z0.detach(), update=False), m["support"](z1.detach(), update=True)
            loss = 0.5 * (loss_fn(n0, p1) + loss_fn(n1, p0))
        elif method == "simsiam":
            z0, z1 = (embed(x) for x in views)
            p0, p1 = m["predictor"](z0), m["predictor"](z1)
            loss = 0.5 * (loss_fn(z0.detach(), p1) + loss_fn(z1.detach(), p0))
        elif method == "swav":
            m["prototypes"].normalize()
            out = [m["prototypes"](nn.functional.normalize(embed(x), dim=1)) for x in views]
            loss = loss_fn(out[:2], out[2:])
        elif method == "dino":
            with torch.no_grad():
                teacher = [m["head_m"](m["backbone_m"](x)) for x in views[:2]]
            loss = loss_fn(teacher, [embed(x) for x in views], epoch=index * batch_size // n_images)
        elif method == "vicregl":
            n = len(views) // 2
            feats = []
            for x in views[:n]:
                fmap = trunk(x)
                feats.append((m["head"](fmap.mean(dim=(2, 3))), m["local_head"](fmap.permute(0, 2, 3, 1))))
            loss = loss_fn(global_view_features=feats[:2], global_view_grids=views[n:n + 2])
        else:
            loss = loss_fn(embed(views[0]), embed(views[1]))
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        return float(loss.detach())

    return step
