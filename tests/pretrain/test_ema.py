import torch
from torch import nn

from pretrain.methods.ema import ema_update, frozen_copy


def test_foreach_ema_equals_the_plain_loop_over_steps_and_copies_buffers() -> None:
    torch.manual_seed(0)
    online = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    target = frozen_copy(online)
    reference = [p.detach().clone() for p in target.parameters()]
    for step, momentum in enumerate((0.9, 0.99, 0.996, 1.0)):
        with torch.no_grad():
            for p in online.parameters():
                p.add_(torch.randn_like(p))
        online.train()(torch.randn(2, 3, 8, 8))  # moves the batch-norm running statistics
        ema_update(target, online, momentum)
        reference = [momentum * r + (1 - momentum) * o.detach() for r, o in zip(reference, online.parameters())]
        for t, r in zip(target.parameters(), reference):
            torch.testing.assert_close(t, r, rtol=1e-6, atol=1e-6, msg=f"step {step}")
        for t, o in zip(target.buffers(), online.buffers()):
            assert torch.equal(t, o)
    assert target[1].num_batches_tracked.item() == 4 and not any(p.requires_grad for p in target.parameters())
