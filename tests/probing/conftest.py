"""Fixtures of the depth-probing tests: a small rendered data set (two suites) and tiny checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prismatic.policy.components import save_component_state_dict
from prismatic.spatial_forcing import AlignProjector
from prismatic.testing.tiny_checkpoints import write_tiny_base_checkpoints
from prismatic.testing.tiny_vla import save_tiny_vla_checkpoint
from vggt.models.vggt import VGGT

REPO_ROOT = Path(__file__).resolve().parents[2]
# Two suites (in-suite and cross-suite), task 0 of each, 2 initial states x (state + 1 perturbation) = 8 scenes.
DATA_FLAGS = [
    "--suites", "[libero_spatial,libero_object]",
    "--task_ids", "[0]",
    "--num_init_states", "2",
    "--num_perturbations", "1",
    "--env_img_res", "64",
    "--settle_steps", "1",
    "--preview_scenes", "3",
]  # fmt: skip


# One thread per tool process: on a shared, busy CPU, torch's thread pool waits on preempted threads.
TOOL_ENV = {"USE_TF": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


def sim_env(tmp_root: Path) -> dict[str, str]:
    """Environment of a rendering subprocess: no TensorFlow, a private LIBERO config folder."""
    return {**os.environ, **TOOL_ENV, "LIBERO_CONFIG_PATH": str(tmp_root / "libero_config")}


def run_tool(args: list[str], env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=env or {**os.environ, **TOOL_ENV},
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert completed.returncode == 0, f"{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}"
    return completed


@pytest.fixture(scope="session")
def probe_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A depth-probe data folder rendered by make_depth_probe_data.py (about a minute on 2 CPU cores)."""
    root = tmp_path_factory.mktemp("probe_data")
    out_dir = root / "data"
    run_tool(["vla-scripts/make_depth_probe_data.py", "--out_dir", str(out_dir), *DATA_FLAGS], env=sim_env(root))
    return out_dir


@pytest.fixture(scope="session")
def libero_norm_stats() -> dict:
    return {
        "libero_spatial_no_noops": {
            "action": {"q01": [-1.0] * 6 + [0.0], "q99": [1.0] * 7, "mask": [True] * 6 + [False]},
            "proprio": {
                "q01": [-0.5, -0.5, 0.5, 2.5, -1.0, -1.0, 0.0, -0.05],
                "q99": [0.5, 0.5, 1.5, 3.5, 1.0, 1.0, 0.05, 0.0],
            },
        }
    }


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory, libero_norm_stats: dict) -> list[Path]:
    """Two tiny checkpoints in the released layout (different seeds), the second with an align projector."""
    root = tmp_path_factory.mktemp("checkpoints")
    first = save_tiny_vla_checkpoint(root / "tiny-oft", seed=0, norm_stats=libero_norm_stats, with_heads=True)
    second = save_tiny_vla_checkpoint(root / "tiny-sf", seed=1, norm_stats=libero_norm_stats, with_heads=True)
    return [first, second]


@pytest.fixture(scope="session")
def tiny_vggt_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, vggt_path = write_tiny_base_checkpoints(tmp_path_factory.mktemp("vggt"))
    return vggt_path


@pytest.fixture
def single_thread():
    """Run torch on one thread for the test (probe training on a shared, busy CPU), then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_sf_checkpoint(tiny_checkpoints: list[Path], tiny_vggt_path: Path) -> Path:
    """The second tiny checkpoint with an ``align_projector--latest_checkpoint.pt`` fitting the tiny VGGT."""
    checkpoint = tiny_checkpoints[1]
    vggt = VGGT.from_checkpoint(tiny_vggt_path)
    torch.manual_seed(3)
    projector = AlignProjector(vla_dim=64, vggt_dim=vggt.embed_dim, use_vlm_norm=True)
    save_component_state_dict(projector, checkpoint / "align_projector--latest_checkpoint.pt")
    return checkpoint
