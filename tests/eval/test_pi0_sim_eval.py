"""``run_libero_eval.py --model_family pi0`` in the real LIBERO simulator: a tiny pi0 checkpoint runs one short
episode of libero_spatial task 0 (2 wait steps, at most 2 policy steps, 64 x 64 cameras) in a fresh process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.eval.test_sim_eval import run_eval

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def test_tiny_pi0_runs_a_libero_episode(tiny_pi0_checkpoint: Path, tmp_path: Path):
    env = {**os.environ, "USE_TF": "0", "WANDB_MODE": "disabled", "LIBERO_CONFIG_PATH": str(tmp_path / "libero_config")}
    run = run_eval(
        tmp_path / "logs", env, tiny_pi0_checkpoint, "pi0", "--model_family", "pi0", "--num_trials_per_task", "1"
    )
    (record,) = run.records
    assert (record["task_id"], record["episode"], record["steps"], record["error"]) == (0, 0, 2, None)
    assert record["success"] is False and len(record["final_state"]) == 8
    assert "\n  model_family: pi0\n" in run.log
    assert "pi0--summary.json" in run.files
