"""The oracle's rotation and bounding-box helpers against closed-form values."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from prismatic.oracle.libero_pick_place import (
    GEOM_BOX,
    GEOM_CYLINDER,
    _geom_local_points,
    matrix_to_axis_angle,
    quat_xyzw_to_matrix,
)


def _rodrigues(axis_angle: np.ndarray) -> np.ndarray:
    angle = np.linalg.norm(axis_angle)
    k = axis_angle / angle
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def test_quaternion_of_a_quarter_turn_about_z() -> None:
    half = np.sqrt(0.5)
    np.testing.assert_allclose(
        quat_xyzw_to_matrix(np.array([0.0, 0.0, half, half])), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12
    )


def test_axis_angle_round_trip_including_near_half_turns() -> None:
    rng = np.random.default_rng(0)
    for angle in (0.3, 1.5, 3.0, np.pi - 1e-3):
        axis = rng.normal(size=3)
        axis_angle = axis / np.linalg.norm(axis) * angle
        np.testing.assert_allclose(matrix_to_axis_angle(_rodrigues(axis_angle)), axis_angle, atol=2e-3)
    np.testing.assert_array_equal(matrix_to_axis_angle(np.eye(3)), np.zeros(3))
    half_turn = _rodrigues(np.array([1.0, -2.0, 0.5]) / np.linalg.norm([1.0, -2.0, 0.5]) * np.pi)
    np.testing.assert_allclose(_rodrigues(matrix_to_axis_angle(half_turn)), half_turn, atol=1e-6)  # arccos near -1


def test_box_and_cylinder_geoms_are_bounded_by_their_corners() -> None:
    model = SimpleNamespace(geom_type=[GEOM_BOX, GEOM_CYLINDER], geom_size=[[0.1, 0.2, 0.3], [0.05, 0.02, 0.0]])
    box, cylinder = _geom_local_points(model, 0), _geom_local_points(model, 1)
    np.testing.assert_allclose(box.max(axis=0), [0.1, 0.2, 0.3])
    np.testing.assert_allclose(box.min(axis=0), [-0.1, -0.2, -0.3])
    np.testing.assert_allclose(cylinder.max(axis=0), [0.05, 0.05, 0.02])  # radius in x and y, half-height in z
