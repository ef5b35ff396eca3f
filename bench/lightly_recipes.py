"""lightly 1.6.0's own documented recipe for each method it shares with sslforge, for side-by-side runs.

Sources (lightly-ai/lightly on GitHub, read, not copied):
- simclr, moco, byol, simsiam, swav, barlowtwins, dino, nnclr: the CIFAR-10 benchmark,
  docs/source/getting_started/benchmarks/cifar10_benchmark.py: SimCLR views at 32 px without blur for every
  two-view method, SwaV 2 crops of 32 px (min scale 0.14), DINO 2 global crops of 32 px and no local crops;
  its heads and losses; SGD lr 0.06 x batch/128, momentum 0.9, weight decay 5e-4 (SwaV: Adam 1e-3 x batch/128,
  weight decay 1e-6; SimSiam: lr 0.06 unscaled), cosine annealing; momentum 0.99 for the MoCo, BYOL and DINO
  target networks; NNCLR's 512-128 projector and 128-512-128 predictor, a 4096-row support set, NT-Xent.
- vicreg, vicregl: the Imagenette benchmark, benchmarks/imagenette (the CIFAR-10 file has no VICReg): its
  heads (Barlow Twins 3-layer 2048 projector; VICRegL local head 128-128, num_matches (16, 4), no local crops)
  and LARS lr 0.3 x batch/256, weight decay 1e-4, warm-up 10 of 200 epochs then cosine ("training diverges
  without LARS"), with the views at `size` px instead of 128.
The benchmarks step their cosine once per epoch over 200 epochs; here it runs per step over `total_steps` (the
budget), which only helps lightly in a short run. Targets of BYOL/DINO use the benchmark's constant momentum.
"""
from __future__ import annotations

import copy
import math

import torch
import torchvision
from torch import nn


def _resnet18(cifar_stem: bool) -> nn.Module:
    resnet = torchvision.models.resnet18()
    if cifar_stem:
        resnet.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        resnet.maxpool = nn.Identity()
    return resnet


def build(method: str, size: int, data: str, batch_size: int, workers: int, cifar_stem: bool = False,
          total_steps: int = 10**9, seed: int = 0, device: str = "cpu"):
    """(backbone mapping images to (N, 512), loader, step(batch, index) -> loss float) for lightly's `method`."""
    from lightly.data import LightlyDataset
    from lightly.loss import (
        BarlowTwinsLoss,
        DINOLoss,
        NegativeCosineSimilarity,
        NTXentLoss,
        SwaVLoss,
        VICRegLLoss,
        VICRegLoss,
    )
    from lightly.models import utils
    from lightly.models.modules import heads
    from lightly.transforms import DINOTransform, SimCLRTransform, SwaVTransform, VICRegLTransform, VICRegTransform
    from lightly.utils.lars import LARS

    torch.manual_seed(seed)
    resnet = _resnet18(cifar_stem)
    trunk = nn.Sequential(*list(resnet.children())[:-2])  # feature maps (VICRegL needs them)
    backbone = nn.Sequential(trunk, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    m = nn.ModuleDict({"backbone": backbone})
    two_views = SimCLRTransform(input_size=size, gaussian_blur=0.0)
    momentum_nets: list[tuple[str, str]] = []
    lr_factor = batch_size / 128
    optimizer, warmup = "sgd", 0.0
    if method == "simclr":
        transform, loss_fn = two_views, NTXentLoss()
        m["head"] = heads.SimCLRProjectionHead(512, 512, 128)
    elif method == "moco":
        transform, loss_fn = two_views, NTXentLoss(temperature=0.1, memory_bank_size=(4096, 128))
        m["head"] = heads.MoCoProjectionHead(512, 512, 128)
        momentum_nets = [("backbone", "backbone_m"), ("head", "head_m")]
    elif method == "byol":
        transform, loss_fn = two_views, NegativeCosineSimilarity()
        m["head"], m["predictor"] = heads.BYOLProjectionHead(512, 1024, 256), heads.BYOLPredictionHead(256, 1024, 256)
        momentum_nets = [("backbone", "backbone_m"), ("head", "head_m")]
    elif method == "simsiam":
        transform, loss_fn = two_views, NegativeCosineSimilarity()
        m["head"] = heads.ProjectionHead([(512, 2048, nn.BatchNorm1d(2048), nn.ReLU(inplace=True)),
                                          (2048, 2048, nn.BatchNorm1d(2048), None)])
        m["predictor"] = heads.SimSiamPredictionHead(2048, 512, 2048)
        lr_factor = 1.0  # "no lr-scaling, results in better training stability"
    elif method == "barlowtwins":
        transform, loss_fn = two_views, BarlowTwinsLoss()
        m["head"] = heads.ProjectionHead([(512, 2048, nn.BatchNorm1d(2048), nn.ReLU(inplace=True)),
                                          (2048, 2048, None, None)])
    elif method == "nnclr":
        from lightly.models.modules import NNMemoryBankModule

        transform, loss_fn = two_views, NTXentLoss()
        m["head"] = heads.NNCLRProjectionHead(512, 512, 128)
        m["predictor"] = heads.NNCLRPredictionHead(128, 512, 128)
        m["support"] = NNMemoryBankModule(size=(4096, 128))  # moved to the device with the rest
    elif method == "swav":
        transform = SwaVTransform(crop_sizes=(size,), crop_counts=(2,), crop_min_scales=(0.14,),
                                  crop_max_scales=(1.0,), gaussian_blur=0.0)
        loss_fn = SwaVLoss()
        m["head"], m["prototypes"] = heads.SwaVProjectionHead(512, 512, 128), heads.SwaVPrototypes(128, 512)
        optimizer = "adam"
    elif method == "dino":
        transform = DINOTransform(global_crop_size=size, n_local_views=0, gaussian_blur=(0.0, 0.0, 0.0))
        loss_fn = DINOLoss(output_dim=2048)
        def dino_head():  # 2 layers for CIFAR-10; built twice, as the weight-normed layer cannot be deep-copied
            head = heads.DINOProjectionHead(512, 2048, 256, 2048, batch_norm=True)
            head.layers = heads.ProjectionHead([(512, 2048, nn.BatchNorm1d(2048), nn.GELU()),
                                                (2048, 256, None, None)]).layers
            return head
        m["head"], m["head_m"] = dino_head(), dino_head()
        momentum_nets = [("backbone", "backbone_m"), ("head", "head_m")]
    elif method == "vicreg":
        transform, loss_fn = VICRegTransform(input_size=size, cj_strength=0.5, gaussian_blur=0.0), VICRegLoss()
        m["head"] = heads.BarlowTwinsProjectionHead(512, 2048, 2048)
        optimizer, warmup, lr_factor = "lars", 10 / 200, batch_size / 256
    elif method == "vicregl":
        grid = max(1, size // (8 if cifar_stem else 32))  # the feature map's side
        transform = VICRegLTransform(global_crop_size=size, n_local_views=0, global_grid_size=grid, cj_strength=0.5)
        loss_fn = VICRegLLoss(num_matches=(min(16, grid * grid), min(4, grid * grid)))
        m["head"], m["local_head"] = heads.BarlowTwinsProjectionHead(512, 2048, 2048), \
            heads.VicRegLLocalProjectionHead(512, 128, 128)
        optimizer, warmup, lr_factor = "lars", 10 / 200, batch_size / 256
    else:
        raise ValueError(f"lightly has no recipe here for {method!r}")
    for src, dst in momentum_nets:
        if dst not in m:
            m[dst] = copy.deepcopy(m[src])
        utils.deactivate_requires_grad(m[dst])
    m.to(device)  # the backbone, heads and momentum copies (their optimizer state follows the parameters)
    loss_fn.to(device)  # MoCo's memory bank and DINO's center are buffers of the loss
    params = [p for p in m.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=6e-2 * lr_factor, momentum=0.9, weight_decay=5e-4)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=1e-3 * lr_factor, weight_decay=1e-6)
    else:
        opt = LARS(params, lr=0.3 * lr_factor, weight_decay=1e-4, momentum=0.9)
    peak = [g["lr"] for g in opt.param_groups]
    warmup_steps = round(warmup * total_steps)

    dataset = LightlyDataset(input_dir=data, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)

    def embed(x: torch.Tensor) -> torch.Tensor:
        return m["head"](m["backbone"](x))

    def step(batch, index: int) -> float:
        scale = (index + 1) / warmup_steps if index < warmup_steps else \
            0.5 * (1 + math.cos(math.pi * min(1.0, (index - warmup_steps) / max(1, total_steps - warmup_steps))))
        for g, lr in zip(opt.param_groups, peak):
            g["lr"] = lr * scale
        views = batch[0]
        for src, dst in momentum_nets:
            utils.update_momentum(m[src], m[dst], 0.99)
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
            epoch = index * batch_size // len(dataset)
            loss = loss_fn(teacher, [embed(x) for x in views], epoch=epoch)
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
        return float(loss.detach())

    return backbone, loader, step
