"""Fixtures for the evaluation tests: real LIBERO camera frames, dataset statistics and a tiny checkpoint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prismatic.testing.tiny_vla import save_tiny_vla_checkpoint
from prismatic.vla.constants import NormalizationType, PlatformConstants
from prismatic.vla.image_utils import resize_image_for_policy
from prismatic.vla.policy_config import EmbodimentConfig, PolicyConfig, write_policy_config

REPO_ROOT = Path(__file__).resolve().parents[2]

DATA_DIR = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def libero_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One LIBERO config folder for every in-process test (libero.libero fixes its config path at first import)."""
    config_dir = tmp_path_factory.mktemp("libero_config")
    patch = pytest.MonkeyPatch()
    patch.setenv("LIBERO_CONFIG_PATH", str(config_dir))
    yield config_dir
    patch.undo()


@pytest.fixture(scope="session")
def agentview_frame() -> np.ndarray:
    """A raw (upside-down) 256 x 256 third-person frame rendered by LIBERO (libero_spatial task 0)."""
    return np.asarray(Image.open(DATA_DIR / "libero_agentview_256.png").convert("RGB"))


@pytest.fixture(scope="session")
def wrist_frame() -> np.ndarray:
    """The matching raw 256 x 256 wrist-camera frame."""
    return np.asarray(Image.open(DATA_DIR / "libero_wrist_256.png").convert("RGB"))


INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"


@pytest.fixture(scope="session")
def request_payload(agentview_frame: np.ndarray, wrist_frame: np.ndarray) -> dict:
    """openpi's LIBERO request: a 224 x 224 third-person frame (as its client sends) and a raw 256 x 256 wrist frame."""
    return {
        "observation/image": resize_image_for_policy(agentview_frame[::-1, ::-1]),
        "observation/wrist_image": np.ascontiguousarray(wrist_frame[::-1, ::-1]),
        "observation/state": np.array([-0.2, 0.01, 1.19, 3.14, 0.01, -0.08, 0.039, -0.039]),
        "prompt": INSTRUCTION,
    }


@pytest.fixture(scope="session")
def libero_norm_stats() -> dict:
    """Statistics shaped like LIBERO's: BOUNDS_Q99 actions with an unnormalised gripper, 8-D proprio."""
    return {
        "libero_spatial_no_noops": {
            "action": {
                "q01": [-0.7, -0.8, -0.9, -0.1, -0.15, -0.3, 0.0],
                "q99": [0.9, 0.8, 0.9, 0.1, 0.2, 0.3, 1.0],
                "mask": [True] * 6 + [False],
            },
            "proprio": {
                "q01": [-0.3, -0.3, 0.9, 2.9, -0.5, -0.5, 0.0, -0.04],
                "q99": [0.2, 0.3, 1.3, 3.3, 0.5, 0.5, 0.04, 0.0],
            },
            "num_transitions": 100,
            "num_trajectories": 2,
        }
    }


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, libero_norm_stats: dict) -> Path:
    """A tiny randomly initialised checkpoint in the released fine-tuned layout (merged model, heads, stats)."""
    out_dir = tmp_path_factory.mktemp("checkpoints") / "tiny-sf-libero-spatial"
    return save_tiny_vla_checkpoint(out_dir, seed=0, norm_stats=libero_norm_stats, with_heads=True)


@pytest.fixture(scope="session")
def tiny_pi0_checkpoint(tmp_path_factory: pytest.TempPathFactory, libero_norm_stats: dict) -> Path:
    """A tiny randomly initialised pi0 checkpoint as ``finetune_align.py --model_family pi0`` writes it."""
    from prismatic.testing.pi0_tiny import write_tiny_pi0_policy

    return write_tiny_pi0_policy(tmp_path_factory.mktemp("checkpoints"), libero_norm_stats)


def run_in_fresh_process(code: str, tmp_path: Path) -> str:
    """Runs Python ``code`` (simulator-worker code) in a fresh process without TensorFlow, with its own LIBERO config;
    asserts it succeeded and returns its stdout."""
    env = {**os.environ, "USE_TF": "0", "LIBERO_CONFIG_PATH": str(tmp_path / "libero_config")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed.stdout


@pytest.fixture(scope="session")
def lerobot_tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """The tiny checkpoint with the ``policy_config.json`` a LeRobot-trained one records: LeRobot's embodiment
    (``gripper: "none"``: actions in the data's own units, e.g. LIBERO's raw -1 open / +1 close), its cameras."""
    out_dir = tmp_path_factory.mktemp("checkpoints") / "tiny-lerobot-libero"
    shutil.copytree(tiny_checkpoint, out_dir)
    platform = PlatformConstants("lerobot", 8, 7, 8, NormalizationType.BOUNDS_Q99)
    cameras = ["observation.images.image", "observation.images.wrist_image"]
    embodiment = EmbodimentConfig.from_platform(platform, camera_names=cameras, gripper="none", gripper_dims=[])
    write_policy_config(out_dir, PolicyConfig(unnorm_key="libero_spatial_no_noops", embodiment=embodiment))
    return out_dir
