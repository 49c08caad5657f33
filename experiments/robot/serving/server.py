"""A policy server speaking openpi's websocket protocol, with request batching and an API key.

Protocol (openpi_client 0.1.2, ``websocket_client_policy.py``): the client connects (optionally with the header
``Authorization: Api-Key <key>``), receives one binary msgpack frame with the server metadata, then sends one binary
msgpack frame per observation and receives either a binary frame ``{"actions": [chunk, action_dim], "server_timing":
{...}}`` or a text frame with an error message, after which the connection stays usable. ``GET /healthz`` answers
200 without a key.

Requests from all connections go into one queue; a batcher takes up to ``max_batch_size`` of them, waiting at most
``batch_wait_ms`` after the first for more, and answers them with one :meth:`VLAPolicy.predict_chunks` call in a
worker thread, so the event loop keeps receiving and replying meanwhile: a slow or vanished client delays nobody.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

import numpy as np
from websockets.asyncio.server import Request, Response, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from experiments.robot.image_utils import check_image_format
from experiments.robot.libero.libero_utils import process_action
from experiments.robot.policy import Observation
from experiments.robot.serving.wire import WireError, packb, unpackb
from prismatic.policy.config import PolicyConfig

HEALTH_PATH = "/healthz"
MAX_PROMPT_CHARS = 2000
# Messages up to this multiple of the size limit are read and answered with an error; larger ones close the
# connection (code 1009) before being buffered.
TRANSPORT_SIZE_FACTOR = 2


class ObservationError(ValueError):
    """An observation that the policy cannot take; the message names the key and what was expected."""


class BatchPolicy(Protocol):
    def predict_chunks(self, queries: Sequence[tuple[Observation, str]]) -> list[np.ndarray]: ...


def policy_camera_key(index: int) -> str:
    """The :class:`VLAPolicy` observation key of camera ``index`` (primary first, then wrist cameras)."""
    return "full_image" if index == 0 else "wrist_image" if index == 1 else f"wrist_image_{index}"


@dataclass(frozen=True)
class ObservationSpec:
    """Which request keys hold the cameras (primary first), the unnormalised state and the instruction."""

    camera_keys: tuple[str, ...]
    state_key: str | None  # None: the policy reads no proprio
    prompt_key: str
    proprio_dim: int

    @classmethod
    def openpi_default(cls, policy_config: PolicyConfig) -> ObservationSpec:
        """openpi's LIBERO keys: ``observation/<camera name>``, ``observation/state`` and ``prompt``."""
        cameras = policy_config.embodiment.camera_names[: policy_config.num_images_in_input]
        return cls(
            camera_keys=tuple(f"observation/{name}" for name in cameras),
            state_key="observation/state" if policy_config.use_proprio else None,
            prompt_key="prompt",
            proprio_dim=policy_config.embodiment.proprio_dim,
        )

    def parse(self, request: Any) -> tuple[Observation, str]:
        """The policy observation and instruction of one request; raises :class:`ObservationError`."""
        if not isinstance(request, dict):
            raise ObservationError(f"expected a map of observation keys, got {type(request).__name__}")
        missing = [key for key in (*self.camera_keys, self.state_key, self.prompt_key) if key and key not in request]
        if missing:
            raise ObservationError(f"missing key(s) {missing}; expected {self.expected_keys()}")
        observation: Observation = {}
        for index, key in enumerate(self.camera_keys):
            try:
                check_image_format(request[key], repr(key))
            except ValueError as error:
                raise ObservationError(str(error)) from None
            observation[policy_camera_key(index)] = request[key]
        if self.state_key is not None:
            state = request[self.state_key]
            if (
                not isinstance(state, np.ndarray)
                or state.dtype.kind not in "iuf"
                or state.shape != (self.proprio_dim,)
                or not np.isfinite(state).all()
            ):
                found = f"{type(state).__name__} {getattr(state, 'shape', '')} {getattr(state, 'dtype', '')}"
                raise ObservationError(
                    f"{self.state_key!r}: expected a finite numeric array of shape ({self.proprio_dim},) in the "
                    f"robot's units, found {found}"
                )
            observation["state"] = state.astype(np.float64)
        prompt = request[self.prompt_key]
        if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
            raise ObservationError(
                f"{self.prompt_key!r}: expected a non-empty instruction string of at most {MAX_PROMPT_CHARS} "
                f"characters, found {type(prompt).__name__} of length {len(prompt) if isinstance(prompt, str) else 0}"
            )
        return observation, prompt

    def expected_keys(self) -> list[str]:
        return [key for key in (*self.camera_keys, self.state_key, self.prompt_key) if key]


def to_robot_units(chunk: np.ndarray, policy_config: PolicyConfig) -> np.ndarray:
    """The predicted chunk as the robot executes it (the checkpoint's gripper convention applied)."""
    if policy_config.embodiment.gripper == "libero":
        return process_action(chunk, "openvla")
    return chunk


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000  # 0: a free port chosen by the OS
    api_key: str | None = None
    max_batch_size: int = 8
    batch_wait_ms: float = 5.0
    max_message_bytes: int = 32 * 2**20


@dataclass
class _Request:
    query: tuple[Observation, str]
    received: float
    future: asyncio.Future


class PolicyServer:
    """Serves ``policy`` to openpi clients; see the module docstring for the protocol."""

    def __init__(
        self,
        policy: BatchPolicy,
        spec: ObservationSpec,
        metadata: dict[str, Any],
        settings: ServerSettings,
        postprocess: Callable[[np.ndarray], np.ndarray] = lambda chunk: chunk,
    ):
        self.policy, self.spec, self.metadata, self.settings = policy, spec, metadata, settings
        self.postprocess = postprocess
        self._queue: asyncio.Queue[_Request] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == HEALTH_PATH:
            return connection.respond(HTTPStatus.OK, "OK\n")
        if self.settings.api_key is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Api-Key {self.settings.api_key}".encode()):
                return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong 'Authorization: Api-Key' header\n")
        return None

    async def _answer(self, message: str | bytes) -> str | bytes:
        """The reply frame to one request frame: packed actions, or an error text."""
        if isinstance(message, str):
            return "error: expected a binary msgpack frame, got a text frame"
        if len(message) > self.settings.max_message_bytes:
            return (
                f"error: message of {len(message) / 2**20:.1f} MiB exceeds the server's limit of "
                f"{self.settings.max_message_bytes / 2**20:.1f} MiB (--max_message_mb)"
            )
        try:
            query = self.spec.parse(unpackb(message))
        except (WireError, ObservationError) as error:
            return f"error: bad observation: {error}"
        assert self._queue is not None
        request = _Request(query, time.perf_counter(), asyncio.get_running_loop().create_future())
        await self._queue.put(request)
        try:
            chunk, timing = await request.future
        except Exception as error:  # noqa: BLE001 - reported to the client; the server keeps serving
            return f"error: the policy failed: {type(error).__name__}: {error}"
        return packb({"actions": chunk, "server_timing": timing})

    async def _handle(self, websocket: ServerConnection) -> None:
        try:
            await websocket.send(packb(self.metadata))
            async for message in websocket:
                await websocket.send(await self._answer(message))
        except ConnectionClosed:
            return

    async def _take_batch(self) -> list[_Request]:
        """The first waiting request and those arriving within ``batch_wait_ms``, up to ``max_batch_size``."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.settings.batch_wait_ms / 1000
        while len(batch) < self.settings.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._take_batch()
            started = time.perf_counter()
            try:
                chunks = await loop.run_in_executor(
                    self._executor, self.policy.predict_chunks, [request.query for request in batch]
                )
                replies = [self.postprocess(chunk) for chunk in chunks]
            except Exception as error:  # noqa: BLE001 - every request of the batch gets the error
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(error)
                continue
            infer_ms = (time.perf_counter() - started) * 1000
            for request, actions in zip(batch, replies, strict=True):
                if not request.future.done():
                    timing = {"infer_ms": infer_ms, "queue_ms": (started - request.received) * 1000}
                    request.future.set_result((actions, {**timing, "batch_size": len(batch)}))

    async def serve(self, on_ready: Callable[[int], None], stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; ``on_ready`` gets the bound port once clients can connect."""
        self._queue = asyncio.Queue()
        batcher = asyncio.create_task(self._batch_loop())
        try:
            async with serve(
                self._handle,
                self.settings.host,
                self.settings.port,
                compression=None,
                max_size=TRANSPORT_SIZE_FACTOR * self.settings.max_message_bytes,
                process_request=self._process_request,
            ) as server:
                on_ready(next(iter(server.sockets)).getsockname()[1])
                await stop.wait()
        finally:
            batcher.cancel()
            self._executor.shutdown(wait=False, cancel_futures=True)


@contextmanager
def server_in_thread(server: PolicyServer, startup_timeout_s: float = 60.0) -> Iterator[int]:
    """Run ``server`` in a background thread (tests, benchmarks, notebooks); yields the bound port."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()
    port: list[int] = []
    failure: list[BaseException] = []

    def on_ready(bound_port: int) -> None:
        port.append(bound_port)
        ready.set()

    def run() -> None:
        try:
            loop.run_until_complete(server.serve(on_ready, stop))
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(error)
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="policy-server", daemon=True)
    thread.start()
    if not ready.wait(startup_timeout_s) or failure:
        raise RuntimeError(f"the policy server did not start: {failure[0] if failure else 'timed out'}")
    try:
        yield port[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=startup_timeout_s)
