"""The frozen 3D teacher: VGGT's aggregator features of one layer, computed without gradients."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn


class TeacherFeatures(NamedTuple):
    """What ``SpatialForcingAligner.forward`` needs from the teacher, in its argument order."""

    features: Tensor  # [B, S, P, 2C] float32, P = patch_start_idx special tokens + h*w patches per camera
    patch_start_idx: int
    image_hw: tuple[int, int]  # size of the images the teacher saw


class FrozenTeacher(nn.Module):
    """Base of every teacher: it stays in eval mode whatever ``train`` says (nothing in it is trained).

    A teacher is called as ``teacher(pixel_values, camera_points=None) -> TeacherFeatures``; ``camera_points``
    ``[B, S, H, W, 3]`` are the camera-frame point maps of the images (``teachers.GeometryTeacher``), ignored by the
    teachers that read pixels only.
    """

    def train(self, mode: bool = True) -> FrozenTeacher:
        """The teacher stays in eval mode whatever ``mode`` says."""
        return super().train(False)


class VGGTTeacher(FrozenTeacher):
    """Wraps a VGGT model (or its aggregator) as a frozen feature extractor.

    ``model`` is anything with VGGT's aggregator interface ``aggregator(images [B, S, 3, H, W], output_layers=[i])
    -> (list_of_layers, patch_start_idx)``, or a model holding one as ``.aggregator`` (``VGGT(feature_only=True)``).
    ``prepare_images`` maps the VLA's pixel values to teacher images ``[B, S, 3, H, W]`` in [0, 1]; None when the
    input already is that. The wrapped model is kept frozen: ``requires_grad=False``, always in eval mode (VGGT's
    training mode switches on gradient checkpointing), run under ``torch.no_grad`` and, on CUDA, bf16 autocast as
    upstream. ``weights_dtype`` is float32 as upstream; bfloat16 halves the weights' memory (autocast computes the
    matmuls in bf16 either way; norms, LayerScale and the residual stream then see bf16-rounded parameters).
    """

    def __init__(
        self,
        model: nn.Module | Callable[..., tuple[list[Tensor], int]],
        prepare_images: Callable[[Tensor], Tensor] | None = None,
        layer: int = -1,
        weights_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        aggregator = getattr(model, "aggregator", model)
        if isinstance(aggregator, nn.Module):
            aggregator.to(weights_dtype).requires_grad_(False)
        self.aggregator = aggregator
        self.weights_dtype = weights_dtype
        self.prepare_images = prepare_images
        self.layer = layer
        self.train(False)

    @torch.no_grad()
    def forward(self, pixel_values: Tensor, camera_points: Tensor | None = None) -> TeacherFeatures:
        """VLA pixel values (or teacher images) -> features of layer ``self.layer`` ``[B, S, P, 2C]`` and metadata.

        ``camera_points`` are not read (VGGT infers the geometry from the images)."""
        images = pixel_values if self.prepare_images is None else self.prepare_images(pixel_values)
        if images.dim() != 5 or images.shape[2] != 3:
            source = "the input" if self.prepare_images is None else "prepare_images"
            raise ValueError(f"Teacher images must be [B, S, 3, H, W]; {source} gave {tuple(images.shape)}.")
        # bf16 weights need autocast on any device (fp32 images meet bf16 convolutions); fp32 weights use it on CUDA.
        use_autocast = images.device.type == "cuda" or self.weights_dtype == torch.bfloat16
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=use_autocast):
            layers, patch_start_idx = self.aggregator(images, output_layers=[self.layer])
        if len(layers) != 1:
            raise ValueError(
                f"The VGGT aggregator returned {len(layers)} layers for output_layers=[{self.layer}]; expected 1."
            )
        return TeacherFeatures(layers[0].float(), int(patch_start_idx), (images.shape[-2], images.shape[-1]))
