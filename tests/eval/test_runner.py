"""The runner around the simulator: a run whose episodes are all finished only reports (no worker starts), and
resuming with different result-affecting flags is refused before anything runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from experiments.robot.libero.config import GenerateConfig, config_as_dict
from experiments.robot.libero.evaluation import RunPaths, eval_libero
from experiments.robot.results import EpisodeResult, EpisodeStore
from prismatic.testing.processes import dead_pid

TASK = "pick up the black bowl between the plate and the ramekin and place it on the plate"


class UnusablePolicy:
    def predict_chunk(self, observation: dict[str, np.ndarray], instruction: str) -> np.ndarray:
        raise AssertionError("no episode should run")


@pytest.fixture
def finished_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, libero_config_dir: Path
) -> tuple[GenerateConfig, RunPaths]:
    """Run "done" of libero_spatial task 0 with both of its 2 episodes already in the JSONL (1 success)."""
    for name in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "USE_TF"):  # configure_rendering() sets them for this process
        monkeypatch.setenv(name, {"MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl", "USE_TF": "0"}[name])
    cfg = GenerateConfig(  # center_crop as run_libero_eval passes it: resolved from the checkpoint
        task_ids=[0], num_trials_per_task=2, local_log_dir=str(tmp_path / "logs"), run_id="done", center_crop=True
    )
    paths = RunPaths.for_run(tmp_path / "logs", "done")
    paths.config.parent.mkdir(parents=True)
    paths.config.write_text(json.dumps(config_as_dict(cfg)))
    store = EpisodeStore(paths.episodes)
    for episode in range(2):
        store.append(EpisodeResult("libero_spatial", 0, TASK, episode, episode == 0, 40 + episode, 9.0))
    return cfg, paths


def test_finished_run_reports_without_running_episodes(finished_run: tuple[GenerateConfig, RunPaths]) -> None:
    cfg, paths = finished_run
    # Left by a writer killed mid-write (atomic_output's temporaries): removed when the run starts again.
    killed = dead_pid()
    stale = [paths.config.parent / f".done--summary.tmp{killed}.json", paths.videos / f".episode_0.tmp{killed}.mp4"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    # WANDB_MODE=disabled
    assert eval_libero(dataclasses.replace(cfg, use_wandb=True), UnusablePolicy(), "libero") == 0.5
    log = paths.log.read_text()
    assert "2 episodes already finished in done.jsonl are skipped" in log
    assert "Episodes to run: 0 " in log
    assert "Overall success rate: 0.5000 (50.0%)" in log and f"  task 0: 1/2 (50.0%) {TASK}" in log
    summary = json.loads(paths.summary.read_text())
    assert summary["total"] == {"episodes": 2, "successes": 1, "success_rate": 0.5}
    assert paths.chart.stat().st_size > 0
    assert len(paths.episodes.read_text().splitlines()) == 2
    assert not any(path.exists() for path in stale)


def test_resume_with_other_result_affecting_flags_is_refused(finished_run: tuple[GenerateConfig, RunPaths]) -> None:
    cfg, paths = finished_run
    with pytest.raises(ValueError, match="--center_crop: run has True, now False"):
        eval_libero(dataclasses.replace(cfg, center_crop=False), UnusablePolicy(), "libero")
    assert not paths.log.exists()
