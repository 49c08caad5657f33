"""The policy server on the tiny checkpoint: openpi's real client, batching, malformed requests, API keys, the CLI.

openpi-client (PyPI) pins numpy < 2, so it runs in its own venv (``prismatic/testing/openpi_client_env.py``, created
on first use under ``.cache/``) as a subprocess. Servers run in a background thread on a port chosen by the OS.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import draccus
import json_numpy
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect

from experiments.robot.libero.config import GenerateConfig
from experiments.robot.robot_utils import postprocess_actions
from experiments.robot.serving.client import PolicyClient, PolicyServerError
from experiments.robot.serving.config import ServeConfig, build_server, checkpoint_policy_config, observation_spec
from experiments.robot.serving.observation import ObservationError
from experiments.robot.serving.server import server_in_thread
from experiments.robot.serving.wire import packb, unpackb
from experiments.robot.vla_policy import VLAPolicy
from prismatic.testing.openpi_client_env import ensure_openpi_client_env
from prismatic.util.cli import UserError

from .conftest import INSTRUCTION

REPO_ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).resolve().parent / "openpi_client_probe.py"
API_KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def policy(tiny_checkpoint: Path) -> VLAPolicy:
    return VLAPolicy.from_config(GenerateConfig(pretrained_checkpoint=str(tiny_checkpoint)))


def in_process_actions(policy: VLAPolicy, payload: dict, instruction: str = INSTRUCTION) -> np.ndarray:
    """What the evaluation computes for the same observation, gripper post-processing included."""
    observation = {
        "full_image": payload["observation/image"],
        "wrist_image": payload["observation/wrist_image"],
        "state": payload["observation/state"],
    }
    return postprocess_actions(policy.predict_chunk(observation, instruction), policy.gripper)


def serve(policy: VLAPolicy, checkpoint: Path, **flags: object):
    return server_in_thread(build_server(ServeConfig(pretrained_checkpoint=str(checkpoint), port=0, **flags), policy))


def openpi_client_probe(port: int, payload: dict, tmp_path: Path) -> dict:
    """What openpi's real client (``openpi_client_probe.py``, in openpi-client's own venv) sees of the server on
    ``port`` for ``payload``, sent with :data:`API_KEY`."""
    python = ensure_openpi_client_env()
    request_path = tmp_path / "request.npz"
    np.savez(request_path, **{key.replace("/", "__"): value for key, value in payload.items()})
    out_path = tmp_path / "seen.json"
    completed = subprocess.run(
        [str(python), str(PROBE), str(port), str(request_path), str(out_path), API_KEY],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(out_path.read_text())


def test_batched_prediction_equals_one_by_one(policy: VLAPolicy, request_payload: dict, monkeypatch) -> None:
    base = {
        "full_image": request_payload["observation/image"],
        "wrist_image": request_payload["observation/wrist_image"],
    }
    queries = [
        ({**base, "state": request_payload["observation/state"]}, INSTRUCTION),
        ({**base, "state": np.zeros(8)}, INSTRUCTION),
        ({**base, "state": np.zeros(8)}, "open the drawer"),  # another prompt length: its own forward pass
    ]
    expected = [policy.predict_chunk(observation, instruction) for observation, instruction in queries]
    forward_batch_sizes = []
    predict_action = policy.loaded.vla.predict_action

    def counting_predict_action(**kwargs):
        forward_batch_sizes.append(kwargs["input_ids"].shape[0])
        return predict_action(**kwargs)

    monkeypatch.setattr(policy.loaded.vla, "predict_action", counting_predict_action)
    batched = policy.predict_chunks(queries)
    assert sorted(forward_batch_sizes) == [1, 2]
    for chunk, reference in zip(batched, expected, strict=True):
        assert chunk.shape == (8, 7)
        np.testing.assert_allclose(chunk, reference, rtol=1e-5, atol=1e-5)
    assert not np.allclose(batched[0], batched[1])  # the state reaches each query of the batch


def test_openpi_client_reads_metadata_and_gets_in_process_actions(
    policy: VLAPolicy, tiny_checkpoint: Path, request_payload: dict, tmp_path: Path
) -> None:
    with serve(policy, tiny_checkpoint, api_key=API_KEY) as port:
        seen = openpi_client_probe(port, request_payload, tmp_path)
    assert seen["numpy"].startswith("1.")  # really openpi-client's own environment
    metadata = seen["metadata"]
    assert metadata["camera_keys"] == ["observation/image", "observation/wrist_image"]
    assert (metadata["state_key"], metadata["prompt_key"]) == ("observation/state", "prompt")
    assert (metadata["action_dim"], metadata["num_actions_chunk"], metadata["proprio_dim"]) == (7, 8, 8)
    assert (metadata["image_size"], metadata["unnorm_key"]) == (224, "libero_spatial_no_noops")
    assert metadata["checkpoint"] == tiny_checkpoint.name and metadata["gripper"] == "libero"
    expected = in_process_actions(policy, request_payload)
    assert seen["actions_dtype"] == "float64"
    np.testing.assert_array_equal(np.array(seen["actions"]), expected)
    assert set(np.array(seen["actions"])[:, -1]) <= {-1.0, 1.0}  # LIBERO's gripper command
    assert seen["server_timing"]["batch_size"] == 1 and seen["server_timing"]["infer_ms"] > 0
    assert "Error in inference server" in seen["error"] and "missing key(s) ['observation/image']" in seen["error"]
    np.testing.assert_array_equal(np.array(seen["actions_again"]), expected)


def test_two_concurrent_clients_share_one_forward_pass(
    policy: VLAPolicy, tiny_checkpoint: Path, request_payload: dict
) -> None:
    payloads = [request_payload, {**request_payload, "observation/state": np.zeros(8)}]
    expected = [in_process_actions(policy, payload) for payload in payloads]
    replies: list[dict | None] = [None, None]
    # The first request waits up to 10 minutes for a second one: the batch closes when the other client's arrives.
    with serve(policy, tiny_checkpoint, max_batch_size=2, batch_wait_ms=600_000) as port:
        clients = [PolicyClient(f"ws://127.0.0.1:{port}") for _ in payloads]

        def ask(index: int) -> None:
            replies[index] = clients[index].infer(payloads[index])

        threads = [threading.Thread(target=ask, args=(index,)) for index in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        for client in clients:
            client.close()
    for reply, reference in zip(replies, expected, strict=True):
        assert reply is not None and reply["server_timing"]["batch_size"] == 2
        np.testing.assert_allclose(reply["actions"], reference, rtol=1e-5, atol=1e-5)


class FailsOnPrompt:
    """The real policy, except that any batch holding the prompt ``poison`` raises (as a broken input would)."""

    def __init__(self, policy: VLAPolicy, poison: str):
        self.policy, self.poison, self.calls = policy, poison, []
        self.unnorm_key = policy.unnorm_key

    def preprocess(self, observation, instruction):
        return self.policy.preprocess(observation, instruction), instruction

    def predict_prepared(self, queries):
        self.calls.append(len(queries))
        if any(instruction == self.poison for _, instruction in queries):
            raise ValueError(f"cannot handle {self.poison!r}")
        return self.policy.predict_prepared([prepared for prepared, _ in queries])


def test_a_query_that_breaks_the_model_fails_alone_not_its_batch(
    policy: VLAPolicy, tiny_checkpoint: Path, request_payload: dict
) -> None:
    flaky = FailsOnPrompt(policy, poison="explode")
    cfg = ServeConfig(pretrained_checkpoint=str(tiny_checkpoint), port=0, max_batch_size=2, batch_wait_ms=600_000)
    replies: list[object] = [None, None]
    with server_in_thread(build_server(cfg, flaky)) as port:
        clients = [PolicyClient(f"ws://127.0.0.1:{port}") for _ in range(2)]

        def ask(index: int) -> None:
            try:
                replies[index] = clients[index].infer({**request_payload, "prompt": [INSTRUCTION, "explode"][index]})
            except PolicyServerError as error:
                replies[index] = error

        threads = [threading.Thread(target=ask, args=(index,)) for index in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        for client in clients:
            client.close()
    assert flaky.calls == [2, 1, 1]  # the batch, then each query alone
    np.testing.assert_array_equal(replies[0]["actions"], in_process_actions(policy, request_payload))
    assert str(replies[1]) == "error: the policy failed: ValueError: cannot handle 'explode'"


def raw_array(array: np.ndarray, **overrides: object) -> dict:
    """openpi's encoding of ``array`` with some fields replaced (``dtype=``, ``shape=``)."""
    fields = {"data": array.tobytes(), "dtype": array.dtype.str, "shape": list(array.shape), **overrides}
    return {b"__ndarray__": True, **{key.encode(): value for key, value in fields.items()}}


def malformed_requests(good: dict) -> dict[str, tuple[bytes | str, str]]:
    """Name -> (frame, text the error must contain)."""
    image = good["observation/image"]

    def with_(**changes: object) -> bytes:
        return packb({**good, **{key.replace("__", "/"): value for key, value in changes.items()}})

    without_wrist = {key: value for key, value in good.items() if key != "observation/wrist_image"}
    return {
        "missing key": (packb(without_wrist), "missing key(s) ['observation/wrist_image']"),
        "float image": (with_(observation__image=image.astype(np.float32)), "'observation/image': expected a uint8"),
        "grey image": (with_(observation__image=image[..., 0].copy()), "found ndarray (224, 224) uint8"),
        "channels first": (with_(observation__image=image.transpose(2, 0, 1).copy()), "found ndarray (3, 224, 224)"),
        "image as list": (with_(observation__image=[1, 2, 3]), "found list"),
        "tiny image": (with_(observation__image=np.zeros((0, 224, 3), np.uint8)), "expected an image of 16 to 8192"),
        "short state": (with_(observation__state=np.zeros(7)), "'observation/state': expected a finite numeric array"),
        "nan state": (with_(observation__state=np.full(8, np.nan)), "of shape (8,)"),
        "empty prompt": (with_(prompt=""), "'prompt': expected a non-empty instruction"),
        "object dtype": (with_(observation__wrist_image=raw_array(image, dtype="|O")), "dtype object is not allowed"),
        "truncated data": (
            with_(observation__wrist_image=raw_array(image[:100], shape=[224, 224, 3])),
            "array data does not hold a uint8 array of shape (224, 224, 3)",
        ),
        "not msgpack": (b"\xc1\xc1\xc1", "not a msgpack message"),
        "not a map": (packb([1, 2, 3]), "expected a map of observation keys, got list"),
        "text frame": ("hello", "expected a binary msgpack frame"),
        "huge image": (
            with_(observation__image=np.zeros((700, 700, 3), np.uint8)),
            "exceeds the server's limit of 1.0",
        ),
    }


def test_each_malformed_request_gets_its_error_and_the_connection_stays_usable(
    policy: VLAPolicy, tiny_checkpoint: Path, request_payload: dict
) -> None:
    expected = in_process_actions(policy, request_payload)
    cases = malformed_requests(request_payload)
    with serve(policy, tiny_checkpoint, max_message_mb=1.0) as port, connect(f"ws://127.0.0.1:{port}") as websocket:
        assert unpackb(websocket.recv())["action_dim"] == 7
        for name, (frame, message) in cases.items():
            websocket.send(frame)
            reply = websocket.recv()
            assert isinstance(reply, str) and reply.startswith("error: "), name
            assert message in reply, (name, reply)
            websocket.send(packb(request_payload))
            np.testing.assert_array_equal(unpackb(websocket.recv())["actions"], expected, err_msg=name)


def test_a_message_beyond_twice_the_limit_closes_only_its_connection(
    policy: VLAPolicy, tiny_checkpoint: Path, request_payload: dict
) -> None:
    oversized = packb({**request_payload, "observation/image": np.zeros((1000, 1000, 3), np.uint8)})  # 2.9 MiB
    with serve(policy, tiny_checkpoint, max_message_mb=1.0) as port:
        with connect(f"ws://127.0.0.1:{port}", max_size=None) as websocket:
            websocket.recv()
            websocket.send(oversized)
            with pytest.raises(ConnectionClosedError) as closed:
                websocket.recv()
            assert closed.value.rcvd.code == 1009  # message too big
        client = PolicyClient(f"ws://127.0.0.1:{port}")
        np.testing.assert_array_equal(
            client.infer(request_payload)["actions"], in_process_actions(policy, request_payload)
        )
        client.close()


def test_api_key_is_checked_on_connect(policy: VLAPolicy, tiny_checkpoint: Path, request_payload: dict) -> None:
    with serve(policy, tiny_checkpoint, api_key=API_KEY) as port:
        health = urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"http://127.0.0.1:{port}/healthz")
        assert (health.status, health.read()) == (200, b"OK\n")  # no key needed to see that it is up
        uri = f"ws://127.0.0.1:{port}"
        for wrong in (None, "wrong-key-0123456789"):
            with pytest.raises(InvalidStatus) as rejected:
                PolicyClient(uri, api_key=wrong or "")
            assert rejected.value.response.status_code == 401
        client = PolicyClient(uri, api_key=API_KEY)
        assert client.infer(request_payload)["actions"].shape == (8, 7)
        client.close()
        with pytest.raises(PolicyServerError, match="missing key"):
            client = PolicyClient(uri, api_key=API_KEY)
            client.infer({"prompt": INSTRUCTION})
        client.close()


def test_exposed_bind_without_key_refuses_to_start_in_one_line(tiny_checkpoint: Path) -> None:
    command = [sys.executable, "vla-scripts/serve_policy.py", "--pretrained_checkpoint", str(tiny_checkpoint)]
    env = {key: value for key, value in os.environ.items() if key != "POLICY_SERVER_API_KEY"} | {"USE_TF": "0"}
    completed = subprocess.run(
        [*command, "--host", "0.0.0.0"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 2 and completed.stdout == ""
    assert completed.stderr.strip().splitlines() == [
        "error: --host 0.0.0.0 exposes the server beyond this machine: pass --api_key KEY or set POLICY_SERVER_API_KEY "
        "(clients send 'Authorization: Api-Key KEY'), or bind 127.0.0.1"
    ]
    short_key = subprocess.run(
        [*command, "--host", "0.0.0.0", "--api_key", "abc"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert short_key.returncode == 2 and short_key.stderr.strip() == "error: --api_key: expected at least 8 characters"


def test_help_lists_every_serving_flag(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        draccus.parse(config_class=ServeConfig, args=["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert [name for name in ServeConfig.__dataclass_fields__ if f"--{name}" not in help_text] == []


def test_key_mapping_serves_another_robots_request(tiny_checkpoint: Path, request_payload: dict) -> None:
    cfg = ServeConfig(
        pretrained_checkpoint=str(tiny_checkpoint),
        camera_keys=["cam/front", "cam/hand"],
        state_key="joints",
        prompt_key="task",
    )
    spec = observation_spec(cfg, checkpoint_policy_config(cfg))
    request = {
        "cam/front": request_payload["observation/image"],
        "cam/hand": request_payload["observation/wrist_image"],
        "joints": np.arange(8, dtype=np.float32),
        "task": INSTRUCTION,
        "extra/ignored": np.zeros(3),
    }
    observation, prompt = spec.parse(request)
    assert list(observation) == ["full_image", "wrist_image", "state"] and prompt == INSTRUCTION
    assert observation["full_image"] is request["cam/front"] and observation["state"].dtype == np.float64
    with pytest.raises(ObservationError, match=r"missing key\(s\) \['joints'\]; expected \['cam/front', 'cam/hand'"):
        spec.parse({key: value for key, value in request.items() if key != "joints"})
    with pytest.raises(UserError, match=r"--camera_keys \['cam/front'\]: the checkpoint reads 2 image"):
        observation_spec(replace(cfg, camera_keys=["cam/front"]), checkpoint_policy_config(cfg))


def test_openvla_oft_http_endpoint_answers_json_numpy_requests(
    policy: VLAPolicy, tiny_checkpoint: Path, request_payload: dict
) -> None:
    """OFT's deploy.py client: ``requests.post(url, json=obs)`` with json_numpy patched, or the "encoded" form."""
    observation = {
        "full_image": request_payload["observation/image"],
        "wrist_image": request_payload["observation/wrist_image"],
        "state": request_payload["observation/state"],
        "instruction": INSTRUCTION,
    }
    expected = policy.predict_chunk(observation, INSTRUCTION)  # OFT replies before gripper post-processing

    without_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def post(port: int, body: str, key: str | None = API_KEY) -> tuple[int, object]:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Api-Key {key}"} if key else {})}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/act", body.encode(), headers, method="POST")
        try:
            with without_proxy.open(request, timeout=300) as response:
                return response.status, json_numpy.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    server = build_server(
        ServeConfig(
            pretrained_checkpoint=str(tiny_checkpoint), port=0, http_port=0, api_key=API_KEY, max_message_mb=3.0
        ),
        policy,
    )
    with server_in_thread(server):
        port = server.http_port
        status, actions = post(port, json_numpy.dumps(observation))
        assert status == 200 and len(actions) == 8 and actions[0].shape == (7,)
        np.testing.assert_array_equal(np.stack(actions), expected)
        status, encoded = post(port, json.dumps({"encoded": json_numpy.dumps(observation)}))
        assert status == 200 and isinstance(encoded, str)
        np.testing.assert_array_equal(np.stack(json_numpy.loads(encoded)), expected)

        without_state = json_numpy.dumps({k: v for k, v in observation.items() if k != "state"})
        assert post(port, without_state) == (
            400,
            {
                "error": "bad observation: missing key(s) ['state']; expected "
                "['full_image', 'wrist_image', 'state', 'instruction']"
            },
        )
        status, error = post(port, json_numpy.dumps({**observation, "full_image": np.zeros((224, 224), np.uint8)}))
        assert status == 400 and "'full_image': expected a uint8 numpy array of shape (H, W, 3)" in error["error"]
        assert post(port, json_numpy.dumps(observation), key="wrong-key-0123")[0] == 401
        assert post(port, json_numpy.dumps(observation), key=None)[0] == 401
        huge = json_numpy.dumps({**observation, "full_image": np.zeros((1000, 1000, 3), np.uint8)})  # 4.1 MiB
        assert post(port, huge) == (
            413,
            {"error": "body of 4.1 MiB exceeds the server's limit of 3.0 MiB (--max_message_mb)"},
        )
        status, actions = post(port, json_numpy.dumps(observation))
        assert status == 200
        np.testing.assert_array_equal(np.stack(actions), expected)


def test_taken_port_is_a_one_line_error(tiny_checkpoint: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        completed = subprocess.run(
            [
                *(sys.executable, "vla-scripts/serve_policy.py"),
                *("--pretrained_checkpoint", str(tiny_checkpoint), "--port", str(port)),
            ],
            cwd=REPO_ROOT,
            env={**os.environ, "USE_TF": "0"},
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert completed.returncode == 2
    last_line = completed.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: --host 127.0.0.1 --port {port}: cannot bind: ")
