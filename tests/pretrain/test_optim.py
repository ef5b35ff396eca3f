import copy

import pytest
import torch
from torch import nn

from pretrain.train.optim import LARS, build_optimizer, param_groups, scaled_lr, warmup_cosine


def test_warmup_then_cosine() -> None:
    lrs = [warmup_cosine(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[55] == pytest.approx(0.5, abs=0.02) and lrs[-1] < 1e-3


def test_linear_scaling_rule() -> None:
    assert scaled_lr(0.3, 512) == pytest.approx(0.6)


def test_biases_and_norms_get_no_weight_decay() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    decay, no_decay = param_groups(model, 1e-4)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0 and not no_decay["lars"]


def test_lars_step_matches_the_formula() -> None:
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w], "weight_decay": 0.1, "lars": True},
                {"params": [b], "weight_decay": 0.0, "lars": False}], lr=0.5, momentum=0.9, eta=0.01)
    w.grad, b.grad = torch.tensor([0.6, 0.8]), torch.tensor([2.0])
    opt.step()
    g = torch.tensor([0.6, 0.8]) + 0.1 * torch.tensor([3.0, 4.0])
    trust = 0.01 * 5.0 / g.norm()
    assert torch.allclose(w.detach(), torch.tensor([3.0, 4.0]) - 0.5 * trust * g)
    assert torch.allclose(b.detach(), torch.tensor([0.0]))  # plain SGD for the excluded group


@pytest.mark.parametrize("name", ["sgd", "adamw", "lars"])
def test_every_optimizer_reduces_a_simple_loss(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = torch.randn(64, 3), torch.randn(64, 1)
    opt = build_optimizer(model, name, lr=0.05, weight_decay=0.0, momentum=0.9)
    first = None
    for _ in range(50):
        loss = nn.functional.mse_loss(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_lr_scales_give_a_part_its_own_groups() -> None:
    model = nn.Module()
    model.backbone, model.predictor = nn.Linear(4, 8), nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
    groups = param_groups(model, 1e-4, {"predictor": 10.0})
    by_scale = {(g["lr_scale"], g["lars"]): {id(p) for p in g["params"]} for g in groups}
    assert by_scale == {(1.0, True): {id(model.backbone.weight)}, (1.0, False): {id(model.backbone.bias)},
                        (10.0, True): {id(model.predictor[0].weight)},
                        (10.0, False): {id(p) for p in (model.predictor[0].bias, *model.predictor[1].parameters())}}
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0, 1e-4, 0.0]


def test_the_schedule_multiplies_a_groups_lr_scale(image_folder, tmp_path) -> None:
    from shared_helpers import make_tiny_config

    from pretrain.train.trainer import Trainer

    cfg = make_tiny_config(image_folder, tmp_path / "run", method="byol", epochs=1,
                           method_args={"predictor_lr": 10.0, "proj_hidden_dim": 16, "proj_dim": 8})
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    predictor = {id(p) for p in trainer.model.predictor.parameters()}
    rates = {"predictor" if id(g["params"][0]) in predictor else "rest": g["lr"]
             for g in trainer.optimizer.param_groups}
    assert rates["predictor"] == pytest.approx(10 * rates["rest"]) and rates["rest"] > 0


def _loop_lars(params, grads, states, lr, momentum, weight_decay, eta, lars):
    """LARS one tensor at a time, as the formula reads (the reference of the foreach step)."""
    out = []
    for p, g, state in zip(params, grads, states):
        g = g + weight_decay * p
        if lars:
            w_norm, g_norm = p.norm(), g.norm()
            g = g * (eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0)
        state["buf"] = g.clone() if "buf" not in state else state["buf"] * momentum + g
        out.append(p - lr * state["buf"])
    return out


@pytest.mark.parametrize("lars", [True, False])
def test_foreach_lars_equals_the_per_tensor_loop_over_steps(lars: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (7,), (2, 2, 3)]
    params = [nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    params.append(nn.Parameter(torch.zeros(5)))  # a zero weight: trust ratio 1
    opt = LARS([{"params": params, "weight_decay": 0.01, "lars": lars}], lr=0.3, momentum=0.9, eta=0.02)
    ref = [p.detach().clone() for p in params]
    states: list[dict] = [{} for _ in params]
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        ref = _loop_lars(ref, grads, states, 0.3, 0.9, 0.01, 0.02, lars)
        for p, r in zip(params, ref):
            torch.testing.assert_close(p.detach(), r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_sgd_and_adamw_run_fused_and_match_the_plain_loop(name: str) -> None:
    torch.manual_seed(0)
    fused_model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.LayerNorm(2))
    # (no bias before a norm: its gradient is rounding noise, which Adam amplifies to whole steps)
    plain_model = copy.deepcopy(fused_model)
    fused = build_optimizer(fused_model, name, 0.1, 1e-2, 0.9)
    assert all(g["fused"] if name == "adamw" else g["foreach"] for g in fused.param_groups)
    plain_groups = param_groups(plain_model, 1e-2)
    for g in plain_groups:
        g.pop("lars")
    plain = (torch.optim.SGD(plain_groups, lr=0.1, momentum=0.9, foreach=False) if name == "sgd"
             else torch.optim.AdamW(plain_groups, lr=0.1, foreach=False))
    x = torch.randn(16, 4)
    for _ in range(3):
        for model, opt in ((fused_model, fused), (plain_model, plain)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)  # float rounding of another kernel


def test_sgd_steps_when_a_parameter_gets_its_first_gradient_late() -> None:
    """SwAV freezes its prototypes at the start: their first gradient comes steps after the others' (torch's
    fused SGD fails on that); the update still equals the plain loop's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    plain_model = copy.deepcopy(model)
    opt = build_optimizer(model, "sgd", 0.1, 1e-2, 0.9)
    groups = param_groups(plain_model, 1e-2)
    for g in groups:
        g.pop("lars")
    plain = torch.optim.SGD(groups, lr=0.1, momentum=0.9, foreach=False)
    x = torch.randn(16, 4)
    for step in range(3):
        for m, o in ((model, opt), (plain_model, plain)):
            m[1].weight.requires_grad_(step > 0)  # frozen on the first step
            o.zero_grad(set_to_none=True)
            m(x).square().mean().backward()
            o.step()
    for a, b in zip(model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
