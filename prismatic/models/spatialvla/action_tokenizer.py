"""SpatialVLA's spatial action tokens -> 7-D actions (the released adaptive grids; no re-fitting).

Each action step is three tokens, offsets from ``<ACTION00000>``:
    translation   [0, T)         index = theta * (P R) + phi * R + r      (spherical grid, T = Th P R)
    rotation      [T, T + O)     index = roll * (Pi Y) + pitch * Y + yaw  (O = Ro Pi Y)
    gripper       T + O (close, 0.0), T + O + 1 (1.0)
The bin edges come from ``bin_policy`` in ``processor_config.json`` (Gaussian-quantile grids frozen at training); a
token decodes to the midpoint of its bin. Actions are then un-normalised with the dataset's q01/q99 statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

TRANSLATION_BINS = ("theta_bins", "phi_bins", "r_bins")
ROTATION_BINS = ("roll_bins", "pitch_bins", "yaw_bins")
TOKENS_PER_STEP = 3


def _midpoints(edges: list[float]) -> np.ndarray:
    edges_array = np.asarray(edges, dtype=np.float64)
    return (edges_array[:-1] + edges_array[1:]) / 2


def _split_index(index: np.ndarray, sizes: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-major (a, b, c) of a flat index over a grid of ``sizes``."""
    return index // (sizes[1] * sizes[2]), (index // sizes[2]) % sizes[1], index % sizes[2]


class SpatialActionTokenizer:
    """Decodes action-token ids ``[steps, 3]`` to normalised actions ``[steps, 7]`` (xyz, roll/pitch/yaw, grip)."""

    def __init__(self, bin_policy: Mapping[str, Any], action_token_begin_idx: int):
        self.translation_centers = [_midpoints(bin_policy["translation"][name]) for name in TRANSLATION_BINS]
        self.rotation_centers = [_midpoints(bin_policy["rotation"][name]) for name in ROTATION_BINS]
        self.translation_sizes = tuple(len(centers) for centers in self.translation_centers)
        self.rotation_sizes = tuple(len(centers) for centers in self.rotation_centers)
        self.begin = action_token_begin_idx
        self.rotation_begin = self.begin + int(np.prod(self.translation_sizes))
        self.gripper_begin = self.rotation_begin + int(np.prod(self.rotation_sizes))
        self.vocab_size = self.gripper_begin + 2 - self.begin

    def decode(self, action_ids: np.ndarray) -> np.ndarray:
        """Normalised actions ``[steps, 7]`` (float64). An id outside its slot's sub-vocabulary is clipped into it,
        so a wrong-kind id decodes to an edge bin (as the official decoder)."""
        action_ids = np.asarray(action_ids, dtype=np.int64).reshape(-1, TOKENS_PER_STEP)
        translation = np.clip(action_ids[:, 0], self.begin, self.rotation_begin - 1) - self.begin
        rotation = np.clip(action_ids[:, 1], self.rotation_begin, self.gripper_begin - 1) - self.rotation_begin
        gripper = np.clip(action_ids[:, 2], self.gripper_begin, self.gripper_begin + 1) - self.gripper_begin

        theta, phi, radius = (
            centers[index]
            for centers, index in zip(
                self.translation_centers, _split_index(translation, self.translation_sizes), strict=True
            )
        )
        xyz = np.stack(
            [radius * np.sin(theta) * np.cos(phi), radius * np.sin(theta) * np.sin(phi), radius * np.cos(theta)],
            axis=-1,
        )
        rpy = np.stack(
            [
                centers[index]
                for centers, index in zip(
                    self.rotation_centers, _split_index(rotation, self.rotation_sizes), strict=True
                )
            ],
            axis=-1,
        )
        grip = (gripper != 0).astype(np.float64)[:, None]
        return np.concatenate([np.clip(xyz, -1.0, 1.0), rpy, grip], axis=-1)


def unnormalize_actions(actions: np.ndarray, action_stats: Mapping[str, Any]) -> np.ndarray:
    """``[-1, 1]`` -> dataset units where ``mask`` is true: ``0.5 (a + 1) (q99 - q01) + q01``; others unchanged."""
    q01 = np.asarray(action_stats["q01"], dtype=np.float64)
    q99 = np.asarray(action_stats["q99"], dtype=np.float64)
    mask = np.asarray(action_stats.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool)
    return np.where(mask, 0.5 * (actions + 1) * (q99 - q01) + q01, actions)
