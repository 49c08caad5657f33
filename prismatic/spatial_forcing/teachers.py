"""Teachers beside VGGT, behind the same ``TeacherFeatures`` interface: fixed functions, nothing learned.

- ``GeometryTeacher`` (``--teacher geometry``): per patch of each camera, features of the true 3D structure, read
  from the camera-frame point map of the images the VLA saw. It stands in for VGGT where the data carry depth (the
  simulator's demonstrations, RGB-D robot data): its targets hold geometry by construction.
- ``RGBTeacher`` (``--teacher rgb``): a control of the same width from the RGB pixels alone (a fixed random
  network), so an experiment can tell "geometry" from "any extra target".

Both are frozen (no parameters; fixed buffers drawn from a seeded ``torch.Generator``, identical in every process),
deterministic and local: a patch's features depend on that patch's pixels only (``patch_start_idx`` is 0, and the
grid is ``image_hw // patch_size``).

Point maps (``camera_points [B, S, H, W, 3]``, float32, metres): the OpenCV camera frame (x right, y down, z
forward along the optical axis) of every pixel of the image the VLA saw, after the same crop and resize. The data
pipelines compute them from each camera's metric depth (z-depth) and pinhole intrinsics
(``prismatic.vla.datasets.geometry``); non-finite points (missing depth) read as the far corner of the workspace.

Geometry features of a patch (7 numbers, each normalised to about [-1, 1] by the workspace bounds, then lifted by a
fixed random Fourier map to the target width):

- mean x, y (the point's position across the view) and mean depth z, each mapped from ``[workspace_min,
  workspace_max]`` to [-1, 1] and clamped;
- the surface normal (unit vector facing the camera) of the plane through the patch's mean in-patch point
  differences along the image rows and columns;
- the depth spread: the standard deviation of z within the patch over the z extent of the workspace, times
  ``SPREAD_GAIN``, clamped to [0, 1] (a step edge inside a patch reads near 1, a flat patch 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from prismatic.spatial_forcing.teacher import FrozenTeacher, TeacherFeatures

TEACHERS = ("vggt", "geometry", "rgb")
GEOMETRY_FEATURES = 7  # x, y, z, normal (3), depth spread
SPREAD_GAIN = 8.0  # depth spread as a share of the workspace depth range, scaled up so steps inside a patch read ~1
FOURIER_SCALE = 1.0  # std of the Fourier frequencies (cycles per unit of the normalised features)


def check_teacher(teacher: str) -> None:
    """Raise a ValueError naming ``teacher`` unless it is one of ``TEACHERS``."""
    if teacher not in TEACHERS:
        raise ValueError(f"Unknown --teacher {teacher!r}: expected one of {list(TEACHERS)}.")


def _seeded_normal(shape: tuple[int, ...], seed: int, std: float) -> Tensor:
    """Float32 normal draws from a CPU generator seeded with ``seed``: the same numbers in every process."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).mul_(std).float()


def _check_width(width: int) -> None:
    if width < 2 or width % 2:
        raise ValueError(f"A teacher's feature width must be a positive even number, got {width}.")


def _patches(values: Tensor, patch_size: int) -> Tensor:
    """``[N, H, W, C]`` -> ``[N, h, w, p, p, C]`` non-overlapping patches (H, W multiples of ``patch_size``)."""
    count, height, width, channels = values.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"Image size {height}x{width} is not a multiple of the teacher's patch size {patch_size}.")
    grid = values.reshape(count, height // patch_size, patch_size, width // patch_size, patch_size, channels)
    return grid.permute(0, 1, 3, 2, 4, 5)


class GeometryTeacher(FrozenTeacher):
    """Per-patch 3D structure from point maps, lifted to ``width`` channels by a fixed random Fourier map."""

    def __init__(
        self,
        width: int,
        patch_size: int,
        workspace_min: tuple[float, float, float],
        workspace_max: tuple[float, float, float],
        seed: int = 0,
    ):
        super().__init__()
        _check_width(width)
        low, high = torch.tensor(workspace_min, dtype=torch.float32), torch.tensor(workspace_max, dtype=torch.float32)
        if low.shape != (3,) or high.shape != (3,) or not bool((high > low).all()):
            raise ValueError(
                f"Workspace bounds must be 3 numbers each with max > min per axis; got min {workspace_min}, "
                f"max {workspace_max}."
            )
        self.width, self.patch_size, self.seed = width, patch_size, seed
        self.register_buffer("workspace_min", low, persistent=False)
        self.register_buffer("workspace_max", high, persistent=False)
        self.register_buffer(
            "frequencies", _seeded_normal((GEOMETRY_FEATURES, width // 2), seed, FOURIER_SCALE), persistent=False
        )
        self.train(False)

    def geometry(self, camera_points: Tensor) -> Tensor:
        """Point maps ``[B, S, H, W, 3]`` -> normalised per-patch geometry ``[B, S, h, w, 7]`` (float32)."""
        batch, cameras, height, width, _ = camera_points.shape
        far = self.workspace_max.to(camera_points.device)
        points = camera_points.float().reshape(batch * cameras, height, width, 3)
        points = torch.where(torch.isfinite(points).all(-1, keepdim=True), points, far)
        patches = _patches(points, self.patch_size)  # [N, h, w, p, p, 3]
        low, high = self.workspace_min.to(points.device), far
        centre, half_extent = (low + high) / 2, (high - low) / 2
        position = ((patches.mean(dim=(3, 4)) - centre) / half_extent).clamp(-1.0, 1.0)  # [N, h, w, 3]
        along_columns = (patches[:, :, :, :, 1:] - patches[:, :, :, :, :-1]).mean(dim=(3, 4))  # [N, h, w, 3]
        along_rows = (patches[:, :, :, 1:] - patches[:, :, :, :-1]).mean(dim=(3, 4))
        normal = F.normalize(torch.linalg.cross(along_columns, along_rows), dim=-1, eps=1e-12)
        facing = torch.where((normal * patches.mean(dim=(3, 4))).sum(-1, keepdim=True) > 0, -1.0, 1.0)
        spread = patches[..., 2].flatten(3).std(dim=-1, correction=0)[..., None]  # [N, h, w, 1]
        spread = (SPREAD_GAIN * spread / (high[2] - low[2])).clamp(0.0, 1.0)
        features = torch.cat((position, normal * facing, spread), dim=-1)  # [N, h, w, 7]
        return features.reshape(batch, cameras, *features.shape[1:])

    @torch.no_grad()
    def forward(self, pixel_values: Tensor, camera_points: Tensor | None = None) -> TeacherFeatures:
        """``camera_points [B, S, H, W, 3]`` -> features ``[B, S, h * w, width]``; ``pixel_values`` are not read."""
        if camera_points is None:
            raise ValueError("The geometry teacher needs camera_points [B, S, H, W, 3] (depth + intrinsics).")
        if camera_points.dim() != 5 or camera_points.shape[-1] != 3:
            raise ValueError(f"camera_points must be [B, S, H, W, 3]; got {tuple(camera_points.shape)}.")
        geometry = self.geometry(camera_points)  # [B, S, h, w, 7]
        angles = 2 * math.pi * geometry @ self.frequencies.to(geometry.device)  # [B, S, h, w, width / 2]
        features = torch.cat((torch.sin(angles), torch.cos(angles)), dim=-1).flatten(2, 3)  # [B, S, h*w, width]
        return TeacherFeatures(features, 0, (camera_points.shape[2], camera_points.shape[3]))


class RGBTeacher(FrozenTeacher):
    """The control: a fixed random two-layer patch network on the RGB images alone (no depth, no geometry).

    ``prepare_images`` maps the VLA's pixel values to ``[B, S, 3, H, W]`` in [0, 1] (None: the input already is).
    Each ``p x p`` patch goes through a random linear map to ``width`` channels, GELU, and a second random linear map
    (weights ~ N(0, 1 / fan_in), seeded).
    """

    def __init__(
        self,
        width: int,
        patch_size: int,
        prepare_images: Callable[[Tensor], Tensor] | None = None,
        seed: int = 0,
    ):
        super().__init__()
        _check_width(width)
        self.width, self.patch_size, self.seed = width, patch_size, seed
        self.prepare_images = prepare_images
        fan_in = 3 * patch_size * patch_size
        self.register_buffer(
            "patch_weights", _seeded_normal((width, 3, patch_size, patch_size), seed, fan_in**-0.5), persistent=False
        )
        self.register_buffer("mixing_weights", _seeded_normal((width, width), seed + 1, width**-0.5), persistent=False)
        self.train(False)

    @torch.no_grad()
    def forward(self, pixel_values: Tensor, camera_points: Tensor | None = None) -> TeacherFeatures:
        """VLA pixel values -> features ``[B, S, h * w, width]``; ``camera_points`` are not read."""
        images = pixel_values if self.prepare_images is None else self.prepare_images(pixel_values)
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"RGB teacher images must be [B, S, 3, H, W]; got {tuple(images.shape)}.")
        batch, cameras, _, height, width = images.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"Image size {height}x{width} is not a multiple of the patch size {self.patch_size}.")
        flat = images.float().reshape(batch * cameras, 3, height, width) * 2 - 1  # [-1, 1]
        hidden = F.gelu(F.conv2d(flat, self.patch_weights.to(flat.device), stride=self.patch_size))  # [N, width, h, w]
        features = hidden.flatten(2).transpose(1, 2) @ self.mixing_weights.to(flat.device).T  # [N, h*w, width]
        return TeacherFeatures(features.reshape(batch, cameras, -1, self.width), 0, (height, width))
