"""Learning-rate schedules as upstream defines them, with upstream's warm-up bug fixed.

Optimizer update ``k`` (0-based; the checkpoint of step ``k`` holds ``k + 1`` updates) uses
``learning_rate * warmup(k) * decay(k)``:

- warm-up (upstream's ``lr_warmup_steps`` = W > 0): ``0.1 + 0.9 * min((k + 1) / W, 1)``;
- ``MultiStepLR`` (OFT/SF default): ``0.1`` from update ``num_steps_before_decay`` on, else 1;
- ``CosineAnnealingLR`` (SF): torch's schedule with ``T_max = max_steps`` and ``eta_min = learning_rate * 1e-3``,
  i.e. ``1e-3 + (1 - 1e-3) * (1 + cos(pi * k / max_steps)) / 2`` (periodic beyond ``max_steps``, as torch's).

Upstream's warm-up code sets the learning rate to ``learning_rate * warmup(k)`` on every step, also after the
warm-up, which overwrites the decay (with W > 0 upstream never decays). Here the factors multiply, so the decay
happens (docs/reference/upstream-differences.md).
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from prismatic.training.config import SCHEDULERS, FinetuneConfig

WARMUP_START_FACTOR = 0.1
DECAY_FACTOR = 0.1  # MultiStepLR's gamma
COSINE_FLOOR_FACTOR = 1e-3  # CosineAnnealingLR's eta_min = learning_rate * 1e-3


def warmup_factor(update: int, warmup_steps: int) -> float:
    """Upstream's linear warm-up ``0.1 + 0.9 * min((k + 1) / W, 1)`` (1 without warm-up)."""
    if warmup_steps <= 0:
        return 1.0
    return WARMUP_START_FACTOR + (1.0 - WARMUP_START_FACTOR) * min((update + 1) / warmup_steps, 1.0)


def decay_factor(update: int, cfg: FinetuneConfig) -> float:
    """The scheduler's multiplier at update ``update`` (MultiStepLR or CosineAnnealingLR)."""
    if cfg.scheduler == "MultiStepLR":
        return DECAY_FACTOR if update >= cfg.num_steps_before_decay else 1.0
    cosine = (1.0 + math.cos(math.pi * update / max(1, cfg.max_steps))) / 2
    return COSINE_FLOOR_FACTOR + (1.0 - COSINE_FLOOR_FACTOR) * cosine


def lr_factor(update: int, cfg: FinetuneConfig) -> float:
    """Multiplier of ``cfg.learning_rate`` for optimizer update ``update`` (0-based)."""
    return warmup_factor(update, cfg.lr_warmup_steps) * decay_factor(update, cfg)


def build_scheduler(optimizer: Optimizer, cfg: FinetuneConfig) -> LambdaLR:
    """A ``LambdaLR`` stepped once per optimizer update: after ``k`` steps it holds the rate of update ``k``."""
    if cfg.scheduler not in SCHEDULERS:
        raise ValueError(f"--scheduler {cfg.scheduler!r} is not supported; expected one of {SCHEDULERS}.")
    return LambdaLR(optimizer, lambda update: lr_factor(update, cfg))
