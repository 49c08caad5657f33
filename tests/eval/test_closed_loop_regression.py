"""The closed-loop regression check: a policy built from oracle demonstrations must succeed in LIBERO on held-out
benchmark initial states, through the whole evaluation chain.

The policy is a nearest-neighbour look-up over the training frames
(``experiments.robot.libero.nearest_neighbour_policy``) whose committed files (``tests/eval/data/closed_loop_nn``:
pooled image features, normalised proprio and action chunks, dataset statistics and policy config, read from the RLDS
demonstrations by ``scripts/closed_loop_regression.py --stage build``) become a checkpoint folder with a tiny VLA; the
episodes then run the checkpoint loading, the observation's rotation and resizing, the processor, the state
normalisation, the un-normalisation, the chunk's order and the gripper post-processing. A broken link (``BREAKAGES``:
gripper, image orientation, normalisation, chunk order, camera order) makes it fail: see
docs/reference/demonstrations.md for the measured runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.sim, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
EPISODES = 3
MIN_SUCCESSES = 2  # of EPISODES held-out initial states: measured 2/3 intact, 0/2 with each link broken


def run_check(tmp_path: Path, breakage: str) -> dict:
    env = {**os.environ, "USE_TF": "0", "PYTHONPATH": str(REPO_ROOT), "LIBERO_CONFIG_PATH": str(tmp_path / "libero")}
    command = [
        sys.executable, "scripts/closed_loop_regression.py", "--stage", "episodes", "--episodes", str(EPISODES),
        "--breakages", f"[{breakage}]",
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_nearest_neighbour_policy_succeeds_on_held_out_initial_states(tmp_path: Path) -> None:
    result = run_check(tmp_path, "none")
    assert result["breakage"] == "none" and len(result["episodes"]) == EPISODES
    assert result["successes"] >= MIN_SUCCESSES, result
