"""Records a short LIBERO demonstration in LIBERO's HDF5 layout and, separately, the direct render of its kept steps.

Run as a script in a fresh process (it renders, so it must not share a process with TensorFlow):

    python tests/eval/record_libero_demo.py OUT_HDF5 OUT_EXPECTED_NPZ IMAGE_SIZE

The demo is libero_spatial task 0 from its first initial state: no-op steps (arm still, gripper unchanged) between
moves. The expected file holds what a direct render sees before each non-no-op step when stepping a fresh env from
the same initial state through the non-no-op actions only.
"""

from __future__ import annotations

import json
import sys

import h5py
import numpy as np

from experiments.robot.image_utils import rotate_180
from experiments.robot.libero.libero_utils import get_libero_env, robot_state
from experiments.robot.libero.sim_setup import configure_rendering, prepare_libero

MOVE = [0.3, 0.0, -0.2, 0.0, 0.0, 0.1, -1.0]
STILL = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]
CLOSE = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
ACTIONS = np.asarray([STILL, STILL, MOVE, MOVE, STILL, CLOSE, CLOSE, MOVE], np.float32)
KEPT = np.asarray([False, False, True, True, False, True, False, True])  # CLOSE again: gripper unchanged, a no-op


def main(hdf5_path: str, expected_path: str, image_size: int) -> None:
    configure_rendering()
    prepare_libero()
    from libero.libero import benchmark

    task_suite = benchmark.get_benchmark_dict()["libero_spatial"]()
    task = task_suite.get_task(0)
    bddl_file = task_suite.get_task_bddl_file_path(0)
    initial_state = task_suite.get_task_init_states(0)[0]

    env = get_libero_env(bddl_file, image_size)
    env.reset()
    obs = env.set_init_state(initial_state)
    recorded = {"agentview_rgb": [], "eye_in_hand_rgb": [], "ee_states": [], "gripper_states": [], "joint_states": []}
    states = []
    for action in ACTIONS:
        states.append(env.sim.get_state().flatten())
        recorded["agentview_rgb"].append(obs["agentview_image"])
        recorded["eye_in_hand_rgb"].append(obs["robot0_eye_in_hand_image"])
        recorded["ee_states"].append(robot_state(obs)[:6])
        recorded["gripper_states"].append(obs["robot0_gripper_qpos"])
        recorded["joint_states"].append(obs["robot0_joint_pos"])
        obs, _, _, _ = env.step(action.tolist())
    env.close()
    with h5py.File(hdf5_path, "w") as hdf5_file:
        data = hdf5_file.create_group("data")
        data.attrs["problem_info"] = json.dumps({"language_instruction": task.language, "problem_name": task.name})
        data.attrs["bddl_file_name"] = bddl_file
        data.attrs["env_args"] = json.dumps({"env_name": task.name})
        demo = data.create_group("demo_0")
        demo.create_dataset("actions", data=ACTIONS)
        demo.create_dataset("states", data=np.stack(states))
        for name, values in recorded.items():
            demo.create_dataset(f"obs/{name}", data=np.stack(values))

    env = get_libero_env(bddl_file, image_size)
    env.reset()
    obs = env.set_init_state(initial_state)
    expected = {"images": [], "wrist_images": [], "states": []}
    for action in ACTIONS[KEPT]:
        expected["images"].append(rotate_180(obs["agentview_image"]))
        expected["wrist_images"].append(rotate_180(obs["robot0_eye_in_hand_image"]))
        expected["states"].append(robot_state(obs).astype(np.float32))
        obs, _, _, _ = env.step(action.tolist())
    env.close()
    np.savez(expected_path, actions=ACTIONS[KEPT], **{name: np.stack(values) for name, values in expected.items()})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
