"""Metric depth from LIBERO's cameras, registered pixel for pixel to the images the policy sees.

MuJoCo's depth buffer holds non-linear values in [0, 1]; :func:`depth_buffer_to_metric` turns them into distances
along the optical axis with the model's clip planes (``znear`` and ``zfar`` scaled by the model's extent). The RGB
frame goes through the evaluation's own chain (``prepare_observation``: rotate 180 deg, JPEG round trip, lanczos3 to
224; then the policy's center crop); the depth map goes through the same geometric steps (rotate, the same lanczos3
resampling, the same crop), so depth pixel (r, c) covers the scene point that RGB pixel (r, c) shows.

Camera geometry follows OpenCV: x right, y down, z forward; intrinsics are in pixel-index coordinates (pixel (r, c)
has its centre at (u, v) = (c, r)). :func:`policy_pixel_map` carries them from the rendered frame to the policy image.
Runs in rendering processes: no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from experiments.robot.libero.libero_utils import LIBERO_DUMMY_ACTION, prepare_observation
from prismatic.vla.image_utils import (
    OPENVLA_IMAGE_SIZE,
    center_crop_box,
    center_crop_image,
    crop_and_resize_bilinear,
    resize_lanczos3,
    rotate_180,
)

# The policy's views and the LIBERO cameras behind them (primary first, as the policy stacks them).
LIBERO_CAMERAS = {"primary": "agentview", "wrist": "robot0_eye_in_hand"}
POLICY_IMAGE_KEYS = {"primary": "full_image", "wrist": "wrist_image"}
FREE_JOINT = 0  # mujoco.mjtJoint.mjJNT_FREE: 3 position + 4 quaternion (w, x, y, z) entries of qpos


def clip_planes(model: Any) -> tuple[float, float]:
    """(near, far) in metres: the model's ``vis.map.znear/zfar``, which MuJoCo scales by ``stat.extent``."""
    extent = float(model.stat.extent)
    return float(model.vis.map.znear) * extent, float(model.vis.map.zfar) * extent


def depth_buffer_to_metric(buffer: np.ndarray, near: float, far: float) -> np.ndarray:
    """OpenGL depth-buffer values in [0, 1] -> distance along the optical axis (metres), float32."""
    buffer = np.asarray(buffer, dtype=np.float64)
    if buffer.size and (buffer.min() < 0 or buffer.max() > 1):
        raise ValueError(f"depth buffer values must lie in [0, 1]; found [{buffer.min()}, {buffer.max()}]")
    return (near / (1.0 - buffer * (1.0 - near / far))).astype(np.float32)


def camera_intrinsics(fovy_degrees: float, height: int, width: int) -> np.ndarray:
    """3x3 pinhole matrix of a MuJoCo camera rendered at ``height`` x ``width`` (top row of the image first)."""
    focal = 0.5 * height / np.tan(np.deg2rad(fovy_degrees) / 2)
    return np.array([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])


def policy_pixel_map(render_size: int, center_crop: bool, crop_area: float) -> np.ndarray:
    """3x3 affine map from pixel coordinates of the rendered frame (top row first) to those of the policy image.

    Composes the 180-degree rotation's horizontal mirror (the vertical flip undoes OpenGL's bottom-up rows), the
    resize to 224 (half-pixel centres) and, with ``center_crop``, the crop box resized back to 224.
    """
    size = OPENVLA_IMAGE_SIZE
    mirror = np.array([[-1.0, 0.0, render_size - 1], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    scale = size / render_size
    resize = np.array([[scale, 0.0, 0.5 * scale - 0.5], [0.0, scale, 0.5 * scale - 0.5], [0.0, 0.0, 1.0]])
    transform = resize @ mirror
    if center_crop:
        y1, x1, y2, x2 = (float(value) for value in center_crop_box(crop_area))
        crop = np.array(
            [[1 / (x2 - x1), 0.0, -x1 * (size - 1) / (x2 - x1)], [0.0, 1 / (y2 - y1), -y1 * (size - 1) / (y2 - y1)]]
        )
        transform = np.vstack([crop, [0.0, 0.0, 1.0]]) @ transform
    return transform


def camera_to_world(data: Any, camera_id: int) -> np.ndarray:
    """4x4 pose of a camera in the world, OpenCV axes (MuJoCo cameras look along -z with y up)."""
    pose = np.eye(4)
    pose[:3, :3] = np.asarray(data.cam_xmat[camera_id]).reshape(3, 3) @ np.diag([1.0, -1.0, -1.0])
    pose[:3, 3] = data.cam_xpos[camera_id]
    return pose


def project_points(points_world: np.ndarray, pose: np.ndarray, intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points ``[N, 3]`` -> pixel coordinates ``[N, 2]`` (u = column, v = row) and camera-frame z ``[N]``."""
    points_camera = (np.asarray(points_world) - pose[:3, 3]) @ pose[:3, :3]  # [N, 3]
    z = points_camera[:, 2]
    homogeneous = points_camera @ intrinsics.T  # [N, 3]
    return homogeneous[:, :2] / z[:, None], z


def policy_depth(metric_depth: np.ndarray, center_crop: bool, crop_area: float) -> np.ndarray:
    """A rendered metric depth map (OpenGL rows, bottom first) through the policy image's geometric chain.

    The lanczos3 resize is the RGB chain's own; its small overshoot at depth edges is clipped to the frame's range.
    """
    depth = rotate_180(np.asarray(metric_depth, dtype=np.float32).reshape(metric_depth.shape[:2]))
    resized = resize_lanczos3(depth[..., None], (OPENVLA_IMAGE_SIZE, OPENVLA_IMAGE_SIZE))
    resized = np.clip(resized, depth.min(), depth.max()).astype(np.float32)
    if center_crop:
        resized = crop_and_resize_bilinear(resized, center_crop_box(crop_area), OPENVLA_IMAGE_SIZE)
    return resized[..., 0].astype(np.float32)


@dataclass(frozen=True)
class Perturbation:
    """Ranges of the random changes made to an initial state (uniform in +-range)."""

    object_shift_m: float = 0.03  # x/y shift of every free object
    object_yaw_rad: float = 0.5  # rotation of every free object about the world z axis
    robot_joint_rad: float = 0.1  # offset of every arm joint


def _yaw_quaternion_product(quaternion_wxyz: np.ndarray, yaw: float) -> np.ndarray:
    """``q_yaw * q``: rotate an orientation about the world z axis."""
    w1, z1 = np.cos(yaw / 2), np.sin(yaw / 2)
    w2, x2, y2, z2 = quaternion_wxyz
    return np.array([w1 * w2 - z1 * z2, w1 * x2 - z1 * y2, w1 * y2 + z1 * x2, w1 * z2 + z1 * w2])


def perturb_state(
    state: np.ndarray,
    model: Any,
    robot_qpos_indexes: list[int],
    rng: np.random.Generator,
    perturbation: Perturbation,
) -> np.ndarray:
    """A copy of a flattened sim state ``[time, qpos, qvel]`` with objects moved and the arm's joints offset."""
    perturbed = np.array(state, dtype=np.float64, copy=True)
    qpos = perturbed[1 : 1 + model.nq]  # a view
    for joint in range(model.njnt):
        if model.jnt_type[joint] != FREE_JOINT:
            continue
        address = model.jnt_qposadr[joint]
        qpos[address : address + 2] += rng.uniform(-perturbation.object_shift_m, perturbation.object_shift_m, 2)
        yaw = rng.uniform(-perturbation.object_yaw_rad, perturbation.object_yaw_rad)
        qpos[address + 3 : address + 7] = _yaw_quaternion_product(qpos[address + 3 : address + 7], yaw)
    qpos[robot_qpos_indexes] += rng.uniform(
        -perturbation.robot_joint_rad, perturbation.robot_joint_rad, len(robot_qpos_indexes)
    )
    perturbed[1 + model.nq :] = 0.0  # at rest
    return perturbed


@dataclass
class RenderedScene:
    rgb: np.ndarray  # [2, 224, 224, 3] uint8, primary then wrist, as the policy sees them
    depth: np.ndarray  # [2, 224, 224] float32 metres, registered to rgb
    state: np.ndarray  # [8] proprio
    camera_poses: np.ndarray  # [2, 4, 4] camera-to-world, OpenCV axes


def robot_qpos_indexes(env: Any) -> list[int]:
    """qpos indexes of the arm joints of a LIBERO env's robot."""
    return [int(index) for index in env.env.robots[0]._ref_joint_pos_indexes]


def render_scene(env: Any, state: np.ndarray, settle_steps: int, center_crop: bool, crop_area: float) -> RenderedScene:
    """Set ``state``, step ``settle_steps`` no-op actions (objects settle, as the evaluation's wait steps), and
    return both views in the policy's preprocessing with their registered metric depth.

    ``env`` must be built with ``camera_depths=True`` (``get_libero_env(..., camera_depths=True)``).
    """
    obs = env.set_init_state(state)
    for _ in range(settle_steps):
        obs, _, _, _ = env.step(list(LIBERO_DUMMY_ACTION))
    observation, _ = prepare_observation(obs, OPENVLA_IMAGE_SIZE)
    near, far = clip_planes(env.sim.model)
    rgb, depth, poses = [], [], []
    for view, camera in LIBERO_CAMERAS.items():
        image = observation[POLICY_IMAGE_KEYS[view]]
        rgb.append(center_crop_image(image, crop_area) if center_crop else image)
        metric = depth_buffer_to_metric(obs[f"{camera}_depth"], near, far)
        depth.append(policy_depth(metric, center_crop, crop_area))
        poses.append(camera_to_world(env.sim.data, env.sim.model.camera_name2id(camera)))
    return RenderedScene(np.stack(rgb), np.stack(depth), observation["state"], np.stack(poses))


def policy_intrinsics(env: Any, render_size: int, center_crop: bool, crop_area: float) -> dict[str, np.ndarray]:
    """Per view, the 3x3 intrinsics of the policy image (after the flip, resize and crop)."""
    pixel_map = policy_pixel_map(render_size, center_crop, crop_area)
    model = env.sim.model
    return {
        view: pixel_map
        @ camera_intrinsics(float(model.cam_fovy[model.camera_name2id(camera)]), render_size, render_size)
        for view, camera in LIBERO_CAMERAS.items()
    }
