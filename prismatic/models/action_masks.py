"""Where the action tokens of a training sequence sit, found from its labels (upstream's ``train_utils``).

Labels are ``IGNORE_INDEX`` everywhere except the action tokens of the chunk and the stop token. Action tokens
are the ids above ``action_token_begin_idx`` (31743 for Llama-2: the top 256 ids of the 32,000-token vocabulary).
The first ``action_dim`` of them form the current action, the rest the future actions of the chunk.
"""

from __future__ import annotations

import torch

from prismatic.vla.constants import IGNORE_INDEX, NUM_ACTION_BINS

LLAMA2_BASE_VOCAB_SIZE = 32_000
ACTION_TOKEN_BEGIN_IDX = LLAMA2_BASE_VOCAB_SIZE - (NUM_ACTION_BINS + 1)


def _labelled_token_count(labels: torch.Tensor) -> torch.Tensor:
    """[B, L] -> [B, L]: how many labelled (non-ignored) tokens occur up to and including each position."""
    return torch.cumsum(labels != IGNORE_INDEX, dim=1)


def get_actions_mask(labels: torch.Tensor, action_token_begin_idx: int = ACTION_TOKEN_BEGIN_IDX) -> torch.Tensor:
    """[B, L] bool: every action token of the chunk (== current | next)."""
    return labels > action_token_begin_idx


def get_current_action_mask(
    labels: torch.Tensor, action_dim: int, action_token_begin_idx: int = ACTION_TOKEN_BEGIN_IDX
) -> torch.Tensor:
    """[B, L] bool: the action tokens among the first ``action_dim`` labelled tokens (chunk step 0)."""
    count = _labelled_token_count(labels)
    return get_actions_mask(labels, action_token_begin_idx) & (count >= 1) & (count <= action_dim)


def get_next_actions_mask(
    labels: torch.Tensor, action_dim: int, action_token_begin_idx: int = ACTION_TOKEN_BEGIN_IDX
) -> torch.Tensor:
    """[B, L] bool: the action tokens after the first ``action_dim`` labelled tokens (chunk steps 1..)."""
    return get_actions_mask(labels, action_token_begin_idx) & (_labelled_token_count(labels) > action_dim)


def gather_action_hidden_states(
    hidden_states: torch.Tensor,
    labels: torch.Tensor,
    num_prefix_tokens: int,
    action_token_begin_idx: int = ACTION_TOKEN_BEGIN_IDX,
) -> torch.Tensor:
    """Hidden states that predict the action tokens: the position just before each one.

    ``hidden_states`` [B, 1 + num_prefix_tokens + L - 1, D] is an LLM output over the multimodal sequence (BOS, the
    ``num_prefix_tokens`` inserted tokens, i.e. ``output.projector_features.shape[1]``, then tokens 1.. of
    ``labels`` [B, L]). Returns [B, num_action_tokens, D]: for the first action token that is the "▁" slot after
    the prompt, then action tokens 0..n-2, exactly as OpenVLA-OFT's training and ``predict_action`` select them.
    """
    batch_size, _, hidden_dim = hidden_states.shape
    if hidden_states.shape[1] != num_prefix_tokens + labels.shape[1]:
        raise ValueError(
            f"hidden_states has {hidden_states.shape[1]} positions but labels of length {labels.shape[1]} with "
            f"{num_prefix_tokens} prefix tokens make a sequence of {num_prefix_tokens + labels.shape[1]}."
        )
    # Position k of `text_hidden_states` is token k of the text; it predicts token k + 1, hence labels[:, 1:].
    text_hidden_states = hidden_states[:, num_prefix_tokens:-1]  # [B, L - 1, D]
    predicts_action = get_actions_mask(labels[:, 1:], action_token_begin_idx)  # [B, L - 1]
    counts = predicts_action.sum(dim=1)
    if not torch.all(counts == counts[0]):
        raise ValueError(f"Every sample needs the same number of action tokens; got {counts.tolist()}.")
    return text_hidden_states[predicts_action].reshape(batch_size, -1, hidden_dim)
