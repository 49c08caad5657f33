"""The policy interface the evaluation runner serves to simulator workers."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from prismatic.vla.observation import Observation


class Policy(Protocol):
    """Maps one observation and its language instruction to an action chunk.

    Implementations must be deterministic per observation: the runner queries them one request at a time from
    several workers, and serial and parallel evaluations must give identical results.
    """

    gripper: str  # the checkpoint's gripper convention ("libero" or "none"; PolicyConfig.embodiment.gripper)

    def predict_chunk(self, observation: Observation, instruction: str) -> np.ndarray:
        """Actions ``[chunk, action_dim]`` in the dataset's frame (gripper in [0, 1], before post-processing)."""
        ...


class NonFiniteActionError(ValueError):
    """A predicted action chunk holds NaN or infinity: it is never sent to a robot nor executed in a simulator."""


def check_finite_actions(chunk: np.ndarray) -> np.ndarray:
    """``chunk`` unchanged, or :class:`NonFiniteActionError` naming the first non-finite entry."""
    chunk = np.asarray(chunk)
    bad = np.argwhere(~np.isfinite(chunk))
    if len(bad):
        position = tuple(int(index) for index in bad[0])
        raise NonFiniteActionError(
            f"the predicted action chunk {list(chunk.shape)} holds {chunk[position]} at {list(position)} "
            f"({len(bad)} non-finite value(s)): refused (check the checkpoint's dataset_statistics.json and weights)"
        )
    return chunk
