"""Records two short LIBERO demonstrations in LIBERO's HDF5 layout and, separately, what upstream's regeneration sees.

Run as a script in a fresh process (it renders, so it must not share a process with TensorFlow):

    python tests/eval/record_libero_demo.py OUT_HDF5 OUT_EXPECTED_NPZ IMAGE_SIZE

The demos are libero_spatial task 0 from its first two initial states: no-op steps (arm still, gripper unchanged)
between moves. The expected file holds, per demo, the direct render before each non-no-op step when replaying as
upstream's ``regenerate_libero_dataset.py`` does: one env seeded once, per demo ``env.reset()``, the initial state,
10 dummy steps, then the non-no-op actions. It also holds demo 1 replayed on a fresh env (no earlier reset) and
demo 0 without the dummy steps, the two shortcuts the regeneration once took.
"""

from __future__ import annotations

import json
import sys

import h5py
import numpy as np

from experiments.robot.libero.libero_utils import LIBERO_DUMMY_ACTION, get_libero_env, robot_state
from experiments.robot.libero.sim_setup import configure_rendering, prepare_libero
from prismatic.vla.image_utils import rotate_180

MOVE = [0.3, 0.0, -0.2, 0.0, 0.0, 0.1, -1.0]
STILL = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]
CLOSE = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
ACTIONS = np.asarray([STILL, STILL, MOVE, MOVE, STILL, CLOSE, CLOSE, MOVE], np.float32)
KEPT = np.asarray([False, False, True, True, False, True, False, True])  # CLOSE again: gripper unchanged, a no-op
NUM_DEMOS = 2
SETTLE_STEPS = 10  # upstream's regeneration


def render_kept_steps(env, obs: dict, prefix: str, into: dict) -> None:
    for action in ACTIONS[KEPT]:
        into.setdefault(f"{prefix}images", []).append(rotate_180(obs["agentview_image"]))
        into.setdefault(f"{prefix}wrist_images", []).append(rotate_180(obs["robot0_eye_in_hand_image"]))
        into.setdefault(f"{prefix}states", []).append(robot_state(obs).astype(np.float32))
        obs, _, _, _ = env.step(action.tolist())


def settle(env, obs: dict) -> dict:
    for _ in range(SETTLE_STEPS):
        obs, _, _, _ = env.step(list(LIBERO_DUMMY_ACTION))
    return obs


def main(hdf5_path: str, expected_path: str, image_size: int) -> None:
    configure_rendering()
    prepare_libero()
    from libero.libero import benchmark

    task_suite = benchmark.get_benchmark_dict()["libero_spatial"]()
    task = task_suite.get_task(0)
    bddl_file = task_suite.get_task_bddl_file_path(0)
    initial_states = task_suite.get_task_init_states(0)[:NUM_DEMOS]

    with h5py.File(hdf5_path, "w") as hdf5_file:
        data = hdf5_file.create_group("data")
        data.attrs["problem_info"] = json.dumps({"language_instruction": task.language, "problem_name": task.name})
        data.attrs["bddl_file_name"] = bddl_file
        data.attrs["env_args"] = json.dumps({"env_name": task.name})
        env = get_libero_env(bddl_file, image_size)
        for index, initial_state in enumerate(initial_states):
            env.reset()
            obs = env.set_init_state(initial_state)
            recorded = {"agentview_rgb": [], "eye_in_hand_rgb": [], "ee_states": [], "gripper_states": []}
            states = []
            for action in ACTIONS:
                states.append(env.sim.get_state().flatten())
                recorded["agentview_rgb"].append(obs["agentview_image"])
                recorded["eye_in_hand_rgb"].append(obs["robot0_eye_in_hand_image"])
                recorded["ee_states"].append(robot_state(obs)[:6])
                recorded["gripper_states"].append(obs["robot0_gripper_qpos"])
                obs, _, _, _ = env.step(action.tolist())
            demo = data.create_group(f"demo_{index}")
            demo.create_dataset("actions", data=ACTIONS)
            demo.create_dataset("states", data=np.stack(states))
            for name, values in recorded.items():
                demo.create_dataset(f"obs/{name}", data=np.stack(values))
        env.close()

    expected: dict[str, list[np.ndarray]] = {}
    env = get_libero_env(bddl_file, image_size)  # upstream: one env per task, demos in order
    for index, initial_state in enumerate(initial_states):
        env.reset()
        render_kept_steps(env, settle(env, env.set_init_state(initial_state)), f"demo_{index}/", expected)
    env.close()
    env = get_libero_env(bddl_file, image_size)  # shortcut 1: a fresh env for demo 1
    env.reset()
    render_kept_steps(env, settle(env, env.set_init_state(initial_states[1])), "fresh_env_demo_1/", expected)
    env.close()
    env = get_libero_env(bddl_file, image_size)  # shortcut 2: no dummy steps before demo 0
    env.reset()
    render_kept_steps(env, env.set_init_state(initial_states[0]), "no_settle_demo_0/", expected)
    env.close()
    np.savez(expected_path, actions=ACTIONS[KEPT], **{name: np.stack(values) for name, values in expected.items()})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
