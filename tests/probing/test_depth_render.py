"""Depth rendering: the buffer conversion, the pixel map of the policy's image chain, and the scene geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.robot.libero.depth_render import depth_buffer_to_metric, policy_depth, policy_pixel_map
from tests.probing.conftest import run_tool, sim_env


def test_depth_buffer_conversion_inverts_the_perspective_depth_buffer():
    near, far = 0.0106, 530.0
    distances = np.array([near, 0.05, 0.7, 1.3, 3.0, far])
    # OpenGL's window depth of an eye-space distance z: (1/near - 1/z) / (1/near - 1/far).
    buffer = (1 / near - 1 / distances) / (1 / near - 1 / far)
    np.testing.assert_allclose(depth_buffer_to_metric(buffer, near, far), distances, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        depth_buffer_to_metric(np.array([1.2]), near, far)


@pytest.mark.parametrize("center_crop", [False, True])
def test_pixel_map_follows_a_point_through_flip_resize_and_crop(center_crop):
    """A smooth bump placed at a known pixel of the rendered frame ends where the pixel map says."""
    render_size = 96
    top_down_center = np.array([31.0, 58.0])  # (u = column, v = row) in the top-down rendered frame
    rows, columns = np.mgrid[0:render_size, 0:render_size]
    bump = np.exp(-((columns - top_down_center[0]) ** 2 + (rows - top_down_center[1]) ** 2) / (2 * 4.0**2))
    raw = (1.0 + bump)[::-1]  # OpenGL order: bottom row first
    policy = policy_depth(raw, center_crop, 0.9) - 1.0
    weights = np.clip(policy, 0, None) ** 4  # sharpen: the centroid of the peak
    found = (
        np.array([(weights * np.arange(224)[None, :]).sum(), (weights * np.arange(224)[:, None]).sum()]) / weights.sum()
    )
    expected = (policy_pixel_map(render_size, center_crop, 0.9) @ np.array([*top_down_center, 1.0]))[:2]
    np.testing.assert_allclose(found, expected, atol=0.15)
    mirrored = np.array([223 - expected[0], expected[1]])
    assert np.abs(found - mirrored).max() > 10  # the check sees a missing flip


@pytest.mark.sim
def test_rendered_depth_equals_camera_z_of_surface_points(tmp_path):
    """Surface points found by vertical rays (independent of the cameras; mesh hits excluded) project, with the
    stored intrinsics and camera poses, to policy-image pixels whose depth is their camera-frame z within 1.5 %
    (median within 0.5 %)."""
    completed = run_tool(["tests/probing/sim_geometry_check.py", "128"], env=sim_env(tmp_path))
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULT "))
    results = json.loads(line.removeprefix("RESULT "))
    for view in ("primary", "wrist"):
        points = [point for point in results[view] if not point["on_mesh"]]  # exact ray-cast surfaces only
        assert len(points) >= 20, f"{view}: only {len(points)} visible surface points"
        z = np.array([point["z"] for point in points])
        errors = np.abs(np.array([point["depth"] for point in points]) - z) / z
        assert errors.max() < 0.015, f"{view}: worst relative depth error {errors.max():.4f}"
        assert np.median(errors) < 0.005
        every_z = np.array([point["z"] for point in results[view]])  # objects too: a flat table looks symmetric
        mirrored_errors = np.abs(np.array([point["mirrored_depth"] for point in results[view]]) - every_z) / every_z
        assert (mirrored_errors > 0.015).sum() >= 3  # reading mirrored pixels breaks the bound: a flip is caught
