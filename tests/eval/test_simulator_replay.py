"""The simulator comparison (scripts/compare_simulators.sh): seeded actions, the replay, and the divergence report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.robot.libero.simulator_replay import (
    ACTION_HOLD_STEPS,
    DUMMY_ACTION,
    RECORDED,
    compare,
    format_report,
    random_actions,
)


def test_random_actions_are_seeded_held_and_in_range() -> None:
    actions = random_actions(np.random.default_rng([0, 1]), 12)
    assert actions.shape == (12, 7)
    np.testing.assert_array_equal(actions, random_actions(np.random.default_rng([0, 1]), 12))
    assert not np.array_equal(actions, random_actions(np.random.default_rng([0, 2]), 12))
    assert np.abs(actions[:, :6]).max() <= 1.0 and set(np.unique(actions[:, 6])) <= {-1.0, 1.0}
    np.testing.assert_array_equal(actions[0], actions[ACTION_HOLD_STEPS - 1])  # held
    assert not np.array_equal(actions[0], actions[ACTION_HOLD_STEPS])


def recording(qpos: np.ndarray, eef_quat: np.ndarray) -> dict[str, np.ndarray]:
    index = [{"name": "libero_goal/task0/init0", "suite": "libero_goal", "bddl": "x.bddl", "num_noops": 2}]
    steps = len(qpos)
    states = {"qpos": qpos, "qvel": np.zeros((steps, 2)), "eef_pos": qpos[:, :3], "eef_quat": eef_quat}
    arrays = {f"libero_goal/task0/init0/{key}": states[key] for key in RECORDED}
    arrays["index"] = np.array(json.dumps(index))
    return arrays


def test_compare_reports_largest_differences_and_first_divergent_step() -> None:
    qpos = np.zeros((6, 3))
    identity = np.tile([0.0, 0.0, 0.0, 1.0], (6, 1))
    moved, turned = qpos.copy(), identity.copy()
    moved[4, 1] = 0.25  # step 4 differs by 0.25 in qpos and eef position
    moved[1, 0] = 5e-7  # below the divergence threshold, inside the no-op part (steps 0..2)
    turned[5] = [0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)]  # 90 degrees about z
    turned[2] = -identity[2]  # the same rotation, other sign
    report = compare(recording(qpos, identity), recording(moved, turned))
    entry = report["libero_goal"]
    assert entry["cases"] == 1 and entry["steps"] == 5
    assert entry["qpos"] == 0.25 and entry["eef_pos_m"] == 0.25 and entry["qpos_after_noops"] == 5e-7
    assert entry["first_divergent_step"] == 4
    assert entry["eef_rot_rad"] == pytest.approx(np.pi / 2, abs=1e-12)
    assert compare(recording(qpos, identity), recording(qpos, identity))["libero_goal"]["eef_rot_rad"] == 0.0
    assert "| libero_goal | 1 x 5 | 5e-07 | 0.25 | 0 | 0.25 | 1.57 | 4 |" in format_report(report, "a", "b")


@pytest.mark.sim
@pytest.mark.usefixtures("libero_config_dir")  # its LIBERO_CONFIG_PATH reaches the subprocesses
def test_replay_starts_from_the_init_state_and_repeats_exactly(tmp_path: Path) -> None:
    # The simulator runs in fresh processes: MuJoCo's GL libraries must not share a process with TensorFlow, which
    # other tests load into this one.
    cases = tmp_path / "cases.npz"
    tool = [sys.executable, "-m", "experiments.robot.libero.simulator_replay"]
    env = {**os.environ, "USE_TF": "0"}
    for command in (
        ["cases", str(cases), "--suites", "libero_spatial", "--task_ids", "0", "--init_ids", "3"],
        ["record", str(cases), str(tmp_path / "first.npz")],
        ["record", str(cases), str(tmp_path / "second.npz")],
    ):
        if command[0] == "cases":
            command += ["--num_noops", "2", "--num_steps", "4", "--seed", "0"]
        completed = subprocess.run([*tool, *command], env=env, capture_output=True, text=True, timeout=600)
        assert completed.returncode == 0, completed.stderr[-3000:]
    first, second = np.load(tmp_path / "first.npz"), np.load(tmp_path / "second.npz")
    name = "libero_spatial/task0/init3"
    actions = np.load(cases)[f"{name}/actions"]
    np.testing.assert_array_equal(actions[:2], np.tile(DUMMY_ACTION, (2, 1)))
    qpos = first[f"{name}/qpos"]
    assert qpos.shape[0] == 1 + 6
    init_state = np.load(cases)[f"{name}/init_state"]  # MuJoCo's flattened state: time, qpos, qvel
    np.testing.assert_array_equal(qpos[0], init_state[1 : 1 + qpos.shape[1]])
    assert np.abs(qpos[-1] - qpos[0]).max() > 1e-4  # the actions moved something
    report = compare(first, second)["libero_spatial"]
    assert report["qpos"] == 0.0 and report["qvel"] == 0.0 and report["first_divergent_step"] is None
    assert json.loads(str(first["versions"]))["mujoco"].count(".") == 2
