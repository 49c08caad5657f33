"""Render one perturbed LIBERO scene and compare its policy-image depth with ray-cast scene geometry (prints JSON).

Run by test_depth_render.py in a fresh process (``USE_TF=0``; rendering must not share a process with TensorFlow).
World points are surface points found by vertical rays onto the table (independent of the camera); each is
projected with the camera's intrinsics/extrinsics as stored for the policy image and, when the camera sees it
(a ray from the camera reaches it unobstructed), the depth map is read there by bilinear interpolation.
"""

import json
import os
import sys

import mujoco
import numpy as np

from experiments.robot.libero.depth_render import (
    LIBERO_CAMERAS,
    Perturbation,
    perturb_state,
    policy_intrinsics,
    project_points,
    render_scene,
    robot_qpos_indexes,
)
from experiments.robot.libero.libero_utils import get_libero_env
from experiments.robot.libero.sim_setup import configure_rendering, prepare_libero

# Half-width (policy pixels) of the window that must be free of depth edges: lanczos3's support of 3 source pixels
# spans about 5 policy pixels when a 128 px render is resized to 224.
EDGE_RADIUS = 5
VISIBLE_GEOM_GROUPS = np.array([0, 1, 1, 0, 0, 0], dtype=np.uint8)  # robosuite renders visual geoms (group 1)


def bilinear(image: np.ndarray, u: float, v: float) -> float:
    c0, r0 = int(np.floor(u)), int(np.floor(v))
    du, dv = u - c0, v - r0
    patch = image[r0 : r0 + 2, c0 : c0 + 2]
    return float(
        (1 - dv) * ((1 - du) * patch[0, 0] + du * patch[0, 1]) + dv * ((1 - du) * patch[1, 0] + du * patch[1, 1])
    )


def ray(model, data, start, direction) -> tuple[float, int]:
    """Distance to the first visible geom along the ray (-1: none) and that geom's id."""
    geom = np.zeros(1, dtype=np.int32)
    unit = direction / np.linalg.norm(direction)
    return mujoco.mj_ray(model, data, start, unit, VISIBLE_GEOM_GROUPS, 1, -1, geom), int(geom[0])


def main(render_size: int) -> None:
    configure_rendering()
    prepare_libero()
    from libero.libero import benchmark, get_libero_path

    task_suite = benchmark.get_benchmark_dict()["libero_spatial"]()
    task = task_suite.get_task(0)
    env = get_libero_env(
        os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file),
        render_size,
        camera_depths=True,
    )
    env.reset()
    state = perturb_state(
        task_suite.get_task_init_states(0)[0],
        env.sim.model,
        robot_qpos_indexes(env),
        np.random.default_rng(3),
        Perturbation(),
    )
    scene = render_scene(env, state, settle_steps=1, center_crop=True, crop_area=0.9)
    intrinsics = policy_intrinsics(env, render_size, center_crop=True, crop_area=0.9)
    model, data = env.sim.model._model, env.sim.data._data
    eef = np.asarray(data.site_xpos[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "gripper0_grip_site")])
    results = {}
    for view_index, view in enumerate(LIBERO_CAMERAS):
        pose = scene.camera_poses[view_index]
        depth = scene.depth[view_index]
        # Candidate world points: a grid around the end effector / table, dropped onto the first surface below.
        span = 0.35 if view == "primary" else 0.12
        grid = np.linspace(-span, span, 15)
        points, on_mesh = [], []
        for dx in grid:
            for dy in grid:
                start = np.array([eef[0] + dx, eef[1] + dy, 2.5])
                distance, geom = ray(model, data, start, np.array([0.0, 0.0, -1.0]))
                if distance > 0:
                    points.append(start - np.array([0.0, 0.0, distance]))
                    # MuJoCo 2.3's mj_ray meets a mesh's convex hull, not the rendered surface: such points only
                    # serve the mirrored-pixel check.
                    on_mesh.append(bool(model.geom_type[geom] == mujoco.mjtGeom.mjGEOM_MESH))
        points = np.array(points)
        pixels, z = project_points(points, pose, intrinsics[view])
        checked = []
        for point, (u, v), point_z, mesh in zip(points, pixels, z, on_mesh, strict=True):
            if not (EDGE_RADIUS <= u < depth.shape[1] - EDGE_RADIUS - 1) or point_z <= 0:
                continue
            if not EDGE_RADIUS <= v < depth.shape[0] - EDGE_RADIUS - 1:
                continue
            to_point = point - pose[:3, 3]
            if ray(model, data, pose[:3, 3], to_point)[0] < np.linalg.norm(to_point) - 2e-3:
                continue  # occluded from this camera
            row, column = int(v), int(u)
            neighbourhood = depth[
                row - EDGE_RADIUS : row + EDGE_RADIUS + 2, column - EDGE_RADIUS : column + EDGE_RADIUS + 2
            ]
            if neighbourhood.max() - neighbourhood.min() > 0.05 * point_z:
                continue  # near a depth edge: the lanczos3 resize mixes surfaces within its support there
            mirrored = bilinear(depth, depth.shape[1] - 1 - u, v)  # where an unflipped chain would read
            checked.append(
                {"z": float(point_z), "depth": bilinear(depth, u, v), "mirrored_depth": mirrored, "on_mesh": mesh}
            )
        results[view] = checked
    env.close()
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main(int(sys.argv[1]))
