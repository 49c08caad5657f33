"""A tiny torchrun run's checkpoint evaluates in the LIBERO simulator from ``--pretrained_checkpoint`` and
``--task_suite_name`` alone (plus the quick-check flags): the policy's choices come from its policy_config.json.

The run trains with one camera, no proprio and no image augmentation, each the opposite of upstream's evaluation
defaults, so an evaluation that fell back to those defaults would fail (a missing wrist image, a missing proprio
projector file) instead of passing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from prismatic.vla.policy_config import read_policy_config

from .conftest import REPO_ROOT, run_script, tiny_flags

pytestmark = pytest.mark.sim


@pytest.mark.slow
def test_torchrun_checkpoint_evaluates_with_only_checkpoint_and_suite(tiny_checkpoints, synthetic_data, tmp_path):
    flags = tiny_flags(
        tiny_checkpoints,
        synthetic_data,
        tmp_path,
        max_steps=2,
        save_freq=2,
        save_latest_checkpoint_only=True,
        num_images_in_input=1,
        use_proprio=False,
        image_aug=False,
    )
    result = run_script("finetune_align.py", flags, nproc=2)
    assert result.returncode == 0, result.stderr[-4000:]
    checkpoint = tmp_path / "tiny-run"  # latest-only: the run folder itself, as upstream
    policy_config = read_policy_config(checkpoint)
    assert (policy_config.num_images_in_input, policy_config.use_proprio) == (1, False)
    assert not policy_config.image.center_crop

    log_dir = tmp_path / "eval"
    env = {**os.environ, "USE_TF": "0", "WANDB_MODE": "disabled", "LIBERO_CONFIG_PATH": str(tmp_path / "libero")}
    command = [
        sys.executable, "experiments/robot/libero/run_libero_eval.py",
        "--pretrained_checkpoint", str(checkpoint),
        "--task_suite_name", "libero_spatial",
        "--task_ids", "[0]", "--num_trials_per_task", "1", "--max_steps", "2", "--num_steps_wait", "2",
        "--env_img_res", "64", "--local_log_dir", str(log_dir), "--run_id", "eval",
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, f"{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}"
    records = [json.loads(line) for line in (log_dir / "eval.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["task_id"] == 0
