"""Seeds derived from the run's seed, for random draws that must not depend on the draws before them."""

from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """A well-mixed 31-bit seed from integers (base seed, rank, dataset or batch index, purpose)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] >> 1)
