"""Alignment losses between projected VLA tokens and teacher targets, with an optional per-token mask."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def _cosine_distance(projected: Tensor, targets: Tensor) -> Tensor:
    """1 - cosine similarity per token: ``[B, N, C]`` x2 -> ``[B, N]``."""
    return 1.0 - (F.normalize(projected, dim=-1) * F.normalize(targets, dim=-1)).sum(dim=-1)


def _smooth_l1_distance(projected: Tensor, targets: Tensor) -> Tensor:
    """Huber loss (beta 1) on the raw features, averaged over channels: ``[B, N, C]`` x2 -> ``[B, N]``."""
    return F.smooth_l1_loss(projected, targets, reduction="none", beta=1.0).mean(dim=-1)


# "cosine" (upstream): direction only, scale-free. "smooth_l1": also matches the teacher's feature magnitudes,
# linear (not quadratic) in large errors so outlier channels of the VGGT residual stream do not dominate.
PER_TOKEN_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cosine": _cosine_distance,
    "smooth_l1": _smooth_l1_distance,
}
ALIGN_LOSS_TYPES = tuple(PER_TOKEN_LOSSES)


def check_align_loss_type(align_loss_type: str) -> None:
    """Raise a ValueError naming ``align_loss_type`` unless it is one of ``ALIGN_LOSS_TYPES``."""
    if align_loss_type not in PER_TOKEN_LOSSES:
        raise ValueError(f"Unknown align_loss_type {align_loss_type!r}: expected one of {list(ALIGN_LOSS_TYPES)}.")


def align_loss(projected: Tensor, targets: Tensor, mask: Tensor | None = None, loss_type: str = "cosine") -> Tensor:
    """Scalar alignment loss of ``projected`` and ``targets`` (both ``[B, N, C]``), computed in float32.

    Per sample, the per-token loss is averaged over its valid tokens; the batch loss is the mean over samples.
    Without a mask every token is valid, which for ``"cosine"`` is upstream's ``1 - mean cosine`` per sample,
    then averaged over the batch. ``mask`` (``[B, N]`` bool, True = valid) removes tokens of absent cameras or
    padding: masked tokens have no effect on the value or the gradient, each sample with at least one valid token
    weighs the same regardless of its count, and samples without valid tokens are left out (the loss is 0 when
    no token in the batch is valid).
    """
    check_align_loss_type(loss_type)
    if projected.shape != targets.shape or projected.dim() != 3:
        raise ValueError(
            f"projected and targets must both be [B, N, C]; got {tuple(projected.shape)} and {tuple(targets.shape)}."
        )
    if mask is None:
        mask = torch.ones(projected.shape[:2], dtype=torch.bool, device=projected.device)
    elif mask.shape != projected.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a bool tensor of shape {tuple(projected.shape[:2])} (B, N); "
            f"got {mask.dtype} {tuple(mask.shape)}."
        )
    # Float32 inputs keep the loss in float32 under autocast: it has no matmul-like op.
    # Masked targets are zeroed so that non-finite values (e.g. of an absent camera) cannot reach the gradient.
    targets = torch.where(mask[..., None], targets.float(), 0.0)
    per_token = PER_TOKEN_LOSSES[loss_type](projected.float(), targets)  # [B, N]
    per_token = torch.where(mask, per_token, torch.zeros_like(per_token))
    valid_per_sample = mask.sum(dim=-1)  # [B]
    per_sample = per_token.sum(dim=-1) / valid_per_sample.clamp(min=1)  # [B]
    has_valid = valid_per_sample > 0
    return (per_sample * has_valid).sum() / has_valid.sum().clamp(min=1)
