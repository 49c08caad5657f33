"""An episode's result depends only on (suite, task, episode, seed, checkpoint): not on which worker runs it, what
that worker ran before, or what else drew from the global RNGs in between.

The simulator half runs one worker's code (``_run_unit`` with its env reuse and reset replay) in a fresh process
(``USE_TF=0``), against a stand-in for the runner that answers every action request with a fixed function of the
observation (images and state), so any difference in the scene or the state changes the actions that follow. The
policy half checks that the policy's answers do not depend on the order in which workers' requests arrive.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments.robot.libero.config import GenerateConfig
from experiments.robot.vla_policy import VLAPolicy

from .conftest import run_in_fresh_process

WORKER_SCRIPT = r"""
import json, random
import numpy as np
from experiments.robot.libero.env_worker import EpisodeSettings, EpisodeSpec, WorkUnit, _run_unit
from experiments.robot.libero.sim_setup import configure_rendering, prepare_libero

configure_rendering()
prepare_libero()
from libero.libero import benchmark, get_libero_path

suite = benchmark.get_benchmark_dict()["libero_spatial"]()


class LocalRunner:
    # The runner's end of the pipe: actions are a fixed function of the observation; results are kept.
    def __init__(self):
        self.observation, self.results = None, []

    def send(self, message):
        if message[0] == "act":
            self.observation = message[1]
        elif message[0] == "episode":
            self.results.append(message[1])

    def recv(self):
        images = self.observation["full_image"].mean() + self.observation["wrist_image"].mean()
        phase = images / 25.0 + 3.0 * self.observation["state"].sum()
        chunk = 0.5 * np.sin(phase + np.arange(8)[:, None] + np.arange(7)[None, :])
        chunk[:, 6] = chunk[:, 6] > 0
        return chunk


def unit(task_id, episodes):
    task = suite.get_task(task_id)
    states = suite.get_task_init_states(task_id)
    bddl = f"{get_libero_path('bddl_files')}/{task.problem_folder}/{task.bddl_file}"
    return WorkUnit(task_id, task.language, bddl, tuple(EpisodeSpec(e, e, states[e]) for e in episodes))


settings = EpisodeSettings(
    suite="libero_spatial", gripper="libero", num_steps_wait=2, max_steps=4, num_open_loop_steps=8,
    action_dim=7, env_img_res=64, video_dir=None,
)
runner, task_env, outputs = LocalRunner(), None, {}


def run(name, work):
    global task_env
    task_env = _run_unit(work, task_env, settings, runner, None)
    outputs[name] = [(r.episode, r.steps, r.error, r.final_state) for r in runner.results[-len(work.episodes):]]


run("episode 2 alone", unit(0, [2]))  # a fresh env replays two resets first
run("episodes 0-2 back to back", unit(0, [0, 1, 2]))  # a new env: the first one is past episode 0
run("other task", unit(1, [0]))
run("episode 1 after another task", unit(0, [1]))
np.random.uniform(size=7)  # anything else in the worker drawing from the global RNGs
random.random()
run("episode 2 after RNG draws, same env", unit(0, [2]))  # reuses the env of episode 1
print("RESULTS " + json.dumps(outputs))
"""


@pytest.mark.sim
def test_worker_history_does_not_change_an_episode(tmp_path: Path) -> None:
    stdout = run_in_fresh_process(WORKER_SCRIPT, tmp_path)
    line = next(line for line in stdout.splitlines() if line.startswith("RESULTS "))
    outputs = {
        name: [tuple(map(_freeze, record)) for record in records] for name, records in json.loads(line[8:]).items()
    }

    (alone,) = outputs["episode 2 alone"]
    episode_0, episode_1, episode_2 = outputs["episodes 0-2 back to back"]
    assert len({episode_0[3], episode_1[3], episode_2[3]}) == 3  # the episodes really differ
    assert all(record[2] is None and record[1] == 4 for record in (episode_0, episode_1, episode_2))
    assert episode_2 == alone
    assert outputs["episode 1 after another task"] == [episode_1]
    assert outputs["episode 2 after RNG draws, same env"] == [alone]


def _freeze(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def test_policy_answers_do_not_depend_on_request_order(tiny_checkpoint: Path) -> None:
    """Two workers' requests interleave in any order; each answer must be the one the request gets alone."""
    policy = VLAPolicy.from_config(GenerateConfig(pretrained_checkpoint=str(tiny_checkpoint)))
    rng = np.random.default_rng(0)
    observations = [
        {
            "full_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            "wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            "state": rng.normal(size=8),
        }
        for _ in range(3)
    ]
    alone = [policy.predict_chunk(observation, "pick up the bowl") for observation in observations]
    assert not np.array_equal(alone[0], alone[1])
    for order in ([2, 0, 1, 0], [1, 1, 2, 0]):
        for index in order:
            np.testing.assert_array_equal(policy.predict_chunk(observations[index], "pick up the bowl"), alone[index])
