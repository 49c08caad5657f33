"""The attention pattern of OpenVLA-OFT's parallel decoding, as an explicit 4D mask for a stock transformers LLM.

OpenVLA-OFT's checkpoints were trained with a patched transformers whose SDPA path attends bidirectionally among
all non-pad tokens (every query row equals the last row of the causal + padding mask, i.e. pads are masked as keys
only). We build exactly that mask and hand it to the LLM, which uses a 4D mask as given. Attention kernels that
ignore 4D masks (FlashAttention-2 and -3, flex attention as wired in transformers) would silently fall back to
causal attention and break the checkpoints, so they are refused.
"""

from __future__ import annotations

import torch

SUPPORTED_ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def check_attn_implementation(attn_implementation: str | None) -> None:
    """Raise unless ``attn_implementation`` can apply the bidirectional 4D mask (``None`` means the default, SDPA)."""
    if attn_implementation is not None and attn_implementation not in SUPPORTED_ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation={attn_implementation!r} cannot honour OpenVLA-OFT's bidirectional attention mask "
            f"(it would silently run causal attention and break the released checkpoints); use one of "
            f"{list(SUPPORTED_ATTN_IMPLEMENTATIONS)} (default 'sdpa')."
        )


def bidirectional_attention_mask(
    key_padding_mask: torch.Tensor, dtype: torch.dtype, attn_implementation: str | None
) -> torch.Tensor:
    """[B, L] (True/1 = real token) -> [B, 1, L, L] mask where every query may attend to every real key.

    SDPA gets a boolean mask (True = attend). Eager attention adds its mask to the logits, so it gets an additive
    float mask in ``dtype`` (0 for real keys, the dtype's minimum for pads).
    """
    check_attn_implementation(attn_implementation)
    batch_size, length = key_padding_mask.shape
    allowed = key_padding_mask.bool()[:, None, None, :].expand(batch_size, 1, length, length)  # [B, 1, L, L]
    if attn_implementation == "eager":
        blocked = torch.full(allowed.shape, torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
        return blocked.masked_fill(allowed, 0.0)
    return allowed
