"""Results that must not depend on the path taken: in the evaluation's process or through the policy server.

The gripper post-processing follows the checkpoint's recorded convention in both paths, ensembling comes before it in
both, the server can require the frames as rendered (so the training chain applies) and its ``POST /act`` takes
OpenVLA-OFT's ALOHA requests. Servers run in a background thread on a port chosen by the OS.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import urllib.request
from collections.abc import Callable
from pathlib import Path

import json_numpy
import numpy as np
import pytest

from experiments.robot.libero.config import GenerateConfig
from experiments.robot.libero.env_worker import EpisodeSettings, run_episode
from experiments.robot.robot_utils import postprocess_actions
from experiments.robot.serving.client import PolicyClient, PolicyServerError
from experiments.robot.serving.config import ServeConfig, build_server, validate_serve_config
from experiments.robot.serving.server import server_in_thread
from experiments.robot.vla_policy import VLAPolicy
from prismatic.util.cli import UserError
from prismatic.vla.image_utils import resize_image_for_policy
from prismatic.vla.policy_config import EmbodimentConfig, PolicyConfig, read_policy_config, write_policy_config

from .test_episode import ScriptedEnv

INSTRUCTION = "pick up the black bowl between the plate and the ramekin and place it on the plate"


def load(checkpoint: Path) -> VLAPolicy:
    return VLAPolicy.from_config(GenerateConfig(pretrained_checkpoint=str(checkpoint)))


def episode_settings(gripper: str, ensembling: str = "none", policy_server: str | None = None) -> EpisodeSettings:
    open_loop_steps = 8 if ensembling == "none" else 1
    return EpisodeSettings(
        "libero_spatial", gripper, 0, 8, open_loop_steps, 7, 32, None, policy_server, action_ensembling=ensembling
    )


def executed_actions(settings: EpisodeSettings, request_chunk: Callable[[dict], np.ndarray]) -> np.ndarray:
    """The actions ``env.step`` receives in an episode of the scripted env."""
    env = ScriptedEnv()
    outcome = run_episode(env, env.observation(), settings, request_chunk, keep_frames=False)
    assert outcome.error is None and outcome.steps == settings.max_steps
    return np.array(env.actions)


@pytest.mark.parametrize(
    ("checkpoint_fixture", "gripper"), [("tiny_checkpoint", "libero"), ("lerobot_tiny_checkpoint", "none")]
)
def test_the_worker_and_the_server_post_process_a_chunk_alike(request, checkpoint_fixture: str, gripper: str) -> None:
    checkpoint = request.getfixturevalue(checkpoint_fixture)
    policy = load(checkpoint)
    assert policy.gripper == gripper
    queried = []

    def in_process(observation: dict) -> np.ndarray:
        queried.append(observation)
        return policy.predict_chunk(observation, INSTRUCTION)

    executed = executed_actions(episode_settings(policy.gripper), in_process)  # one chunk, executed open loop
    with server_in_thread(build_server(ServeConfig(pretrained_checkpoint=str(checkpoint), port=0), policy)) as port:
        client = PolicyClient(f"ws://127.0.0.1:{port}")
        keys = client.metadata["camera_keys"]
        served = client.infer(
            {
                keys[0]: queried[0]["full_image"],
                keys[1]: queried[0]["wrist_image"],
                client.metadata["state_key"]: queried[0]["state"],
                client.metadata["prompt_key"]: INSTRUCTION,
            }
        )["actions"]
        client.close()
    assert client.metadata["gripper"] == gripper and len(queried) == 1
    np.testing.assert_array_equal(executed, served)
    raw_gripper = policy.predict_chunk(queried[0], INSTRUCTION)[:, -1]
    expected_gripper = -np.sign(2 * raw_gripper - 1) if gripper == "libero" else raw_gripper
    np.testing.assert_array_equal(executed[:, -1], expected_gripper)


class GripperSwitchPolicy:
    """Chunks in the dataset's frame (gripper 1 = open): gripper 1.0 at the first query of an episode, 0.4 after;
    arm dims from the env's step count, so every query differs."""

    unnorm_key = "libero_spatial_no_noops"
    gripper = "libero"

    def predict_chunk(self, observation: dict, instruction: str) -> np.ndarray:
        steps = observation["state"][2]  # the scripted env's step count
        chunk = np.zeros((8, 7))
        chunk[:, 0] = 0.01 * steps + 0.1 * np.arange(8)
        chunk[:, -1] = 1.0 if steps == 0 else 0.4
        return chunk

    def preprocess(self, observation: dict, instruction: str) -> tuple[dict, str]:
        return observation, instruction

    def predict_prepared(self, queries: list[tuple[dict, str]]) -> list[np.ndarray]:
        return [self.predict_chunk(observation, instruction) for observation, instruction in queries]


@pytest.mark.parametrize("ensembling", ["fork", "simpler"])
def test_ensembling_through_the_server_averages_before_the_gripper_post_processing(
    tiny_checkpoint: Path, ensembling: str
) -> None:
    policy = GripperSwitchPolicy()
    in_process = executed_actions(episode_settings("libero", ensembling), lambda obs: policy.predict_chunk(obs, ""))
    server = build_server(ServeConfig(pretrained_checkpoint=str(tiny_checkpoint), port=0), policy)
    with server_in_thread(server) as port:
        uri = f"ws://127.0.0.1:{port}"
        client = PolicyClient(uri)
        served = executed_actions(
            episode_settings(client.metadata["gripper"], ensembling, uri),
            lambda observation: client.predict_chunk(observation, INSTRUCTION),
        )
        client.close()
    np.testing.assert_array_equal(served, in_process)
    # Step 1 averages raw grippers 1.0 and 0.4 to above 0.5 (open, -1); averaging the post-processed -1 and +1
    # (the old order) sent a fractional command to env.step. Later steps average mostly 0.4 (close, +1).
    np.testing.assert_array_equal(served[:3, -1], [-1.0, -1.0, 1.0])
    assert set(served[:, -1]) == {-1.0, 1.0}
    assert not np.array_equal(served[0, :6], served[1, :6])


def test_the_server_can_require_rendered_frames_and_applies_the_training_chain(
    tiny_checkpoint: Path, agentview_frame: np.ndarray, wrist_frame: np.ndarray
) -> None:
    policy = load(tiny_checkpoint)
    frames = [np.ascontiguousarray(frame[::-1, ::-1]) for frame in (agentview_frame, wrist_frame)]  # 256 x 256
    state = np.array([-0.2, 0.01, 1.19, 3.14, 0.01, -0.08, 0.039, -0.039])
    request = {"observation/image": frames[0], "observation/wrist_image": frames[1], "observation/state": state}
    # What the evaluation's worker sends for the same render: JPEG round trip + lanczos3 to 224.
    prepared = {"full_image": resize_image_for_policy(frames[0]), "wrist_image": resize_image_for_policy(frames[1])}
    expected = postprocess_actions(policy.predict_chunk({**prepared, "state": state}, INSTRUCTION), policy.gripper)
    cfg = ServeConfig(pretrained_checkpoint=str(tiny_checkpoint), port=0, input_image_size=256)
    with server_in_thread(build_server(cfg, policy)) as port:
        client = PolicyClient(f"ws://127.0.0.1:{port}")
        assert client.metadata["input_image_size"] == 256
        np.testing.assert_array_equal(client.infer({**request, "prompt": INSTRUCTION})["actions"], expected)
        openpi_example = {**request, "observation/image": prepared["full_image"], "prompt": INSTRUCTION}
        with pytest.raises(PolicyServerError, match=r"'observation/image'.*256 x 256 \(--input_image_size\)"):
            client.infer(openpi_example)
        client.close()
    for size in (224, 8):
        with pytest.raises(UserError, match=f"--input_image_size {size}:"):
            validate_serve_config(dataclasses.replace(cfg, input_image_size=size))


def test_act_accepts_openvla_ofts_aloha_request(tiny_checkpoint: Path, tmp_path: Path, agentview_frame) -> None:
    checkpoint = tmp_path / "tiny-three-cameras"
    shutil.copytree(tiny_checkpoint, checkpoint)
    cameras = ["cam_high", "cam_left_wrist", "cam_right_wrist"]  # ALOHA's, on the tiny model's LIBERO dims
    embodiment = EmbodimentConfig(camera_names=cameras)
    config = PolicyConfig(num_images_in_input=3, unnorm_key="libero_spatial_no_noops", embodiment=embodiment)
    write_policy_config(checkpoint, config)
    assert read_policy_config(checkpoint).num_images_in_input == 3
    policy = load(checkpoint)
    rng = np.random.default_rng(0)
    left, right = (rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(2))
    full = resize_image_for_policy(agentview_frame)
    state = np.linspace(-0.5, 0.5, 8)
    expected = policy.predict_chunk(  # OFT: the wrist images in the request's order, no gripper post-processing
        {"full_image": full, "wrist_image": left, "wrist_image_2": right, "state": state}, INSTRUCTION
    )
    swapped = policy.predict_chunk(
        {"full_image": full, "wrist_image": right, "wrist_image_2": left, "state": state}, INSTRUCTION
    )
    assert not np.array_equal(expected, swapped)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def post(port: int, body: dict) -> tuple[int, object]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/act", json_numpy.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        try:
            with opener.open(request, timeout=300) as response:
                return response.status, json_numpy.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    server = build_server(ServeConfig(pretrained_checkpoint=str(checkpoint), port=0, http_port=0), policy)
    aloha = {
        "full_image": full,
        "left_wrist_image": left,
        "right_wrist_image": right,
        "state": state,
        "instruction": INSTRUCTION,
    }
    with server_in_thread(server):
        status, actions = post(server.http_port, aloha)
        assert status == 200
        np.testing.assert_array_equal(np.stack(actions), expected)
        status, error = post(server.http_port, {k: v for k, v in aloha.items() if k != "right_wrist_image"})
        assert status == 400 and "wrist image key(s) ['left_wrist_image']: the checkpoint reads 2" in error["error"]
