"""Torch datasets over an ImageList, and the resumable sampler that makes runs reproducible.

Augmentation randomness is a pure function of (seed, epoch, position in the epoch): each sample
seeds its own RNG. So a run gives the same views whatever the number of loader workers, and a run
resumed in the middle of an epoch continues with exactly the views it would have seen.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Dataset, Sampler

from pretrain.data.images import DECODE_ERRORS, ImageList, load_rgb
from pretrain.ground.preprocess import Preprocessing


class ViewsDataset(Dataset):
    """Training samples: `(views, failures, first_failed_path)` for a `(index, sample_seed)` key.

    An image that fails to decode is replaced by the next one in the list; `failures` counts how
    many were replaced so the trainer can report it (counts survive worker processes via collate).
    With `labels=True` (fine-tuning) the views come as `{"views": [...], "labels": class index}`, the
    label of the image that was actually decoded; with `indices=True` (methods with per-image state: a memory
    bank, cluster assignments) they carry `"index"`, the position of that image in the list.
    """

    def __init__(self, images: ImageList, transform: Callable, labels: bool = False, indices: bool = False):
        if labels and not images.labelled:
            raise ValueError(f"{images.root} has no class sub-folders: labelled training needs them")
        self.images = images
        self.transform = transform
        self.labels = labels
        self.indices = indices

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[list[torch.Tensor], int, str]:
        index, sample_seed = key
        failed: list[str] = []
        for attempt in range(len(self.images)):
            used = (index + attempt) % len(self.images)
            path = self.images.paths[used]
            try:
                image = load_rgb(path)
                break
            except DECODE_ERRORS:
                failed.append(str(path))
        else:
            raise RuntimeError(f"no image under {self.images.root} could be decoded")
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed also queues a CUDA seeding with a captured stack
            # trace when CUDA is not initialised: 0.12 ms per sample instead of 0.001 (bench/lever_probes.py seed).
            torch.default_generator.manual_seed(sample_seed)
            state = random.getstate()
            random.seed(sample_seed)
            try:
                views = self.transform(image)
            finally:
                random.setstate(state)
        if self.labels or self.indices:
            views = dict(views) if isinstance(views, dict) else {"views": views}
            if self.labels:
                views["labels"] = torch.tensor(self.images.labels[used])
            if self.indices:
                views["index"] = torch.tensor(used)
        return views, len(failed), failed[0] if failed else ""


class EvalDataset(Dataset):
    """Evaluation samples: `(tensor, label, ok)`; an undecodable image gives ok=False and zeros."""

    def __init__(self, images: ImageList, preprocessing: Preprocessing):
        self.images = images
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, bool]:
        label = self.images.labels[index] if self.images.labels is not None else -1
        try:
            return self.preprocessing(load_rgb(self.images.paths[index])), label, True
        except DECODE_ERRORS:
            size = self.preprocessing.crop
            return torch.zeros(3, size, size), label, False


class EpochSampler(Sampler):
    """Yields `(index, sample_seed)` in a seeded per-epoch permutation, full batches only.

    `set_epoch(epoch, start_batch)` selects the epoch and skips the batches already trained, which is
    what resuming from a mid-epoch checkpoint needs.

    In a job of `world` processes each takes its `rank`-th slice of every global batch of `batch_size`
    (DistributedSampler's sharding of one shared permutation), cut into `accumulate` micro-batches.
    The seed of a sample is its position in the epoch, so the views do not depend on how many
    processes share the work, and the union of the slices is the single-process batch.
    """

    def __init__(self, num_images: int, batch_size: int, seed: int, *, rank: int = 0, world: int = 1,
                 accumulate: int = 1):
        if num_images < batch_size:
            raise ValueError(f"batch_size {batch_size} is larger than the {num_images} training images: "
                             f"lower --batch-size or add images")
        if batch_size % (world * accumulate):
            raise ValueError(f"batch_size {batch_size} must be divisible by processes x accumulate = {world} x "
                             f"{accumulate}: each process takes batch/{world} images per step in {accumulate} "
                             f"micro-batches")
        self.num_images = num_images
        self.batch_size = batch_size
        self.seed = seed
        self.rank, self.world = rank, world
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_images // self.batch_size

    @property
    def local_batch(self) -> int:
        """Images of one global batch that this process takes."""
        return self.batch_size // self.world

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.local_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch)) & 0x7FFF_FFFF_FFFF_FFFF)
        order = torch.randperm(self.num_images, generator=g).tolist()
        base = (self.seed * 1_000_003 + self.epoch * self.num_images) & 0x7FFF_FFFF_FFFF
        for batch in range(self.start_batch, self.batches_per_epoch):
            first = batch * self.batch_size + self.rank * self.local_batch
            for position in range(first, first + self.local_batch):
                yield order[position], base + position
