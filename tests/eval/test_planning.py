"""Episode planning: tasks and initial states from the LIBERO benchmark, positions in the reset stream, work units.

Reads the benchmark (no simulator, no rendering) in this process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from experiments.robot.libero.config import GenerateConfig
from experiments.robot.libero.env_worker import EpisodeSpec
from experiments.robot.libero.evaluation import RunLog, TaskPlan, plan_tasks, split_work

pytestmark = pytest.mark.usefixtures("libero_config_dir")  # LIBERO's config.yaml in a temporary folder


@pytest.fixture
def run_log(tmp_path: Path) -> Iterator[RunLog]:
    log = RunLog(tmp_path / "run.txt")
    yield log
    log.close()


def test_plan_reads_tasks_and_benchmark_initial_states(run_log: RunLog) -> None:
    plans = plan_tasks(GenerateConfig(task_ids=[3, 0], num_trials_per_task=3), run_log)
    assert [plan.task_id for plan in plans] == [3, 0]
    assert plans[1].task == "pick up the black bowl between the plate and the ramekin and place it on the plate"
    assert all(Path(plan.bddl_file).is_file() for plan in plans)
    assert [(spec.episode, spec.reset_index) for spec in plans[0].episodes] == [(0, 0), (1, 1), (2, 2)]
    assert plans[0].episodes[0].initial_state.shape == (92,)  # libero_spatial's flattened MuJoCo state
    assert not np.array_equal(plans[0].episodes[0].initial_state, plans[0].episodes[1].initial_state)


def test_json_initial_states_skip_failed_demos_without_a_reset(tmp_path: Path, run_log: RunLog) -> None:
    task = "pick up the black bowl between the plate and the ramekin and place it on the plate"
    demos = {f"demo_{i}": {"success": i != 1, "initial_state": [float(i)] * 92} for i in range(3)}
    states_path = tmp_path / "states.json"
    states_path.write_text(json.dumps({task.replace(" ", "_"): demos}))
    cfg = GenerateConfig(task_ids=[0], num_trials_per_task=3, initial_states_path=str(states_path))
    (plan,) = plan_tasks(cfg, run_log)
    assert [(spec.episode, spec.reset_index) for spec in plan.episodes] == [(0, 0), (2, 1)]
    assert plan.episodes[1].initial_state[0] == 2.0
    assert "Skipping episode 1" in run_log.path.read_text()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"task_ids": [10]}, r"--task_ids \[10\]: expected distinct ids in \[0, 10\)"),
        ({"task_ids": [1, 1]}, r"--task_ids"),
        ({"task_ids": [0], "num_trials_per_task": 51}, r"--num_trials_per_task 51 exceeds the 50"),
    ],
)
def test_bad_plans_raise_naming_the_flag(overrides: dict, message: str, run_log: RunLog) -> None:
    with pytest.raises(ValueError, match=message):
        plan_tasks(GenerateConfig(**overrides), run_log)


def make_plan(task_id: int, num_episodes: int) -> TaskPlan:
    episodes = tuple(EpisodeSpec(i, i, np.zeros(3)) for i in range(num_episodes))
    return TaskPlan(task_id, f"task {task_id}", f"task_{task_id}.bddl", episodes)


def test_work_is_split_into_whole_tasks_when_there_are_enough() -> None:
    units = split_work([make_plan(0, 4), make_plan(1, 4), make_plan(2, 4)], finished=set(), num_workers=2)
    assert [(unit.task_id, [spec.episode for spec in unit.episodes]) for unit in units] == [
        (0, [0, 1, 2, 3]),
        (1, [0, 1, 2, 3]),
        (2, [0, 1, 2, 3]),
    ]


def test_one_task_is_split_into_contiguous_chunks_for_several_workers() -> None:
    units = split_work([make_plan(0, 5)], finished={(0, 1)}, num_workers=2)
    assert [[(spec.episode, spec.reset_index) for spec in unit.episodes] for unit in units] == [
        [(0, 0), (2, 2)],
        [(3, 3), (4, 4)],
    ]


def test_finished_tasks_give_no_work() -> None:
    assert split_work([make_plan(0, 2)], finished={(0, 0), (0, 1)}, num_workers=4) == []
