"""MoCo v2 (He et al. 2020; Chen et al. 2020): a momentum key encoder and a FIFO queue of negative keys.

The queue (pretrain/methods/queues.py) decouples the number of negatives from the batch size, which is what makes
MoCo work with the small batches of one device. Both views serve as query once (the symmetric loss).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.ground.distributed import gather, shuffled
from pretrain.ground.heads import ProjectionHead
from pretrain.methods.base import Method
from pretrain.methods.ema import ema_update, frozen_copy
from pretrain.methods.losses import info_nce
from pretrain.methods.queues import FeatureQueue
from pretrain.methods.recipe import paper


def _old_queue_keys(module, state_dict, prefix, *args) -> None:
    """Checkpoints written before the queue was a FeatureQueue name its buffers queue and queue_ptr."""
    for old, new in (("queue", "keys.vectors"), ("queue_ptr", "keys.ptr")):
        if prefix + old in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)


class MoCo(Method):
    name = "moco"
    paper_recipe = paper("sgd", 0.03, 1e-4, "Chen et al. 2020 (MoCo v2)", momentum=0.999, queue_size=65536)

    def __init__(self, backbone: nn.Module, feature_dim: int, temperature: float = 0.2, momentum: float = 0.99,
                 queue_size: int = 4096, proj_hidden_dim: int = 2048, proj_dim: int = 128):
        super().__init__(backbone, feature_dim)
        if queue_size < 1 or not 0 <= momentum < 1:
            raise ValueError(f"queue_size must be >= 1 and momentum in [0, 1) (got {queue_size}, {momentum})")
        self.projector = ProjectionHead(feature_dim, proj_hidden_dim, proj_dim, layers=2)
        self.key_backbone = frozen_copy(backbone)
        self.key_projector = frozen_copy(self.projector)
        self.temperature, self.momentum = temperature, momentum
        self.keys = FeatureQueue(queue_size, proj_dim)
        self.register_load_state_dict_pre_hook(_old_queue_keys)

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        x = torch.cat(views[:2])
        q1, q2 = self.projector(self.backbone(x)).chunk(2)
        with torch.no_grad():
            # under torchrun the key encoder sees a shuffle of the global batch (MoCo's shuffled BN)
            keys = shuffled(lambda v: self.key_projector(self.key_backbone(v)), x)
            k1, k2 = F.normalize(keys.float(), dim=1).chunk(2)
        queue = self.keys.vectors
        loss = (info_nce(q1, k2, queue, self.temperature) + info_nce(q2, k1, queue, self.temperature)) / 2
        if self.training:  # keys from every process, so the queue is the same everywhere
            self.keys.enqueue(torch.cat([gather(k1), gather(k2)]))
        return loss, {}

    def after_step(self, step: int, total_steps: int) -> None:
        ema_update(self.key_backbone, self.backbone, self.momentum)
        ema_update(self.key_projector, self.projector, self.momentum)
