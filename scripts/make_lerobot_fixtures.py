"""Writes tiny LeRobot datasets with the installed ``lerobot`` (run by make_lerobot_fixtures.sh in a throw-away venv).

Two datasets per lerobot version, named ``<kind>_<suffix>``:
  libero_like: 2 cameras (``observation.images.image``, ``observation.images.wrist_image``, 32x32 video),
               8-D ``observation.state``, 7-D ``action``, 5 episodes of 12-18 frames, 2 tasks;
  aloha_like:  3 cameras (``observation.images.cam_high``, ``..cam_left_wrist``, ``..cam_right_wrist``, 32x32
               video), 14-D state and action, 4 episodes of 12-16 frames.
Images are smooth colour gradients that move with the state (so a model can learn something from them); states
are random walks and actions the next state's differences, all drawn from a fixed seed.
"""

from __future__ import annotations

import argparse
import shutil
from importlib.metadata import version
from pathlib import Path

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset

SIDE = 32
FPS = 10


def _features(cameras: list[str], state_dim: int, action_dim: int) -> dict:
    features = {
        f"observation.images.{camera}": {
            "dtype": "video",
            "shape": (SIDE, SIDE, 3),
            "names": ["height", "width", "channels"],
        }
        for camera in cameras
    }
    features["observation.state"] = {"dtype": "float32", "shape": (state_dim,), "names": None}
    features["action"] = {"dtype": "float32", "shape": (action_dim,), "names": None}
    return features


def _image(rng_offset: float, state: np.ndarray, camera_index: int) -> np.ndarray:
    rows, cols = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    phase = float(state[0] + state[1] * 0.5) + camera_index + rng_offset
    red = 0.5 + 0.5 * np.sin(2 * np.pi * (rows + phase))
    green = 0.5 + 0.5 * np.cos(2 * np.pi * (cols - phase))
    blue = 0.5 + 0.5 * np.sin(2 * np.pi * (rows + cols) * (1 + camera_index))
    return (np.stack([red, green, blue], axis=-1) * 255).astype(np.uint8)


def write_dataset(root: Path, cameras: list[str], dim: tuple[int, int], lengths: list[int], tasks: list[str]) -> None:
    state_dim, action_dim = dim
    rng = np.random.default_rng(len(cameras) * 1000 + state_dim)
    if root.exists():
        shutil.rmtree(root)
    dataset = LeRobotDataset.create(
        repo_id=f"fixtures/{root.name}",
        fps=FPS,
        features=_features(cameras, state_dim, action_dim),
        robot_type="fixture",
        root=root,
        use_videos=True,
    )
    is_v3 = hasattr(dataset, "finalize")
    for episode, length in enumerate(lengths):
        task = tasks[episode % len(tasks)]
        states = np.cumsum(rng.normal(0.0, 0.1, size=(length + 1, state_dim)), axis=0).astype(np.float32)
        actions = np.zeros((length, action_dim), np.float32)
        actions[:, : min(state_dim, action_dim)] = (states[1:] - states[:-1])[:, :action_dim] * 10.0
        actions[:, -1] = np.where(states[:-1, -1] > states[0, -1], 1.0, -1.0)  # a gripper-like +-1 dimension
        for t in range(length):
            frame = {f"observation.images.{c}": _image(episode * 0.1, states[t], i) for i, c in enumerate(cameras)}
            frame["observation.state"] = states[t]
            frame["action"] = actions[t]
            if is_v3:
                dataset.add_frame({**frame, "task": task})
            else:
                dataset.add_frame(frame, task=task)
        dataset.save_episode()
    if is_v3:
        dataset.finalize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out_dir", type=Path, required=True)
    parser.add_argument("--suffix", required=True, help="v21 or v30: appended to the dataset names")
    args = parser.parse_args()
    print(f"lerobot {version('lerobot')}, torch {version('torch')}, av {version('av')}")
    write_dataset(
        args.out_dir / f"libero_like_{args.suffix}",
        ["image", "wrist_image"],
        (8, 7),
        [14, 18, 12, 16, 15],
        ["put the bowl on the plate", "open the drawer"],
    )
    write_dataset(
        args.out_dir / f"aloha_like_{args.suffix}",
        ["cam_high", "cam_left_wrist", "cam_right_wrist"],
        (14, 14),
        [12, 16, 14, 13],
        ["transfer the cube"],
    )


if __name__ == "__main__":
    main()
