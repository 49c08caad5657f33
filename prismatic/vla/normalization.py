"""Action and proprio (un)normalisation: the one definition used by training data, evaluation and serving.

Upstream's bounds normalisation maps ``[low, high]`` to ``[-1, 1]``: ``clip(2 (x - low) / (high - low + 1e-8) - 1,
-1, 1)`` on the dims the statistics' ``mask`` selects (all dims without a mask); BOUNDS_Q99 takes ``low, high =
q01, q99``, BOUNDS ``min, max``. Upstream's two call sites differ, and both are kept: the training pipeline sets
dims with ``min == max`` to 0 (``zero_constant_dims``) and passes unmasked dims through unclipped; evaluation's
proprio normalisation has no zeroing and clips every dim, unmasked ones included (``clip_unmasked``).
Un-normalisation is ``0.5 (a + 1) (high - low + 1e-8) + low`` on the masked dims.

The functions take an array namespace ``xp`` (numpy by default, ``tf.experimental.numpy`` inside the tf.data
pipeline), so TensorFlow and numpy run the same formula.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from prismatic.vla.constants import NormalizationType

NORMALIZATION_EPS = 1e-8  # upstream's denominator guard: (q99 - q01 + 1e-8)
BOUND_KEYS = {NormalizationType.BOUNDS: ("min", "max"), NormalizationType.BOUNDS_Q99: ("q01", "q99")}


@dataclass(frozen=True)
class NormalizationBounds:
    """The per-dimension constants of one normalisation: bounds, mask, and dims without spread."""

    low: np.ndarray  # float32 [dim]
    high: np.ndarray
    mask: np.ndarray  # bool [dim]: dims that are normalised (others pass through)
    constant: np.ndarray  # bool [dim]: min == max

    @classmethod
    def from_statistics(
        cls, stats: Mapping[str, Any], normalization_type: NormalizationType | str
    ) -> NormalizationBounds:
        normalization_type = NormalizationType(normalization_type)
        if normalization_type not in BOUND_KEYS:
            raise ValueError(
                f"Normalization type {normalization_type.value!r} is not supported; expected one of "
                f"{[kind.value for kind in BOUND_KEYS]}."
            )
        missing = [key for key in BOUND_KEYS[normalization_type] if key not in stats]
        if missing:
            raise ValueError(f"Statistics lack {missing} (needed for {normalization_type.value}).")
        low, high = (np.asarray(stats[key], dtype=np.float64) for key in BOUND_KEYS[normalization_type])
        mask = np.asarray(stats.get("mask", np.ones_like(low, dtype=bool)), dtype=bool)
        if "min" in stats and "max" in stats:
            constant = np.asarray(stats["min"]) == np.asarray(stats["max"])
        else:
            constant = np.zeros_like(mask)
        return cls(low, high, mask, constant)


def normalize(
    values: Any,
    stats: Mapping[str, Any],
    normalization_type: NormalizationType | str,
    *,
    zero_constant_dims: bool = False,
    clip_unmasked: bool = False,
    xp: Any = np,
) -> Any:
    """Map ``values`` ``[..., dim]`` to [-1, 1] (see module docstring for the two upstream variants)."""
    bounds = NormalizationBounds.from_statistics(stats, normalization_type)
    low, high = (_constant(bound, values, xp) for bound in (bounds.low, bounds.high))
    scaled = 2.0 * (values - low) / (high - low + NORMALIZATION_EPS) - 1.0
    if clip_unmasked:
        normalized = xp.clip(xp.where(bounds.mask, scaled, values), -1.0, 1.0)
    else:
        normalized = xp.where(bounds.mask, xp.clip(scaled, -1.0, 1.0), values)
    if zero_constant_dims:
        normalized = xp.where(bounds.constant, xp.zeros_like(normalized), normalized)
    return normalized


def unnormalize(
    normalized: Any, stats: Mapping[str, Any], normalization_type: NormalizationType | str, *, xp: Any = np
) -> Any:
    """Inverse of :func:`normalize` on the masked dims (values clipped in normalisation are not restored)."""
    bounds = NormalizationBounds.from_statistics(stats, normalization_type)
    low, high = (_constant(bound, normalized, xp) for bound in (bounds.low, bounds.high))
    return xp.where(bounds.mask, 0.5 * (normalized + 1.0) * (high - low + NORMALIZATION_EPS) + low, normalized)


def _constant(bound: np.ndarray, like: Any, xp: Any) -> Any:
    """``bound`` as an array of ``xp``: float64 for numpy, the dtype of ``like`` (float32 tensors) otherwise."""
    return bound if xp is np else xp.asarray(bound, dtype=like.dtype)
