"""The policy server under hostile or abusive clients: every bound is checked by what the server does, never by how
fast it does it (integer overflow, deep nesting, half-sent HTTP requests, resize-weight cache, pipelined frames, and
preprocessing outside the inference thread)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from websockets.sync.client import connect

from experiments.robot.libero.config import GenerateConfig
from experiments.robot.serving import server as server_module
from experiments.robot.serving.config import ServeConfig, build_server
from experiments.robot.serving.observation import ObservationSpec
from experiments.robot.serving.server import (
    INFERENCE_THREAD_PREFIX,
    PIPELINED_FRAMES,
    PolicyServer,
    ServerSettings,
    server_in_thread,
)
from experiments.robot.serving.wire import WireError, packb, unpackb
from experiments.robot.vla_policy import VLAPolicy
from prismatic.policy import policy as policy_module
from prismatic.vla import image_utils
from prismatic.vla.image_utils import ResampleWeightCache, resize_lanczos3

INSTRUCTION = "put the bowl on the plate"
SPEC = ObservationSpec(camera_keys=("image",), state_key=None, prompt_key="prompt", proprio_dim=0)
NESTING = 100_000


class EchoPolicy:
    """No model: a chunk of zeros; ``release`` (when given) holds every forward pass until it is set."""

    def __init__(self, release: threading.Event | None = None):
        self.release = release
        self.forward_passes = 0

    def preprocess(self, observation, instruction):
        return observation, instruction

    def predict_prepared(self, queries):
        if self.release is not None:
            self.release.wait(timeout=600)
        self.forward_passes += 1
        return [np.zeros((8, 7)) for _ in queries]


def echo_server(policy: EchoPolicy | None = None, **settings: object) -> PolicyServer:
    settings = {"port": 0, "http_port": 0, "max_message_bytes": 2**20, **settings}
    return PolicyServer(policy or EchoPolicy(), SPEC, {"protocol": "test"}, ServerSettings(**settings), http_spec=SPEC)


def good_request() -> dict:
    return {"image": np.zeros((32, 32, 3), np.uint8), "prompt": INSTRUCTION}


def test_integer_overflow_in_a_frame_is_an_error_frame_and_the_connection_stays_usable() -> None:
    overflowing = {
        "scalar beyond int8": {b"__npgeneric__": True, b"data": 1000, b"dtype": "|i1"},
        "shape overflowing int64": {b"__ndarray__": True, b"data": b"", b"dtype": "|u1", b"shape": [2**32, 2**32]},
        "scalar beyond uint64": {b"__npgeneric__": True, b"data": -(2**63), b"dtype": "<u8"},
    }
    with server_in_thread(echo_server()) as port, connect(f"ws://127.0.0.1:{port}") as websocket:
        websocket.recv()
        for name, value in overflowing.items():
            websocket.send(packb({**good_request(), "image": value}))
            reply = websocket.recv()
            assert isinstance(reply, str) and reply.startswith("error: bad observation: "), (name, reply)
            websocket.send(packb(good_request()))
            assert unpackb(websocket.recv())["actions"].shape == (8, 7), name


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    nested_msgpack = b"\x91" * NESTING + b"\x00"  # [[[...0...]]]
    with pytest.raises(WireError):
        unpackb(nested_msgpack)
    server = echo_server()
    with server_in_thread(server) as port, connect(f"ws://127.0.0.1:{port}") as websocket:
        websocket.recv()
        websocket.send(nested_msgpack)
        reply = websocket.recv()
        assert isinstance(reply, str) and reply.startswith("error: bad observation: ")

        connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=120)
        connection.request("POST", "/act", body="[" * NESTING + "]" * NESTING)
        response = connection.getresponse()
        assert response.status == 400
        assert json.loads(response.read()) == {
            "error": "bad observation: JSON nested too deeply: expected an observation map of arrays and strings"
        }
        connection.close()


def test_a_half_sent_http_request_is_dropped_after_the_timeout() -> None:
    server = echo_server(request_timeout_s=0.5)
    with server_in_thread(server):
        with socket.create_connection(("127.0.0.1", server.http_port)) as half_open:
            half_open.sendall(b'POST /act HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"image": ')
            half_open.settimeout(120)  # far beyond the server's 0.5 s: only a server that never closes fails this
            assert half_open.recv(1024) == b""  # the server closed the connection, freeing its thread
        with socket.create_connection(("127.0.0.1", server.http_port)) as silent:
            silent.settimeout(120)
            assert silent.recv(1024) == b""  # a connection that never sends a byte too


WEBSOCKET_HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def read_until_closed(connection: socket.socket, seconds: float) -> bool:
    """Reads (never answering a ping) until the server closes the connection (True) or ``seconds`` pass (False)."""
    connection.settimeout(seconds)
    try:
        while connection.recv(4096):
            pass
    except TimeoutError:
        return False
    return True


def test_a_websocket_client_that_never_answers_pings_is_dropped_unless_pings_are_off() -> None:
    for keepalive_timeout_s, dropped, wait_s in ((0.2, True, 120), (0, False, 2)):
        # 120 s: far beyond the 0.2 s, only a server that never pings fails; 2 s: with no pings nothing can time out
        with (
            server_in_thread(echo_server(keepalive_timeout_s=keepalive_timeout_s)) as port,
            socket.create_connection(("127.0.0.1", port)) as mute,
        ):
            mute.sendall(WEBSOCKET_HANDSHAKE)
            assert read_until_closed(mute, wait_s) is dropped


def test_resample_weight_cache_never_exceeds_its_bound() -> None:
    cache = ResampleWeightCache(max_bytes=4 * 224 * 300 * 8, compute=image_utils._lanczos3_weights)
    sizes = [300, 256, 300, 1000, 64, 299, 298, 297, 300, 5000]
    for size in sizes:
        weights = cache.get(size, 224)
        np.testing.assert_array_equal(weights, image_utils._lanczos3_weights(size, 224))
        assert cache.nbytes <= cache.max_bytes
    assert cache.get(300, 224) is cache.get(300, 224)  # small matrices are cached
    assert cache.get(5000, 224) is not cache.get(5000, 224)  # one beyond the bound is computed each time

    shared = image_utils.RESAMPLE_WEIGHT_CACHE
    for side in range(1000, 9000, 500):  # 16 clients, each with another extreme image size
        resize_lanczos3(np.zeros((16, side, 1), np.uint8), (224, 224))
        assert shared.nbytes <= shared.max_bytes


def test_pipelined_frames_wait_in_the_socket_not_in_server_memory() -> None:
    release = threading.Event()
    connections = []
    server = echo_server(EchoPolicy(release), max_message_bytes=2**20)
    handle = server._handle

    async def recording_handle(websocket):
        connections.append(websocket)
        await handle(websocket)

    server._handle = recording_handle
    frame = packb({**good_request(), "image": np.zeros((500, 600, 3), np.uint8)})  # 0.86 MiB
    frames_sent = [0]
    with server_in_thread(server) as port, connect(f"ws://127.0.0.1:{port}", max_size=None) as websocket:
        websocket.recv()

        def pipeline() -> None:
            for _ in range(48):  # 41 MiB without reading a reply; the first one's forward pass is held
                websocket.send(frame)
                frames_sent[0] += 1

        sender = threading.Thread(target=pipeline, daemon=True)
        sender.start()
        queued, last_count, last_change = [], -1, time.monotonic()
        while sender.is_alive() and time.monotonic() - last_change < 2:  # until the sender is blocked (or done)
            time.sleep(0.1)
            queued.append(len(connections[0].recv_messages.frames))
            if frames_sent[0] != last_count:
                last_count, last_change = frames_sent[0], time.monotonic()
        release.set()
        assert sender.is_alive()  # the client's socket is full: the server stopped reading it
        assert max(queued) <= PIPELINED_FRAMES + 1
        sender.join(timeout=600)
        assert frames_sent[0] == 48
        for _ in range(48):
            assert unpackb(websocket.recv())["actions"].shape == (8, 7)


def test_the_inference_thread_never_preprocesses(
    tiny_checkpoint: Path, agentview_frame: np.ndarray, wrist_frame: np.ndarray, monkeypatch
) -> None:
    policy = VLAPolicy.from_config(GenerateConfig(pretrained_checkpoint=str(tiny_checkpoint)))
    threads: dict[str, list[str]] = {"resize": [], "tokenise": [], "forward": []}

    def recorded(kind: str, function):
        def wrapper(*args, **kwargs):
            threads[kind].append(threading.current_thread().name)
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(
        policy_module, "resize_image_for_policy", recorded("resize", policy_module.resize_image_for_policy)
    )
    monkeypatch.setattr(policy.loaded, "processor", recorded("tokenise", policy.loaded.processor))
    monkeypatch.setattr(policy.loaded.vla, "predict_action", recorded("forward", policy.loaded.vla.predict_action))
    request = {
        "observation/image": np.ascontiguousarray(agentview_frame[::-1, ::-1]),  # 256 x 256: resized by the policy
        "observation/wrist_image": np.ascontiguousarray(wrist_frame[::-1, ::-1]),
        "observation/state": np.zeros(8),
        "prompt": INSTRUCTION,
    }
    server = build_server(ServeConfig(pretrained_checkpoint=str(tiny_checkpoint), port=0, http_port=0), policy)
    with server_in_thread(server) as port, connect(f"ws://127.0.0.1:{port}") as websocket:
        websocket.recv()
        for _ in range(3):
            websocket.send(packb(request))
            assert unpackb(websocket.recv())["actions"].shape == (8, 7)
    assert len(threads["resize"]) == 6 and len(threads["tokenise"]) == 6 and len(threads["forward"]) == 3
    assert all(name.startswith(INFERENCE_THREAD_PREFIX) for name in threads["forward"])
    preprocessing = threads["resize"] + threads["tokenise"]
    assert not any(name.startswith(INFERENCE_THREAD_PREFIX) for name in preprocessing)
    assert all(name.startswith(server_module.PREPROCESS_THREAD_PREFIX) for name in preprocessing)
