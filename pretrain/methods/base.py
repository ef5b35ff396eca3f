"""The contract every SSL method follows, so one trainer runs them all."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pretrain.ground.errors import ConfigError
from pretrain.ground.preprocess import IMAGENET_MEAN, IMAGENET_STD
from pretrain.methods.recipe import NO_PAPER, Recipe
from pretrain.train.config import RECIPES


@dataclass(frozen=True)
class Progress:
    """Where training stands; the trainer sets `Method.progress` before every step (schedules read it)."""

    step: int  # optimizer steps done
    steps_per_epoch: int
    total_steps: int

    @property
    def epoch(self) -> float:
        return self.step / self.steps_per_epoch


class Method(nn.Module):
    """An SSL method owns the backbone and its heads (plus momentum copies, queues, prototypes).

    Subclasses take `(backbone, feature_dim, **hyper_parameters)` and implement `forward(views)`
    returning `(loss, logs)`, where logs are floats worth plotting (loss terms, statistics).
    `after_step` runs after each optimizer step, for momentum encoders and schedules.

    A transform may return a dict `{"views": [...], name: tensor with one row per view, ...}` instead of
    a list of views; a method that uses such per-view extras (crop boxes, rotation labels) names them
    in `needs`, and the trainer passes them as keyword arguments to `forward`. `"index"` in `needs` asks
    for each image's position in the training set (per-image state: a memory bank, pseudo-labels).

    `start_epoch(epoch, data_pass)` runs before each epoch (also the one a resumed run continues in); a
    method whose targets come from the whole dataset (k-means, self-labelling) calls `data_pass(fn)` there
    (pretrain/train/datapass.py) and keeps what it derives in buffers, so a checkpoint holds it.

    Under torchrun `views` are this process's slice of the global batch; a method makes its loss that
    of the global batch with the helpers of pretrain/ground/distributed.py (identities in one process).
    `couples_batch` says the loss depends on the other images of the batch (in-batch negatives or
    batch statistics), which gradient accumulation cannot preserve; `skips_parameters` that some
    parameters get no gradient in some steps (frozen prototypes), which DDP must be told.

    A method describes itself: `name` (what `--method` takes), `default_views` (the pipeline `--transform`
    defaults to) and its recipes, `default_recipe` (one device, batches of 64-512) and `paper_recipe`
    (the paper's own), each only where it differs from these defaults.
    """

    name: str = ""
    default_views: str = "simclr"
    default_recipe: Recipe = Recipe()
    paper_recipe: Recipe = NO_PAPER
    needs: tuple[str, ...] = ()
    couples_batch: bool = False
    skips_parameters: bool = False

    @classmethod
    def recipe(cls, name: str) -> Recipe:
        """`--recipe NAME`'s settings for this method."""
        if name not in RECIPES:
            raise ConfigError(f"recipe must be one of {', '.join(RECIPES)} (got {name!r})")
        return cls.paper_recipe if name == "paper" else cls.default_recipe

    def __init__(self, backbone: nn.Module, feature_dim: int):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.progress = Progress(0, 1, 1)
        # the mean and std the views are normalised with (the trainer sets the run's; a teacher may want others)
        self.normalisation = (IMAGENET_MEAN, IMAGENET_STD)

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def start_epoch(self, epoch: int, data_pass) -> dict[str, float]:
        """Before epoch `epoch` (0-based); returns figures worth logging. Nothing to do by default."""
        return {}

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after optimizer step `step` (0-based) of `total_steps`; nothing to do by default."""

    def lr_scales(self) -> dict[str, float]:
        """Multiples of the learning rate for parts of the method, by attribute name (`{"predictor": 10.0}`);
        the rest trains at the scheduled rate."""
        return {}

    def deployable(self) -> tuple[nn.Module, list[int]]:
        """The embedding network the model dir stores, and the widths of its neck (head layers kept after
        the backbone; none by default)."""
        return self.backbone, []

    def trained_head(self) -> tuple[nn.Linear, list[str]] | None:
        """A classifier trained with the backbone (distillation), saved as the model dir's head; else None."""
        return None


def encode_views(encoder: nn.Module, views: list[torch.Tensor]) -> list[torch.Tensor]:
    """Run the views through `encoder` one call per input size (multi-crop), keeping their order."""
    out: list[torch.Tensor] = []
    start = 0
    while start < len(views):
        end = start
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        out.extend(encoder(torch.cat(views[start:end])).chunk(end - start))
        start = end
    return out
