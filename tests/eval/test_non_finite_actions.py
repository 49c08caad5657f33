"""A NaN or infinite action is never served to a robot nor executed in the simulator: the server answers an error
(websocket and HTTP), the evaluation worker stops with a PolicyError before the step."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import json_numpy
import numpy as np
import pytest

from experiments.robot.libero.config import GenerateConfig
from experiments.robot.policy import NonFiniteActionError, check_finite_actions
from experiments.robot.serving.client import PolicyClient, PolicyServerError
from experiments.robot.serving.config import ServeConfig, build_server
from experiments.robot.serving.server import server_in_thread
from experiments.robot.vla_policy import VLAPolicy

from .conftest import INSTRUCTION, run_in_fresh_process


def test_finite_chunks_pass_unchanged_and_the_first_non_finite_entry_is_named():
    chunk = np.zeros((8, 7))
    assert check_finite_actions(chunk) is chunk
    chunk[2, 5], chunk[4, 1] = np.nan, np.inf
    with pytest.raises(NonFiniteActionError, match=r"chunk \[8, 7\] holds nan at \[2, 5\] \(2 non-finite value"):
        check_finite_actions(chunk)


@pytest.fixture(scope="module")
def nan_statistics_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint whose action statistics carry one NaN (as after training on data with one NaN)."""
    folder = Path(shutil.copytree(tiny_checkpoint, tmp_path_factory.mktemp("nan") / "checkpoint"))
    statistics = json.loads((folder / "dataset_statistics.json").read_text())
    for entry in statistics.values():
        entry["action"]["q99"][0] = float("nan")
    (folder / "dataset_statistics.json").write_text(json.dumps(statistics))
    return folder


def test_the_server_answers_an_error_instead_of_nan_actions(
    nan_statistics_checkpoint: Path,
    request_payload: dict,  # noqa: F811 - the fixture imported above
):
    policy = VLAPolicy.from_config(GenerateConfig(pretrained_checkpoint=str(nan_statistics_checkpoint)))
    observation = {
        "full_image": request_payload["observation/image"],
        "wrist_image": request_payload["observation/wrist_image"],
        "state": request_payload["observation/state"],
        "instruction": INSTRUCTION,
    }
    assert np.isnan(policy.predict_chunk(observation, INSTRUCTION)[:, 0]).all()  # what would reach the robot
    server = build_server(
        ServeConfig(pretrained_checkpoint=str(nan_statistics_checkpoint), port=0, http_port=0), policy
    )
    with server_in_thread(server) as port:
        client = PolicyClient(f"ws://127.0.0.1:{port}")
        with pytest.raises(PolicyServerError) as error:
            client.infer(request_payload)
        client.close()
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.http_port}/act",
            json_numpy.dumps(observation).encode(),
            {"Content-Type": "application/json"},
            method="POST",
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with pytest.raises(urllib.error.HTTPError) as http_error:
            opener.open(request, timeout=300)
        http_reply = json.loads(http_error.value.read())

    assert str(error.value).startswith(
        "error: the policy failed: NonFiniteActionError: the predicted action chunk [8, 7] holds nan at [0, 0]"
    )
    assert http_error.value.code == 500
    assert http_reply["error"].startswith("NonFiniteActionError: the predicted action chunk [8, 7] holds nan")


WORKER_SCRIPT = r"""
import numpy as np
from experiments.robot.libero.env_worker import EpisodeSettings, EpisodeSpec, PolicyError, WorkUnit, _run_unit
from experiments.robot.libero.sim_setup import configure_rendering, prepare_libero

configure_rendering()
prepare_libero()
from libero.libero import benchmark, get_libero_path

suite = benchmark.get_benchmark_dict()["libero_spatial"]()


class NanRunner:
    # The runner's end of the pipe, answering every action request with a chunk holding one NaN.
    def send(self, message):
        pass

    def recv(self):
        chunk = np.zeros((8, 7))
        chunk[0, 3] = np.nan
        return chunk


task = suite.get_task(0)
bddl = f"{get_libero_path('bddl_files')}/{task.problem_folder}/{task.bddl_file}"
work = WorkUnit(0, task.language, bddl, (EpisodeSpec(0, 0, suite.get_task_init_states(0)[0]),))
settings = EpisodeSettings(
    suite="libero_spatial", gripper="libero", num_steps_wait=2, max_steps=4, num_open_loop_steps=8,
    action_dim=7, env_img_res=64, video_dir=None,
)
try:
    _run_unit(work, None, settings, NanRunner(), None)
except PolicyError as error:
    print("STOPPED " + str(error))
"""


@pytest.mark.sim
def test_the_evaluation_worker_stops_before_executing_a_nan_action(tmp_path: Path) -> None:
    stdout = run_in_fresh_process(WORKER_SCRIPT, tmp_path)
    assert "STOPPED policy: the predicted action chunk [8, 7] holds nan at [0, 3]" in stdout
