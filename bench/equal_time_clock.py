"""What both contenders of an equal-time pair share while they train: the kNN scorer (images decoded once, the
curve's fixed subset of the `--eval` split, the final scores on validation and test) and the clock that stops for
evaluations and samples the machine's load average."""
from __future__ import annotations

import os
import time

import torch

SIZE = 32  # px, both contenders


class OutOfTime(Exception):
    """Raised from a step callback when the budget is spent."""


class Scorer:
    """The kNN evaluation both contenders get: images decoded once with sslforge's inference preprocessing."""

    def __init__(self, args):
        from pretrain.data.datasets import EvalDataset
        from pretrain.data.images import scan_images
        from pretrain.ground.preprocess import Preprocessing
        from pretrain.train.evaluate import class_count

        pre = Preprocessing.for_size(SIZE)
        self.device = torch.device(args.device)

        def decode(folder):
            images = scan_images(folder)
            items = [EvalDataset(images, pre)[i] for i in range(len(images))]
            return images, (torch.stack([x for x, _, _ in items]), torch.tensor([int(y) for _, y, _ in items]))

        train, self.bank = decode(args.data)
        self.splits, listed = {}, [train]
        for split in ("val", "test"):
            if getattr(args, split):
                images, self.splits[split] = decode(getattr(args, split))
                listed.append(images)
        self.classes = class_count(*listed)
        x, y = self.splits[args.eval]  # the curve: a fixed random subset (the folders are sorted by class)
        pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:args.curve_test]
        self.curve = x[pick], y[pick]

    def _embed(self, backbone: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            out = [backbone(b.to(self.device).contiguous(memory_format=torch.channels_last)).float().cpu()
                   for b in x.split(256)]
        backbone.train(was_training)
        return torch.cat(out)

    def score(self, backbone: torch.nn.Module, split: str | None = None) -> dict:
        """kNN top-1/top-5 on all of `split`, or on the curve's subset when `split` is None."""
        from pretrain.train.evaluate import Features, knn_evaluate

        x, y = self.curve if split is None else self.splits[split]
        bank = Features(self._embed(backbone, self.bank[0]), self.bank[1])
        return knn_evaluate(bank, Features(self._embed(backbone, x), y), self.classes, k=200, temperature=0.1)

    def final(self, backbone: torch.nn.Module) -> dict:
        return {split: self.score(backbone, split) for split in self.splits}


class Clock:
    """Training time with the evaluations left out, the learning curve taken at every mark, and the machine's
    load average sampled at the start, at every mark and at the end."""

    def __init__(self, budget_s: float, every_s: float, scorer: Scorer):
        self.budget_s, self.every_s, self.scorer = budget_s, every_s, scorer
        self.start, self.paused, self.next_mark, self.curve = time.perf_counter(), 0.0, every_s, []
        self.load = [os.getloadavg()[0]]

    def train_s(self) -> float:
        return time.perf_counter() - self.start - self.paused

    def tick(self, steps: int, backbone: torch.nn.Module) -> None:
        t = self.train_s()
        if t >= self.next_mark and t < self.budget_s:
            began = time.perf_counter()
            self.load.append(os.getloadavg()[0])
            self.curve.append({"minutes": t / 60, "steps": steps, **self.scorer.score(backbone)})
            self.paused += time.perf_counter() - began
            self.next_mark += self.every_s
        if self.train_s() >= self.budget_s:
            raise OutOfTime

    def summary(self, steps: int, batch: int) -> dict:
        self.load.append(os.getloadavg()[0])
        train_s = self.train_s()
        return {"steps": steps, "train_s": train_s, "images_per_s": steps * batch / train_s, "curve": self.curve,
                "load_average": {"mean": sum(self.load) / len(self.load), "max": max(self.load),
                                 "samples": self.load, "cpus": os.cpu_count()}}
