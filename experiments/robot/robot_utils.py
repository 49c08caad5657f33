"""Robot-agnostic evaluation helpers: seeding, gripper post-processing and the environment fingerprint."""

from __future__ import annotations

import os
import platform
import random
import sys
from importlib import metadata

import numpy as np
import torch

from prismatic.vla.policy_config import GRIPPER_CONVENTIONS

# Packages whose versions most often explain a failed reproduction, in the order the log lists them.
FINGERPRINT_PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "timm",
    "peft",
    "numpy",
    "pillow",
    "mujoco",
    "robosuite",
    "libero",
)


def set_seed_everywhere(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) and make cuDNN deterministic, as upstream does once per run.

    Also fixes torch's CPU thread count at its current value: this turns off MKL's per-call choice of threads
    (``mkl_set_dynamic(false)``), and CPU results change with the thread count (by about 1e-7 for the tiny test
    model, enough to change a rollout).
    """
    torch.set_num_threads(torch.get_num_threads())
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    np.random.seed(seed)
    random.seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    os.environ["PYTHONHASHSEED"] = str(seed)


def normalize_gripper_action(action: np.ndarray, binarize: bool = True) -> np.ndarray:
    """Map the gripper dimension (last) from [0, 1] to [-1, +1], optionally to its sign; returns a copy."""
    normalized = np.array(action, dtype=np.float64, copy=True)
    normalized[..., -1] = 2.0 * normalized[..., -1] - 1.0
    if binarize:
        normalized[..., -1] = np.sign(normalized[..., -1])
    return normalized


def invert_gripper_action(action: np.ndarray) -> np.ndarray:
    """Flip the sign of the gripper dimension (RLDS data uses 1 = open; LIBERO expects -1 = open); returns a copy."""
    inverted = np.array(action, dtype=np.float64, copy=True)
    inverted[..., -1] *= -1.0
    return inverted


def postprocess_actions(actions: np.ndarray, gripper: str) -> np.ndarray:
    """Actions in the dataset's frame -> the robot's command, by the checkpoint's gripper convention
    (``PolicyConfig.embodiment.gripper``); returns a float64 copy. Used by the policy server and the simulator workers.

    ``"libero"``: the gripper (last dim, 1 = open) binarised to the sign of [-1, +1] and inverted to LIBERO's
    -1 = open (upstream's ``normalize_gripper_action`` + ``invert_gripper_action``); ``"none"``: as predicted.
    """
    if gripper == "libero":
        return invert_gripper_action(normalize_gripper_action(actions, binarize=True))
    if gripper == "none":
        return np.array(actions, dtype=np.float64, copy=True)
    raise ValueError(f"gripper convention {gripper!r}: expected one of {GRIPPER_CONVENTIONS}")


def package_version(name: str) -> str:
    """Installed version of a distribution, or ``"not installed"``."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_fingerprint() -> dict[str, str]:
    """Python, key package versions, accelerator and rendering backend of this process."""
    fingerprint = {"python": sys.version.split()[0], "platform": platform.platform()}
    fingerprint.update({name: package_version(name) for name in FINGERPRINT_PACKAGES})
    fingerprint["cuda"] = str(torch.version.cuda)
    fingerprint["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"
    fingerprint["MUJOCO_GL"] = os.environ.get("MUJOCO_GL", "unset")
    return fingerprint
