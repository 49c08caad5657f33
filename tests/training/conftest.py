"""Tiny base checkpoints and a synthetic LIBERO dataset, shared by the training tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prismatic.testing.tiny_checkpoints import tiny_finetune_flags

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASET_NAME = "libero_spatial_no_noops"
LEROBOT_FIXTURES = REPO_ROOT / "tests" / "data" / "lerobot_fixtures"


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    from prismatic.testing.tiny_checkpoints import write_tiny_base_checkpoints

    return write_tiny_base_checkpoints(tmp_path_factory.mktemp("ckpts"))


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    from prismatic.vla.datasets.synthetic import SyntheticLiberoConfig, write_synthetic_libero

    root = tmp_path_factory.mktemp("data")
    write_synthetic_libero(
        SyntheticLiberoConfig(data_root_dir=root, dataset_name=DATASET_NAME, num_episodes=12, episode_length=24)
    )
    return root


def write_small_synthetic_data(root: Path, with_depth: bool) -> Path:
    """4 synthetic LIBERO episodes of 12 frames at 32 px, with depth and intrinsics when asked (--teacher geometry)."""
    from prismatic.vla.datasets.synthetic import SyntheticLiberoConfig, write_synthetic_libero

    write_synthetic_libero(
        SyntheticLiberoConfig(
            data_root_dir=root,
            dataset_name=DATASET_NAME,
            num_episodes=4,
            episode_length=12,
            image_size=32,
            seed=1,
            with_depth=with_depth,
        )
    )
    return root


@pytest.fixture(scope="session")
def depth_data(tmp_path_factory) -> Path:
    return write_small_synthetic_data(tmp_path_factory.mktemp("depth_data"), with_depth=True)


@pytest.fixture(scope="module")
def lerobot_root(tmp_path_factory) -> Path:
    """A copy of the committed LeRobot fixtures (v2.1 / v3.0, LIBERO-like and ALOHA-like)."""
    root = tmp_path_factory.mktemp("lerobot") / "data"
    shutil.copytree(LEROBOT_FIXTURES, root)
    return root


def tiny_flags(tiny_checkpoints: tuple[Path, Path], data_root: Path, run_root: Path, **overrides) -> list[str]:
    """Command-line flags of a tiny Spatial Forcing run (the paper's flags, tiny sizes)."""
    vla_dir, vggt_path = tiny_checkpoints
    overrides.setdefault("run_id_override", "tiny-run")
    return tiny_finetune_flags(vla_dir, vggt_path, data_root, run_root, DATASET_NAME, **overrides)


def run_script(script: str, flags: list[str], nproc: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs a vla-scripts CLI (under torchrun when ``nproc`` > 1) and returns the finished process."""
    env = {**os.environ, "USE_TF": "0", "WANDB_MODE": "disabled", "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}
    path = str(REPO_ROOT / "vla-scripts" / script)
    if nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", path]
    else:
        command = [sys.executable, path]
    return subprocess.run(command + flags, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO_ROOT)
