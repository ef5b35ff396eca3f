"""A pass over the whole training set with the network as it is now, for methods whose targets come from all the
data at once (DeepCluster's k-means, SeLA's self-labelling). The trainer hands one to `Method.start_epoch`.

    outputs, ok = data_pass(lambda x: model.backbone(x), desc="features")   # (N, D) float32 on the CPU, (N,) bool

Rows are in image order (the dataset index the method sees as `index`), from the inference preprocessing
(resize + centre crop: no augmentation), in eval mode, without gradients. An image that does not decode
gives a row of zeros and ok False. Under torchrun each process runs every world-th image and the rows are
gathered, so every process returns the same tensor.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from pretrain.data.datasets import EvalDataset
from pretrain.data.heap import keep_heap
from pretrain.data.images import ImageList
from pretrain.ground import distributed
from pretrain.ground.preprocess import Preprocessing


class DataPass:
    def __init__(self, images: ImageList, preprocessing: Preprocessing, device: torch.device, workers: int,
                 batch_size: int = 256, progress: bool = True):
        self.images, self.preprocessing, self.device = images, preprocessing, device
        self.workers, self.batch_size, self.progress = workers, batch_size, progress

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def __call__(self, fn: Callable[[torch.Tensor], torch.Tensor], desc: str = "data pass",
                 modules: tuple[torch.nn.Module, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """`fn` on every training image (the `modules` it uses are put in eval mode for the pass)."""
        world, rank, n = distributed.world_size(), distributed.rank(), len(self.images)
        mine = list(range(rank, n, world))
        dataset = Subset(EvalDataset(self.images, self.preprocessing), mine)
        loader = DataLoader(dataset, batch_size=self.batch_size, num_workers=self.workers,
                            generator=torch.Generator(), worker_init_fn=keep_heap)  # the training RNG untouched
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        rows, oks = [], []
        bar = tqdm(total=len(dataset), desc=desc, unit="img", leave=False,
                   disable=not (self.progress and distributed.is_main()))
        try:
            for x, _, ok in loader:
                rows.append(fn(x.to(self.device, non_blocking=True)).float())
                oks.append(ok.to(self.device))
                bar.update(len(ok))
        finally:
            bar.close()
            for m, mode in zip(modules, modes):
                m.train(mode)
        out = torch.cat(rows) * torch.cat(oks).unsqueeze(1)
        ok = torch.cat(oks)
        if world > 1:  # pad every share to the longest, gather, put the rows back in image order
            longest = -(-n // world)
            pad = longest - len(mine)
            out = torch.cat([out, out.new_zeros(pad, out.shape[1])])
            ok = torch.cat([ok, ok.new_zeros(pad)]).to(torch.uint8)  # gloo gathers no bool
            out, ok = distributed.gather(out), distributed.gather(ok).bool()
            order = torch.tensor([(i % world) * longest + i // world for i in range(n)], device=out.device)
            out, ok = out[order], ok[order]
        return out.cpu(), ok.cpu()
