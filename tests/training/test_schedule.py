"""The learning-rate schedule against upstream's: torch's MultiStepLR / CosineAnnealingLR as finetune(_align).py
builds them, stepped once per optimizer update, with upstream's warm-up assignment before each update."""

from __future__ import annotations

import pytest
import torch

from prismatic.training.config import FinetuneConfig
from prismatic.training.schedule import build_scheduler

BASE_LR = 5e-4


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=BASE_LR)


def upstream_learning_rates(cfg: FinetuneConfig, num_updates: int) -> list[float]:
    """The rate each optimizer update uses in upstream's loop (grad_accumulation_steps = 1)."""
    optimizer = _optimizer()
    if cfg.scheduler == "MultiStepLR":
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[cfg.num_steps_before_decay], gamma=0.1)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.max_steps, eta_min=BASE_LR * 1e-3)
    rates = []
    for update in range(num_updates):
        if cfg.lr_warmup_steps > 0:  # upstream assigns this on every step, also after the warm-up
            progress = min((update + 1) / cfg.lr_warmup_steps, 1.0)
            for group in optimizer.param_groups:
                group["lr"] = BASE_LR * (0.1 + 0.9 * progress)
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def our_learning_rates(cfg: FinetuneConfig, num_updates: int) -> list[float]:
    optimizer = _optimizer()
    scheduler = build_scheduler(optimizer, cfg)
    rates = []
    for _ in range(num_updates):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize(
    "scheduler, max_steps, decay_at",
    [("MultiStepLR", 40, 25), ("MultiStepLR", 40, 0), ("CosineAnnealingLR", 30, 100_000)],
)
def test_without_warmup_the_schedule_is_upstreams_update_by_update(scheduler, max_steps, decay_at):
    cfg = FinetuneConfig(
        learning_rate=BASE_LR, scheduler=scheduler, max_steps=max_steps, num_steps_before_decay=decay_at
    )
    num_updates = max_steps + 1  # upstream runs updates 0 .. max_steps
    expected, ours = upstream_learning_rates(cfg, num_updates), our_learning_rates(cfg, num_updates)
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-15)
    if scheduler == "CosineAnnealingLR":  # the floor is lr * 1e-3, reached at update max_steps
        assert ours[-1] == pytest.approx(BASE_LR * 1e-3, rel=1e-9)


def test_warmup_ramps_as_upstream_and_the_decay_is_kept_after_it():
    cfg = FinetuneConfig(learning_rate=BASE_LR, lr_warmup_steps=10, num_steps_before_decay=20, max_steps=30)
    expected, ours = upstream_learning_rates(cfg, 31), our_learning_rates(cfg, 31)
    # Warm-up: 0.1 + 0.9 (k + 1) / W, so update 0 already uses 0.19 lr and update W - 1 the full rate.
    assert ours[:20] == pytest.approx(expected[:20], rel=1e-9)
    assert ours[0] == pytest.approx(BASE_LR * 0.19) and ours[9] == pytest.approx(BASE_LR)
    # Upstream's bug: its warm-up assignment resets the rate every step, so the x0.1 decay never happens.
    assert expected[20:] == pytest.approx([BASE_LR] * 11)
    assert ours[20:] == pytest.approx([BASE_LR * 0.1] * 11)


def test_unknown_scheduler_is_named():
    with pytest.raises(ValueError, match="--scheduler 'linear'"):
        build_scheduler(_optimizer(), FinetuneConfig(scheduler="linear"))
