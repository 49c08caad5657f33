"""generate_libero_demos.py end to end in the real simulator: one oracle demonstration of libero_spatial task 0 at
64 px, written as LeRobot v3.0 with its sidecar (depth, camera geometry, MuJoCo states, phases); a rerun resumes
without new attempts. Runs in fresh processes (``USE_TF=0``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.robot.libero.demo_generation import SETTLE_STEPS
from prismatic.oracle.libero_pick_place import Phase
from prismatic.vla.datasets.lerobot import LeRobotMapping, open_lerobot
from prismatic.vla.datasets.libero_hdf5 import noop_mask

REPO_ROOT = Path(__file__).resolve().parents[2]
SIZE = 64


def _generate(out: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "USE_TF": "0", "PYTHONPATH": str(REPO_ROOT), "LIBERO_CONFIG_PATH": str(tmp_path / "libero")}
    command = [
        sys.executable, "vla-scripts/generate_libero_demos.py", "--task_suite_name", "libero_spatial",
        "--task_ids", "[0]", "--num_demos", "1", "--image_size", str(SIZE), "--format", "lerobot",
        "--num_workers", "1", "--data_root_dir", str(out),
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed


@pytest.mark.sim
@pytest.mark.slow
def test_one_oracle_demonstration_with_sidecar_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "demos"
    first = _generate(out, tmp_path)
    assert "task 0: oracle success 1/1 (100%), 1 demonstrations kept" in first.stdout

    (attempt,) = sorted((out / "libero_spatial_oracle_work" / "task00").glob("attempt*.npz"))
    with np.load(attempt) as demo:
        steps = len(demo["actions"])
        assert 60 < steps < 200 and bool(demo["success"])
        assert demo["images"].shape == demo["wrist_images"].shape == (steps, SIZE, SIZE, 3)
        assert demo["depth"].shape == (steps, 2, SIZE, SIZE) and demo["depth"].dtype == np.uint16
        # Metric depth in mm: the table and scene lie between 0.3 m and 3 m from the agentview camera.
        assert 300 < np.median(demo["depth"][0, 0]) < 3000
        assert demo["extrinsics"].shape == (steps, 2, 4, 4) and demo["intrinsics"].shape == (2, 3, 3)
        assert not np.allclose(demo["extrinsics"][0, 1], demo["extrinsics"][-1, 1])  # the wrist camera moves
        np.testing.assert_allclose(demo["extrinsics"][0, 0], demo["extrinsics"][-1, 0])  # agentview does not
        phases = [Phase(int(phase)) for phase in demo["phases"]]
        assert phases[0] == Phase.APPROACH and phases[-1] == Phase.RETREAT
        assert {Phase.CLOSE, Phase.CARRY, Phase.RELEASE} <= set(phases)
        assert not noop_mask(demo["actions"]).any() and int(demo["num_noops"]) >= SETTLE_STEPS  # settling dropped
        assert demo["mujoco_states"].shape[0] == steps
        actions, states = demo["actions"], demo["states"]

    source = open_lerobot(out, "libero_spatial_oracle_lerobot", LeRobotMapping())
    assert [episode.length for episode in source.episodes] == [steps]
    np.testing.assert_array_equal(source.actions, actions)
    np.testing.assert_array_equal(source.states, states)
    assert (
        source.instructions[0] == "pick up the black bowl between the plate and the ramekin and place it on the plate"
    )

    modified = attempt.stat().st_mtime_ns
    second = _generate(out, tmp_path)
    assert "task 0: oracle success 1/1 (100%)" in second.stdout
    assert attempt.stat().st_mtime_ns == modified  # the finished attempt was not run again
