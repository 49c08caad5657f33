"""Which actions of a predicted chunk an episode executes (``--action_ensembling``). Numpy only: runs in the workers.

An :class:`EpisodeActionSelector` is created for every episode, so smoothing never carries over from one episode
(or task) to the next, and an episode's actions do not depend on which worker ran it or what ran before.

Modes (the ensembling ones query the policy at every step, ``--num_open_loop_steps 1``):
    none      execute the first ``--num_open_loop_steps`` actions of each chunk open loop
    fork      the SpatialVLA LIBERO fork's smoothing: a weighted average of the first actions of the last
              ``chunk`` queries, weights ``exp(0.8 k)`` (k = 0 for the oldest, so the newest weighs most)
    simpler   SimplerEnv's temporal ensembling: each of the last ``chunk`` chunks contributes its prediction for
              the current step (a chunk of age a its action a), weights ``exp(0.8 k)`` as above
    adaptive  CogACT's adaptive ensembling (SpatialVLA's own evaluations): the same predictions weighted by
              ``exp(0.1 cos(prediction, newest prediction))``
"""

from __future__ import annotations

from collections import deque

import numpy as np

ENSEMBLING_MODES = ("none", "fork", "simpler", "adaptive")
ENSEMBLE_TEMPERATURE = -0.8  # weights exp(-T k), oldest k = 0: the newest prediction weighs most
ADAPTIVE_ALPHA = 0.1


class TemporalEnsembler:
    """One ensembled action per call, from the chunks of the last ``len(chunk)`` calls."""

    def __init__(self, mode: str):
        if mode not in ENSEMBLING_MODES[1:]:
            raise ValueError(f"ensembling mode {mode!r} is unknown; expected one of {ENSEMBLING_MODES[1:]}")
        self.mode = mode
        self.history: deque[np.ndarray] = deque()

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        """The action ``[action_dim]`` to execute now, given this step's chunk ``[chunk, action_dim]``."""
        self.history.append(np.asarray(chunk, dtype=np.float64))
        while len(self.history) > len(chunk):
            self.history.popleft()
        if self.mode == "fork":
            predictions = np.stack([past[0] for past in self.history])  # [n, D], oldest first
        else:
            age = len(self.history) - 1
            predictions = np.stack([past[age - index] for index, past in enumerate(self.history)])
        if self.mode == "adaptive":
            newest = predictions[-1]
            norms = np.linalg.norm(predictions, axis=1) * np.linalg.norm(newest)
            weights = np.exp(ADAPTIVE_ALPHA * (predictions @ newest) / (norms + 1e-7))
        else:
            weights = np.exp(-ENSEMBLE_TEMPERATURE * np.arange(len(predictions)))
        return (weights / weights.sum()) @ predictions


class EpisodeActionSelector:
    """Per-episode state: turns each policy chunk into the actions to queue for execution."""

    def __init__(self, mode: str, num_open_loop_steps: int):
        self.num_open_loop_steps = num_open_loop_steps
        self.ensembler = None if mode == "none" else TemporalEnsembler(mode)

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        """Actions ``[k, action_dim]`` to execute before the next query."""
        if self.ensembler is None:
            return chunk[: self.num_open_loop_steps]
        return self.ensembler(chunk)[None]
