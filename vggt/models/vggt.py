"""VGGT: the aggregator plus (upstream) camera, depth, point and track heads. Only feature mode is implemented."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vggt.loading import infer_vggt_kwargs, load_vggt_state_dict, read_state_dict
from vggt.models.aggregator import Aggregator

# The one configuration implemented: every prediction head off, aggregator features out (Spatial Forcing's teacher).
FEATURE_ONLY_KWARGS: dict[str, bool] = {
    "enable_camera": False,
    "enable_point": False,
    "enable_depth": False,
    "enable_track": False,
    "feature_only": True,
}
_FEATURE_ONLY_CALL = ", ".join(f"{name}={value}" for name, value in FEATURE_ONLY_KWARGS.items())


class VGGTFeatures(tuple):
    """``(aggregated_tokens_list, patch_start_idx)``, also readable by key like Spatial Forcing's ``predictions``
    dict: ``["features"]``, ``["patch_start_idx"]`` and, in eval mode, ``["images"]`` (the 5-D input)."""

    def __new__(
        cls, features: list[torch.Tensor], patch_start_idx: int, images: torch.Tensor | None = None
    ) -> VGGTFeatures:
        output = super().__new__(cls, (features, patch_start_idx))
        output.images = images
        return output

    @property
    def features(self) -> list[torch.Tensor]:
        return self[0]

    @property
    def patch_start_idx(self) -> int:
        return self[1]

    def keys(self) -> list[str]:
        return ["features", "patch_start_idx"] + (["images"] if self.images is not None else [])

    def __getitem__(self, key):
        if not isinstance(key, str):
            return super().__getitem__(key)
        if key not in self.keys():
            raise KeyError(f"{key!r}; VGGT features have {self.keys()}")
        return getattr(self, key)


class VGGT(nn.Module):
    """Upstream-compatible VGGT. Build it as Spatial Forcing's teacher with
    ``VGGT(enable_camera=False, enable_point=False, enable_depth=False, enable_track=False, feature_only=True)``.

    ``aggregator_kwargs`` (``depth``, ``num_heads``, ``patch_embed``, ...) go to :class:`Aggregator`; upstream
    ``VGGT`` takes only the three sizes and always builds the VGGT-1B aggregator, which stays the default here.
    The heads are not implemented: enabling one, or ``feature_only=False`` (whose output would be the heads'
    predictions), raises ``NotImplementedError``.

    Like upstream, the model sets no precision itself: run it under ``torch.autocast("cuda", dtype=torch.bfloat16)``
    on GPUs (the residual stream and the features stay fp32) and in fp32 on CPUs.
    """

    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        enable_camera: bool = True,
        enable_point: bool = True,
        enable_depth: bool = True,
        enable_track: bool = True,
        feature_only: bool = False,
        **aggregator_kwargs: Any,
    ) -> None:
        super().__init__()
        head_flags = {
            "enable_camera": enable_camera,
            "enable_point": enable_point,
            "enable_depth": enable_depth,
            "enable_track": enable_track,
        }
        enabled = [f"{flag}=True" for flag, on in head_flags.items() if on]
        if enabled:
            raise NotImplementedError(
                f"VGGT prediction heads are not implemented (got {', '.join(enabled)}). Only aggregator features "
                f"are available: build VGGT({_FEATURE_ONLY_CALL})."
            )
        if not feature_only:
            raise NotImplementedError(
                "VGGT(feature_only=False) returns head predictions, and no head is implemented; "
                f"build VGGT({_FEATURE_ONLY_CALL}) for the aggregator features."
            )
        self.aggregator = Aggregator(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, **aggregator_kwargs)
        self.feature_only = feature_only
        self.embed_dim = embed_dim
        self.patch_size = patch_size

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> VGGT:
        """Builds the model a checkpoint describes (sizes inferred from its tensor shapes) and loads it strictly.

        Defaults to feature mode with every head off; ``kwargs`` override inferred or default arguments. Weights are
        assigned without a random-init copy (the model is built on the meta device). Returns the model in eval mode.
        """
        state_dict = read_state_dict(path)
        config = {**FEATURE_ONLY_KWARGS, **infer_vggt_kwargs(state_dict, source=str(path)), **kwargs}
        with torch.device("meta"):
            model = cls(**config)
        load_vggt_state_dict(model, state_dict, source=str(path))
        return model.eval()

    def forward(
        self,
        images: torch.Tensor,
        query_points: torch.Tensor | None = None,
        output_layers: Sequence[int] | None = None,
    ) -> VGGTFeatures:
        """``images`` [S, 3, H, W] or [B, S, 3, H, W] RGB in [0, 1].

        Returns :class:`VGGTFeatures` ``(aggregated_tokens_list, patch_start_idx)`` with the tokens [B, S, P, 2C] of
        ``output_layers`` (all layers when ``None``, as upstream; Spatial Forcing needs only ``[-1]``).
        """
        if query_points is not None:
            raise NotImplementedError("query_points are for the track head, which is not implemented")
        if images.ndim == 4:
            images = images.unsqueeze(0)  # [1, S, 3, H, W]
        aggregated_tokens_list, patch_start_idx = self.aggregator(images, output_layers=output_layers)
        return VGGTFeatures(aggregated_tokens_list, patch_start_idx, None if self.training else images)
