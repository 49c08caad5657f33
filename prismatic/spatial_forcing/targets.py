"""Teacher targets: frozen-VGGT patch features turned into one target per VLA visual token.

The pipeline (upstream ``custom_pooling``) takes the aggregator output of one layer, ``[B, S, P, C]`` for ``S``
cameras, and

1. drops the ``patch_start_idx`` special tokens (camera + registers) of every camera -> an ``h x w`` patch grid,
2. optionally adds ``0.1 x`` a fixed 2D sin-cos embedding of the grid (``use_vggt_pe``),
3. resamples each camera's grid to the VLA's patch grid ``h' x w'`` (``pooling_func``),
4. flattens camera-major, row-major within a camera -> ``[B, S * h' * w', C]``,

which lines targets up token by token with the VLA's visual tokens (all patches of camera 0, then camera 1, ...).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

POOLING_FUNCS = ("bilinear", "avg")
# Upstream adds the grid embedding scaled by 0.1, with the frequency base of VGGT's DPT heads.
VGGT_PE_SCALE = 0.1
VGGT_PE_OMEGA_0 = 100.0


def check_pooling_func(pooling_func: str) -> None:
    """Raise a ValueError naming ``pooling_func`` unless it is one of ``POOLING_FUNCS``."""
    if pooling_func not in POOLING_FUNCS:
        raise ValueError(f"Unknown pooling_func {pooling_func!r}: expected one of {list(POOLING_FUNCS)}.")


def uv_grid(grid_hw: tuple[int, int], aspect_ratio: float, device: torch.device | None = None) -> Tensor:
    """Patch-centre coordinates on the diagonal-normalised image plane, float64 ``[h, w, 2]``.

    The image spans ``x in [-a, a] / sqrt(a^2 + 1)`` and ``y in [-1, 1] / sqrt(a^2 + 1)`` for aspect ratio
    ``a = W / H``; a grid of ``n`` points along a side runs from ``-span * (n - 1) / n`` to ``+span * (n - 1) / n``.
    Channel 0 is x (varies along the width), channel 1 is y (varies along the height).
    """
    height, width = grid_hw
    diagonal = math.sqrt(aspect_ratio**2 + 1.0)
    span_x, span_y = aspect_ratio / diagonal, 1.0 / diagonal
    x = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width, dtype=torch.float64)
    y = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height, dtype=torch.float64)
    grid_y, grid_x = torch.meshgrid(y, x, indexing="ij")  # [h, w] each
    return torch.stack((grid_x, grid_y), dim=-1).to(device)  # [h, w, 2]


def sincos_embedding_1d(positions: Tensor, dim: int, omega_0: float = VGGT_PE_OMEGA_0) -> Tensor:
    """``[M]`` positions -> ``[M, dim]`` = (sin(p * omega_k), cos(p * omega_k)) with ``omega_k = omega_0^(-2k/dim)``."""
    omega = 1.0 / omega_0 ** (torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # [M, dim / 2]
    return torch.cat((torch.sin(angles), torch.cos(angles)), dim=-1)  # [M, dim]


@functools.lru_cache(maxsize=16)
def grid_position_embedding(
    grid_hw: tuple[int, int], image_hw: tuple[int, int], dim: int, device: torch.device | None = None
) -> Tensor:
    """The fixed 2D sin-cos embedding of a patch grid, float32 ``[h, w, dim]``; cached, do not modify in place.

    Channels ``[0, dim/2)`` embed x, ``[dim/2, dim)`` embed y (each: sines then cosines, ``omega_0 = 100``),
    on the ``uv_grid`` of aspect ratio ``W / H`` of the image the grid was cut from. Computed in float64.
    """
    if dim % 4 != 0:
        raise ValueError(f"The 2D sin-cos embedding needs a channel count divisible by 4, got {dim}.")
    height, width = grid_hw
    grid = uv_grid(grid_hw, aspect_ratio=image_hw[1] / image_hw[0], device=device).reshape(-1, 2)  # [h*w, 2]
    embedding = torch.cat(
        (sincos_embedding_1d(grid[:, 0], dim // 2), sincos_embedding_1d(grid[:, 1], dim // 2)), dim=-1
    )  # [h*w, dim]
    return embedding.float().reshape(height, width, dim)  # [h, w, dim]


def target_grid_from_token_count(
    vggt_grid_hw: tuple[int, int], num_cameras: int, num_vla_tokens: int
) -> tuple[int, int]:
    """Upstream's rule for the VLA grid: scale both sides of the VGGT grid by ``sqrt(L / (S * h * w))``, truncate.

    Right when the VLA grid has the VGGT grid's aspect ratio (37x37 -> 16x16 for 2 cameras and 512 tokens);
    for other shapes the result need not hold ``L / S`` tokens (4x6 -> 3x4 for 2 cameras and 32 tokens), so
    callers check the count or pass the VLA grid explicitly.
    """
    height, width = vggt_grid_hw
    ratio = 1.0 / math.sqrt(num_cameras * height * width / num_vla_tokens)
    return int(height * ratio), int(width * ratio)


def resample_patch_grid(feature_maps: Tensor, size: tuple[int, int], pooling_func: str = "bilinear") -> Tensor:
    """Resample ``[N, C, h, w]`` patch grids to ``[N, C, *size]``.

    ``"bilinear"`` (upstream): bilinear interpolation with ``align_corners=True``, so corner patches map onto
    corner patches and a linear ramp is reproduced exactly. ``"avg"``: adaptive average pooling, i.e. each
    output patch is the mean of the input patches it covers (an anti-aliased alternative when downsampling).
    """
    check_pooling_func(pooling_func)
    if pooling_func == "bilinear":
        return F.interpolate(feature_maps, size=size, mode="bilinear", align_corners=True)
    return F.adaptive_avg_pool2d(feature_maps, size)


def teacher_targets(
    teacher_features: Tensor,
    patch_start_idx: int,
    image_hw: tuple[int, int],
    patch_size: int,
    target_grid_hw: tuple[int, int],
    use_vggt_pe: bool,
    pooling_func: str = "bilinear",
) -> Tensor:
    """VGGT features of one layer ``[B, S, P, C]`` -> alignment targets ``[B, S * h' * w', C]``.

    ``image_hw`` is the size of the images VGGT saw (its patch grid is ``image_hw // patch_size``, possibly
    non-square); ``target_grid_hw`` is the VLA's patch grid ``(h', w')`` of every camera.
    """
    batch, num_cameras, num_tokens, channels = teacher_features.shape
    image_h, image_w = image_hw
    if image_h % patch_size or image_w % patch_size:
        raise ValueError(f"VGGT image size {tuple(image_hw)} is not a multiple of its patch size {patch_size}.")
    grid_h, grid_w = image_h // patch_size, image_w // patch_size
    if num_tokens - patch_start_idx != grid_h * grid_w:
        raise ValueError(
            f"teacher_features has {num_tokens} tokens per camera; expected patch_start_idx={patch_start_idx} "
            f"special tokens + {grid_h}x{grid_w} patches for images of size {tuple(image_hw)} "
            f"and patch size {patch_size}."
        )
    patches = teacher_features[:, :, patch_start_idx:].reshape(batch * num_cameras, grid_h, grid_w, channels)
    if use_vggt_pe:  # added channels-last, before the permute: same values, far fewer strided reads
        embedding = grid_position_embedding((grid_h, grid_w), (image_h, image_w), channels, teacher_features.device)
        patches = patches + VGGT_PE_SCALE * embedding.to(patches.dtype)  # [B*S, h, w, C]
    feature_maps = patches.permute(0, 3, 1, 2)  # [B*S, C, h, w]
    resampled = resample_patch_grid(feature_maps, tuple(target_grid_hw), pooling_func)  # [B*S, C, h', w']
    tokens_per_camera = resampled.shape[-2] * resampled.shape[-1]
    return resampled.flatten(2).transpose(1, 2).reshape(batch, num_cameras * tokens_per_camera, channels)


def camera_token_mask(camera_present: Tensor, tokens_per_camera: int) -> Tensor:
    """Per-camera presence ``[B, S]`` (bool) -> per-token mask ``[B, S * tokens_per_camera]`` in target order."""
    return camera_present.bool().repeat_interleave(tokens_per_camera, dim=1)
