"""``run_libero_eval.py`` end to end in the real LIBERO simulator, with a tiny checkpoint, in fresh processes.

Each run is a subprocess with ``USE_TF=0`` (this pytest process may hold TensorFlow, which crashes Mesa rendering).
Episodes are capped at 2 policy steps after 2 wait steps, with 64 x 64 cameras. Three runs on libero_spatial
task 0 (about 40 s each on 2 CPU cores):

    "first"     run id "resumed", 1 episode, with videos;
    "resumed"   the same run id with 3 episodes, videos of episodes 0 and 1 only: episode 0 is skipped; one worker
                runs episode 1 in a fresh env after one replayed reset, then episode 2 right after it (upstream's
                back-to-back order);
    "parallel"  run id "parallel", 3 episodes on 2 workers: one runs episodes 0 and 1 back to back, the other
                replays two resets and runs episode 2.

Episodes 1 and 2 are thus reached by different paths in the two runs, which must still give identical records:
the episode stream depends neither on scheduling nor on resuming.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import imageio
import numpy as np
import pytest

pytestmark = pytest.mark.sim

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "experiments/robot/libero/run_libero_eval.py"
NON_DETERMINISTIC_FIELDS = ("seconds", "video")


@dataclass
class RunOutput:
    log: str
    records: list[dict]
    jsonl_text: str
    files: list[str]


def run_eval(log_dir: Path, env: dict[str, str], checkpoint: Path, run_id: str, *flags: str) -> RunOutput:
    command = [
        sys.executable,
        SCRIPT,
        "--pretrained_checkpoint", str(checkpoint),
        "--task_suite_name", "libero_spatial",
        "--task_ids", "[0]",
        "--max_steps", "2",
        "--num_steps_wait", "2",
        "--env_img_res", "64",
        "--local_log_dir", str(log_dir),
        "--run_id", run_id,
        *flags,
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, f"{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}"
    jsonl_text = (log_dir / f"{run_id}.jsonl").read_text()
    return RunOutput(
        log=(log_dir / f"{run_id}.txt").read_text(),
        records=[json.loads(line) for line in jsonl_text.splitlines()],
        jsonl_text=jsonl_text,
        files=sorted(str(path.relative_to(log_dir)) for path in log_dir.rglob("*") if path.is_file()),
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> dict[str, RunOutput]:
    root = tmp_path_factory.mktemp("sim_eval")
    env = {**os.environ, "USE_TF": "0", "WANDB_MODE": "disabled", "LIBERO_CONFIG_PATH": str(root / "libero_config")}
    outputs = {}
    for name, run_id, flags in [
        ("first", "resumed", ("--num_trials_per_task", "1", "--save_videos", "True")),
        ("resumed", "resumed", ("--num_trials_per_task", "3", "--save_videos", "True", "--video_episodes", "2")),
        ("parallel", "parallel", ("--num_trials_per_task", "3", "--num_workers", "2")),
    ]:
        outputs[name] = run_eval(root / "logs", env, tiny_checkpoint, run_id, *flags)
    outputs["log_dir"] = root / "logs"
    return outputs


def test_one_episode_writes_log_jsonl_video_summary_and_chart(runs: dict) -> None:
    first = runs["first"]
    assert "resumed.txt" in first.files and "resumed--summary.json" in first.files
    assert "resumed--success_rates.png" in first.files and "resumed--config.json" in first.files
    (record,) = first.records
    assert record["suite"] == "libero_spatial" and (record["task_id"], record["episode"]) == (0, 0)
    assert record["task"] == "pick up the black bowl between the plate and the ramekin and place it on the plate"
    assert record["success"] is False and record["steps"] == 2 and record["seconds"] > 0 and record["error"] is None
    assert len(record["final_state"]) == 8

    video = Path(record["video"])
    assert video.name == "task=0--episode=0--success=False--pick_up_the_black_bowl_between_the_plate_and_the_r.mp4"
    frames = imageio.mimread(video)
    assert len(frames) == 2 and frames[0].shape == (64, 64, 3)  # one rotated camera frame per policy step

    summary = json.loads((runs["log_dir"] / "resumed--summary.json").read_text())
    assert summary["total"]["episodes"] == 3  # rewritten by the resumed run
    assert summary["tasks"][0]["task_id"] == 0


def test_log_opens_with_fingerprint_and_result_affecting_settings(runs: dict) -> None:
    log = runs["first"].log
    assert log.startswith("=== ") and "starting run resumed ===" in log.splitlines()[0]
    header = log[: log.index("Task suite: libero_spatial")]
    for line in ("python: 3.", "torch: ", "transformers: ", "mujoco: ", "robosuite: ", "gpu: ", "MUJOCO_GL: "):
        assert f"\n  {line}" in header
    for setting in ("center_crop: True", "unnorm_key: libero_spatial_no_noops", "num_open_loop_steps: 8", "seed: 7"):
        assert f"\n  {setting}\n" in header
    for line in ("Success: False", "# episodes completed so far: 1", "Current task success rate: 0.0"):
        assert line in log
    assert "Overall success rate: 0.0000 (0.0%)" in log


def test_same_run_id_skips_finished_episodes(runs: dict) -> None:
    first, resumed = runs["first"], runs["resumed"]
    assert resumed.jsonl_text.startswith(first.jsonl_text)  # the finished episode is left as it was
    assert [(r["task_id"], r["episode"]) for r in resumed.records] == [(0, 0), (0, 1), (0, 2)]
    session = resumed.log[len(first.log) :]
    assert "resuming run resumed" in session and "1 episodes already finished" in session
    assert "Episodes to run: 2 " in session and "Episode 0 of task 0" not in session
    assert resumed.records[1]["video"] is not None  # --video_episodes 2: episodes 0 and 1 only
    assert resumed.records[2]["video"] is None


def deterministic_fields(records: list[dict]) -> list[dict]:
    ordered = sorted(records, key=lambda record: (record["task_id"], record["episode"]))
    return [{k: v for k, v in record.items() if k not in NON_DETERMINISTIC_FIELDS} for record in ordered]


def test_parallel_run_equals_resumed_run(runs: dict) -> None:
    resumed = deterministic_fields(runs["resumed"].records)
    assert len({tuple(record["final_state"]) for record in resumed}) == 3  # the three episodes really differ
    assert all(np.isfinite(record["final_state"]).all() for record in resumed)
    assert deterministic_fields(runs["parallel"].records) == resumed
    assert "(on 2 of 2 workers)" in runs["parallel"].log
