"""Learning-rate schedules: upstream's MultiStepLR (x0.1 after ``num_steps_before_decay``) or cosine, each with
an optional linear warm-up from 10% to 100% of the learning rate."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from prismatic.training.config import SCHEDULERS, FinetuneConfig

WARMUP_START_FACTOR = 0.1
DECAY_FACTOR = 0.1


def lr_factor(step: int, cfg: FinetuneConfig) -> float:
    """Multiplier of ``cfg.learning_rate`` at optimizer step ``step``."""
    if step < cfg.lr_warmup_steps:
        return WARMUP_START_FACTOR + (1.0 - WARMUP_START_FACTOR) * step / cfg.lr_warmup_steps
    if cfg.scheduler == "MultiStepLR":
        return DECAY_FACTOR if step >= cfg.num_steps_before_decay else 1.0
    progress = (step - cfg.lr_warmup_steps) / max(1, cfg.max_steps - cfg.lr_warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: Optimizer, cfg: FinetuneConfig) -> LambdaLR:
    if cfg.scheduler not in SCHEDULERS:
        raise ValueError(f"--scheduler {cfg.scheduler!r} is not supported; expected one of {SCHEDULERS}.")
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
