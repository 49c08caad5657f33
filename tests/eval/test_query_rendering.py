"""Evaluation renders the cameras only at the steps where the policy looks, and its episodes stay bit-identical to
rendering every step (as it does when videos are saved).

One worker's code (``_run_unit``) runs episode 0 of libero_spatial task 0 twice in a fresh process (``USE_TF=0``):
once saving videos (every step renders) and once without (query steps only). The stand-in runner
answers with a fixed function of the observation (images and state), so any difference in an image the policy reads
changes every action after it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

WORKER_SCRIPT = r"""
import json, sys
import numpy as np
from robosuite.utils.binding_utils import MjSim
from experiments.robot.libero.env_worker import EpisodeSettings, EpisodeSpec, WorkUnit, _run_unit
from experiments.robot.libero.sim_setup import configure_rendering, prepare_libero, task_init_states

configure_rendering()
prepare_libero()
from libero.libero import benchmark, get_libero_path

renders = [0]
original_render = MjSim.render


def counting_render(self, *args, **kwargs):
    renders[0] += 1
    return original_render(self, *args, **kwargs)


MjSim.render = counting_render
suite = benchmark.get_benchmark_dict()["libero_spatial"]()
task = suite.get_task(0)
states = task_init_states(suite, 0)
bddl = f"{get_libero_path('bddl_files')}/{task.problem_folder}/{task.bddl_file}"
work = WorkUnit(0, task.language, bddl, (EpisodeSpec(0, 0, states[0]),))


class LocalRunner:
    def __init__(self):
        self.observation, self.results, self.seen = None, [], []

    def send(self, message):
        if message[0] == "act":
            self.observation = message[1]
            images = ("full_image", "wrist_image")
            self.seen.append([float(self.observation[k].astype(np.float64).sum()) for k in images])
        elif message[0] == "episode":
            self.results.append(message[1])

    def recv(self):
        images = self.observation["full_image"].mean() + self.observation["wrist_image"].mean()
        phase = images / 25.0 + 3.0 * self.observation["state"].sum()
        chunk = 0.8 * np.sin(phase + np.arange(8)[:, None] + np.arange(7)[None, :])
        chunk[:, 6] = chunk[:, 6] > 0
        return chunk


outputs = {}
for mode, video_dir in (("every step", sys.argv[1]), ("query steps", None)):
    settings = EpisodeSettings(
        suite="libero_spatial", gripper="libero", num_steps_wait=3, max_steps=12, num_open_loop_steps=8,
        action_dim=7, env_img_res=64, video_dir=video_dir,
    )
    runner, before = LocalRunner(), renders[0]
    _run_unit(work, None, settings, runner, None).close()
    outputs[mode] = {
        "episodes": [(r.success, r.steps, r.error, r.final_state) for r in runner.results],
        "seen": runner.seen,
        "renders": renders[0] - before,
    }
print("RESULTS " + json.dumps(outputs))
"""


@pytest.mark.sim
@pytest.mark.slow
def test_query_step_rendering_gives_identical_episodes_with_fewer_renders(tmp_path: Path) -> None:
    env = {**os.environ, "USE_TF": "0", "LIBERO_CONFIG_PATH": str(tmp_path / "libero_config")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    completed = subprocess.run(
        [sys.executable, "-c", WORKER_SCRIPT, str(tmp_path / "videos")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULTS "))
    outputs = json.loads(line[8:])
    every, query = outputs["every step"], outputs["query steps"]

    assert query["episodes"] == every["episodes"]  # success, steps, error, final state: bit for bit
    assert query["seen"] == every["seen"]  # every image the policy read
    assert len(every["seen"]) == 2 and every["episodes"][0][1] == 12  # 12 steps in chunks of 8: 2 queries
    # Every step renders 2 cameras x (3 wait + 12 policy steps); query steps only 2 x 2 (the last wait step, step 7).
    assert every["renders"] - query["renders"] == 2 * (15 - 2)
