"""``run_libero_eval.py --model_family svla`` end to end in the real LIBERO simulator on the tiny golden SpatialVLA.

libero_spatial task 0, 2 wait steps, at most 2 policy steps, 64 x 64 cameras, each run a fresh process:

    "fork-first"     the LIBERO fork's settings (OpenVLA prompt, droid/1.0.0 statistics, one query per step, its
                     smoothing, center crop), run id "fork", 1 episode, with videos;
    "fork-resumed"   the same run id with 2 episodes: episode 0 is skipped, episode 1 runs;
    "fork-parallel"  2 episodes on 2 workers, one each;
    "none", "simpler", "adaptive"   the other action-execution variants, 1 episode each.

The fork's smoothing state lives with the episode, so episode 1 gives the same record whether it runs after
episode 0 in one worker or alone in another.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from prismatic.testing.spatialvla_tiny import save_tiny_spatialvla_checkpoint
from tests.eval.test_sim_eval import RunOutput, deterministic_fields, run_eval

pytestmark = pytest.mark.sim

FORK_FLAGS = (
    "--model_family", "svla",
    "--unnorm_key", "droid/1.0.0",
    "--svla_prompt", "openvla",
    "--action_ensembling", "fork",
    "--num_open_loop_steps", "1",
    "--center_crop", "True",
)  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, golden_dir: Path) -> dict[str, RunOutput]:
    root = tmp_path_factory.mktemp("svla_sim_eval")
    golden_meta = json.loads((golden_dir / "spatialvla_tiny.json").read_text())
    checkpoint = save_tiny_spatialvla_checkpoint(root / "tiny-spatialvla", golden_meta)
    env = {**os.environ, "USE_TF": "0", "WANDB_MODE": "disabled", "LIBERO_CONFIG_PATH": str(root / "libero_config")}
    log_dir = root / "logs"
    outputs = {}
    for name, run_id, flags in [
        ("fork-first", "fork", (*FORK_FLAGS, "--num_trials_per_task", "1", "--save_videos", "True")),
        ("fork-resumed", "fork", (*FORK_FLAGS, "--num_trials_per_task", "2")),
        ("fork-parallel", "fork-parallel", (*FORK_FLAGS, "--num_trials_per_task", "2", "--num_workers", "2")),
        ("none", "none", ("--model_family", "svla", "--unnorm_key", "bridge_orig/1.0.0", "--num_trials_per_task", "1")),
        ("simpler", "simpler", (*FORK_FLAGS, "--action_ensembling", "simpler", "--num_trials_per_task", "1")),
        ("adaptive", "adaptive", (*FORK_FLAGS, "--action_ensembling", "adaptive", "--num_trials_per_task", "1")),
    ]:
        outputs[name] = run_eval(log_dir, env, checkpoint, run_id, *flags)
    return outputs


def test_fork_settings_run_an_episode_with_log_jsonl_video_summary_and_chart(runs: dict):
    first = runs["fork-first"]
    for name in ("fork.txt", "fork.jsonl", "fork--config.json", "fork--summary.json", "fork--success_rates.png"):
        assert name in first.files
    (record,) = first.records
    assert (record["task_id"], record["episode"], record["steps"], record["error"]) == (0, 0, 2, None)
    assert record["success"] is False and len(record["final_state"]) == 8
    assert Path(record["video"]).exists()
    for setting in ("model_family: svla", "unnorm_key: droid/1.0.0", "action_ensembling: fork", "svla_prompt: openvla"):
        assert f"\n  {setting}\n" in first.log


def test_resumed_fork_run_skips_the_finished_episode(runs: dict):
    first, resumed = runs["fork-first"], runs["fork-resumed"]
    assert resumed.jsonl_text.startswith(first.jsonl_text)
    assert [(record["task_id"], record["episode"]) for record in resumed.records] == [(0, 0), (0, 1)]
    assert "1 episodes already finished" in resumed.log[len(first.log) :]


def test_parallel_fork_run_equals_serial_run(runs: dict):
    serial = deterministic_fields(runs["fork-resumed"].records)
    assert serial[0]["final_state"] != serial[1]["final_state"]
    assert deterministic_fields(runs["fork-parallel"].records) == serial
    assert "(on 2 of 2 workers)" in runs["fork-parallel"].log


def test_every_action_execution_variant_runs(runs: dict):
    final_states = []
    for name in ("none", "simpler", "adaptive", "fork-first"):
        (record,) = runs[name].records
        assert record["steps"] == 2 and record["error"] is None, name
        assert np.isfinite(record["final_state"]).all(), name
        final_states.append(tuple(record["final_state"]))
    assert len(set(final_states)) == len(final_states)  # the variants really execute different actions
