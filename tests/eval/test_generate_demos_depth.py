"""generate_libero_demos.py --with_depth: the sidecar's millimetre depth and upright intrinsics become the geometry
teacher's RLDS features (metres, intrinsics of the stored 180-degree-rotated frame). No simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.robot.libero.demo_generation import load_episode, stored_frame_intrinsics
from experiments.robot.libero.depth_render import camera_intrinsics
from prismatic.vla.datasets.geometry import points_from_depth
from prismatic.vla.image_utils import rotate_180

SIZE = 8


def _upright_depth(size: int) -> np.ndarray:
    """A tilted plane: every pixel's depth differs, so any mirroring shows."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    return 1.0 + 0.01 * rows + 0.003 * cols


def test_stored_frame_intrinsics_back_project_the_rotated_depth_to_the_upright_points() -> None:
    upright_intrinsics = camera_intrinsics(45.0, SIZE, SIZE)
    upright_intrinsics[0, 2] += 0.75  # an off-centre principal point, so the mirrored cx is tested
    upright = _upright_depth(SIZE)
    stored = rotate_180(upright[::-1])  # the renderer's buffer is bottom row first; the dataset stores its rotation
    intrinsics = stored_frame_intrinsics(upright_intrinsics, SIZE)
    assert intrinsics.dtype == np.float32
    np.testing.assert_allclose(intrinsics[0], [-upright_intrinsics[0, 0], 0.0, SIZE - 1 - upright_intrinsics[0, 2]])
    np.testing.assert_allclose(intrinsics[1:], upright_intrinsics[1:])
    stored_points = points_from_depth(stored, intrinsics)
    upright_points = points_from_depth(upright, upright_intrinsics)
    np.testing.assert_allclose(stored_points, upright_points[:, ::-1], rtol=1e-6)
    assert stored_points[0, 0, 0] > 0  # the stored frame's left column is the camera's right side


def test_episode_with_depth_is_in_metres_with_per_step_intrinsics(tmp_path: Path) -> None:
    steps = 3
    depth_mm = np.arange(steps * 2 * SIZE * SIZE, dtype=np.uint16).reshape(steps, 2, SIZE, SIZE) + 500
    intrinsics = np.stack([camera_intrinsics(45.0, SIZE, SIZE), camera_intrinsics(75.0, SIZE, SIZE)])
    path = tmp_path / "attempt00000.npz"
    np.savez(
        path,
        images=np.zeros((steps, SIZE, SIZE, 3), np.uint8),
        wrist_images=np.zeros((steps, SIZE, SIZE, 3), np.uint8),
        states=np.zeros((steps, 8), np.float32),
        joint_states=np.zeros((steps, 7), np.float32),
        actions=np.zeros((steps, 7), np.float32),
        depth=depth_mm,
        intrinsics=intrinsics,
        instruction=np.array("pick up the bowl"),
        file_path=np.array("task00/attempt00000"),
    )
    plain = load_episode(path, with_depth=False)
    assert plain.depths is None and plain.intrinsics is None
    episode = load_episode(path, with_depth=True)
    episode.validate(SIZE, with_depth=True)
    np.testing.assert_array_equal(episode.depths, depth_mm[:, 0].astype(np.float32) / np.float32(1000.0))
    np.testing.assert_array_equal(episode.wrist_depths, depth_mm[:, 1].astype(np.float32) / np.float32(1000.0))
    assert episode.depths[0, 0, 0] == np.float32(0.5)
    for step in range(steps):
        np.testing.assert_array_equal(episode.intrinsics[step], stored_frame_intrinsics(intrinsics[0], SIZE))
        np.testing.assert_array_equal(episode.wrist_intrinsics[step], stored_frame_intrinsics(intrinsics[1], SIZE))
    assert episode.to_example(with_depth=True)["steps"][1]["observation"]["image_depth"].dtype == np.float32
