"""The geometry teacher and the RGB control mean what they claim: geometry only, locally; pixels only; fixed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prismatic.spatial_forcing import GeometryTeacher, RGBTeacher, TeacherFeatures, check_teacher

REPO_ROOT = Path(__file__).resolve().parents[2]
PATCH = 4
GRID = 3  # 3x3 patches per camera
SIZE = PATCH * GRID
WIDTH = 32
WORKSPACE = ((-1.0, -1.0, 0.0), (1.0, 1.0, 2.0))


def _geometry_teacher(seed: int = 0) -> GeometryTeacher:
    return GeometryTeacher(WIDTH, PATCH, *WORKSPACE, seed=seed)


def _points(depth: torch.Tensor, focal: float = 10.0) -> torch.Tensor:
    """Pinhole back-projection of ``depth [B, S, H, W]`` (principal point at the image centre) -> [B, S, H, W, 3]."""
    height, width = depth.shape[-2:]
    rows, cols = torch.meshgrid(
        torch.arange(height) - (height - 1) / 2, torch.arange(width) - (width - 1) / 2, indexing="ij"
    )
    return torch.stack((cols / focal * depth, rows / focal * depth, depth), dim=-1)


def _scene(batch: int = 2, cameras: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Random pixels and a tilted plane with a box on it: (pixels [B, S, 3, H, W], depth [B, S, H, W])."""
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(batch, cameras, 3, SIZE, SIZE, generator=generator)
    rows = torch.arange(SIZE, dtype=torch.float32)[:, None]
    depth = (1.2 + 0.02 * rows).expand(batch, cameras, SIZE, SIZE).clone()
    depth[:, :, 4:8, 4:8] = 1.0  # a box with a flat top, filling the centre patch
    return pixels, depth


def _changed_patches(before: torch.Tensor, after: torch.Tensor) -> set[tuple[int, int, int]]:
    """(batch, camera, patch) whose features differ."""
    differs = (before - after).abs().amax(dim=-1) > 1e-6  # [B, S, P]
    return {tuple(index) for index in differs.nonzero().tolist()}


def test_geometry_features_change_where_and_only_where_the_depth_changes():
    teacher = _geometry_teacher()
    pixels, depth = _scene()
    before = teacher(pixels, _points(depth)).features
    moved = depth.clone()
    moved[1, 0, 8:12, 0:4] += 0.25  # patch (2, 0) of camera 0 of sample 1 moves away
    moved[0, 1, 1, 5] -= 0.1  # one pixel of patch (0, 1) of camera 1 of sample 0
    after = teacher(pixels, _points(moved)).features
    assert _changed_patches(before, after) == {(1, 0, 2 * GRID + 0), (0, 1, 0 * GRID + 1)}


def test_geometry_features_ignore_colour():
    teacher = _geometry_teacher()
    pixels, depth = _scene()
    points = _points(depth)
    recoloured = torch.rand_like(pixels)
    torch.testing.assert_close(teacher(pixels, points).features, teacher(recoloured, points).features, rtol=0, atol=0)


def test_geometry_reads_position_depth_normal_and_spread():
    teacher = _geometry_teacher()
    _, depth = _scene(batch=1, cameras=1)
    geometry = teacher.geometry(_points(depth))[0, 0]  # [h, w, 7]
    plane, box = geometry[0, 0], geometry[1, 1]  # top-left: the tilted plane; centre: the box top
    assert box[2] < geometry[0, 1][2] < geometry[2, 1][2]  # normalised depth: the box is nearest, the plane recedes
    assert box[0] == 0 and box[1] == 0 and plane[0] < 0 and plane[1] < 0  # the box on the axis, the plane up left
    torch.testing.assert_close(box[3:6], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6, rtol=0)  # faces the camera
    assert plane[3].abs() < 1e-6 and plane[4] > 0.01 and plane[5] < -0.9  # tilted towards +y (image down)
    assert box[6] == 0 and plane[6] > 0  # depth spread: none on the flat top, some on the tilted plane
    assert geometry.abs().max() <= 1


def test_missing_depth_reads_as_the_far_workspace_corner():
    teacher = _geometry_teacher()
    _, depth = _scene(batch=1, cameras=1)
    points = _points(depth)
    points[0, 0, :PATCH, :PATCH] = float("nan")
    features = teacher(None, points).features
    assert torch.isfinite(features).all()
    position = teacher.geometry(points)[0, 0, 0, 0, :3]
    torch.testing.assert_close(position, torch.ones(3), rtol=0, atol=0)


def test_rgb_control_ignores_depth_but_sees_colour_locally():
    teacher = RGBTeacher(WIDTH, PATCH, seed=3)
    pixels, depth = _scene()
    features = teacher(pixels, _points(depth)).features
    torch.testing.assert_close(features, teacher(pixels, _points(depth * 1.7)).features, rtol=0, atol=0)
    torch.testing.assert_close(features, teacher(pixels).features, rtol=0, atol=0)
    recoloured = pixels.clone()
    recoloured[0, 1, :, 0:4, 8:12] = 1 - recoloured[0, 1, :, 0:4, 8:12]
    assert _changed_patches(features, teacher(recoloured).features) == {(0, 1, 2)}


@pytest.mark.parametrize("make", [lambda: _geometry_teacher(seed=5), lambda: RGBTeacher(WIDTH, PATCH, seed=5)])
def test_teachers_are_frozen_shaped_and_repeatable(make):
    teacher = make()
    pixels, depth = _scene()
    output = teacher(pixels, _points(depth))
    assert isinstance(output, TeacherFeatures)
    assert output.features.shape == (2, 2, GRID * GRID, WIDTH) and output.features.dtype == torch.float32
    assert output.patch_start_idx == 0 and output.image_hw == (SIZE, SIZE)
    assert not list(teacher.parameters()) and not teacher.state_dict()  # nothing to train or save
    teacher.train()
    assert not teacher.training
    torch.testing.assert_close(output.features, make()(pixels, _points(depth)).features, rtol=0, atol=0)


def _digest_in_fresh_process(kind: str) -> str:
    script = f"""
import hashlib, torch
from prismatic.spatial_forcing import GeometryTeacher, RGBTeacher
torch.manual_seed(123)  # the global RNG must not matter
generator = torch.Generator().manual_seed(0)
pixels = torch.rand(1, 2, 3, 8, 8, generator=generator)
points = torch.rand(1, 2, 8, 8, 3, generator=generator) + 0.5
teacher = GeometryTeacher(16, 4, (-1, -1, 0), (1, 1, 2)) if "{kind}" == "geometry" else RGBTeacher(16, 4)
print(hashlib.sha256(teacher(pixels, points).features.numpy().tobytes()).hexdigest())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    return result.stdout.strip()


@pytest.mark.parametrize("kind", ["geometry", "rgb"])
def test_features_are_identical_across_processes(kind):
    assert _digest_in_fresh_process(kind) == _digest_in_fresh_process(kind)


def test_seeds_and_teacher_names():
    pixels, depth = _scene()
    points = _points(depth)
    assert not torch.equal(_geometry_teacher(0)(pixels, points).features, _geometry_teacher(1)(pixels, points).features)
    for name in ("vggt", "geometry", "rgb"):
        check_teacher(name)
    with pytest.raises(ValueError, match="Unknown --teacher 'depth'"):
        check_teacher("depth")
    with pytest.raises(ValueError, match="camera_points"):
        _geometry_teacher()(pixels)
    with pytest.raises(ValueError, match="max > min"):
        GeometryTeacher(WIDTH, PATCH, (0, 0, 1), (1, 1, 1))
