"""Discretises continuous actions into the last ``NUM_ACTION_BINS`` ids of a Llama-style base vocabulary."""

from __future__ import annotations

import numpy as np

from prismatic.vla.constants import NUM_ACTION_BINS


class ActionTokenizer:
    """Uniform binning of normalised actions in [-1, 1] onto the top ``n_bins`` token ids.

    Bin ``d`` (``np.digitize`` result, 1..n_bins) maps to id ``vocab_size - d``; for Llama's 32,000-token
    vocabulary the action ids are 31744..31999 and ``action_token_begin_idx`` is 31743.
    """

    def __init__(self, tokenizer, bins: int = NUM_ACTION_BINS, min_action: float = -1.0, max_action: float = 1.0):
        self.tokenizer = tokenizer
        self.n_bins, self.min_action, self.max_action = bins, min_action, max_action
        self.bins = np.linspace(min_action, max_action, self.n_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0
        self.action_token_begin_idx = int(self.vocab_size - (self.n_bins + 1))

    @property
    def vocab_size(self) -> int:
        """Size of the tokenizer's base vocabulary (added tokens such as ``<PAD>`` excluded)."""
        return int(self.tokenizer.vocab_size)

    def token_ids(self, action: np.ndarray) -> np.ndarray:
        """Normalised actions (any shape) -> action token ids (same shape)."""
        clipped = np.clip(action, self.min_action, self.max_action)
        return self.vocab_size - np.digitize(clipped, self.bins)

    def __call__(self, action: np.ndarray) -> str | list[str]:
        """Normalised actions -> the decoded string of their tokens (a list of strings for a batch)."""
        ids = self.token_ids(action)
        if ids.ndim == 1:
            return self.tokenizer.decode(list(ids))
        return self.tokenizer.batch_decode(ids.tolist())

    def decode_token_ids_to_actions(self, action_token_ids: np.ndarray) -> np.ndarray:
        """Action token ids -> bin-centre actions in [-1, 1] (ids outside the action range clamp to the edge bins)."""
        discretized = self.vocab_size - np.asarray(action_token_ids)
        discretized = np.clip(discretized - 1, a_min=0, a_max=self.bin_centers.shape[0] - 1)
        return self.bin_centers[discretized]
