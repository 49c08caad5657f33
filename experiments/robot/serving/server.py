"""A policy server speaking openpi's websocket protocol, with request batching and an API key.

Protocol (openpi_client 0.1.2, ``websocket_client_policy.py``): the client connects (optionally with the header
``Authorization: Api-Key <key>``), receives one binary msgpack frame with the server metadata, then sends one binary
msgpack frame per observation and receives either a binary frame ``{"actions": [chunk, action_dim], "server_timing":
{...}}`` or a text frame with an error message, after which the connection stays usable. ``GET /healthz`` answers
200 without a key.

Each request is decoded, checked and preprocessed (images resized and cropped, prompt tokenised:
:meth:`VLAPolicy.preprocess`) in a pool of preprocessing threads, one request per connection at a time; the prepared
requests of all connections go into one queue; a batcher takes up to ``max_batch_size`` of them, waiting at most
``batch_wait_ms`` after the first for more, and answers them with one :meth:`VLAPolicy.predict_prepared` call in the
inference thread, which runs nothing else. So the event loop keeps receiving and replying meanwhile, and a slow,
vanished or abusive client (huge frames, long prompts) delays nobody else's forward pass.

Bounds: a message larger than twice ``max_message_bytes`` closes its connection unread; a connection buffers at most
``PIPELINED_FRAMES`` frames beyond the one being answered before its socket is no longer read (pipelined frames then
wait in the client's socket); the HTTP endpoint drops a connection that sends nothing for ``request_timeout_s``
(websocket connections answer keepalive pings or are closed).
"""

from __future__ import annotations

import asyncio
import hmac
import os
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

from experiments.robot.policy import Observation, check_finite_actions
from experiments.robot.serving.http_act import UNAUTHORIZED_MESSAGE, start_act_server
from experiments.robot.serving.observation import BAD_QUERY_ERRORS, ObservationSpec
from experiments.robot.serving.wire import packb, unpackb

HEALTH_PATH = "/healthz"
# Messages up to this multiple of the size limit are read and answered with an error; larger ones close the
# connection (code 1009) before being buffered.
TRANSPORT_SIZE_FACTOR = 2
# Frames a connection may hold beyond the one being answered before reading from its socket pauses (websockets'
# high-water mark, low-water mark 0): at most about (PIPELINED_FRAMES + 2) x the transport limit per connection.
PIPELINED_FRAMES = 1
INFERENCE_THREAD_PREFIX = "policy-inference"
PREPROCESS_THREAD_PREFIX = "policy-preprocess"


class BatchPolicy(Protocol):
    def preprocess(self, observation: Observation, instruction: str) -> Any: ...

    def predict_prepared(self, queries: Sequence[Any]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000  # 0: a free port chosen by the OS
    api_key: str | None = None
    max_batch_size: int = 8
    batch_wait_ms: float = 5.0
    max_message_bytes: int = 32 * 2**20
    http_port: int | None = None  # also serve OpenVLA-OFT's POST /act here (0: a free port chosen by the OS)
    request_timeout_s: float = 30.0  # an HTTP connection silent for this long is closed
    keepalive_timeout_s: float = 20.0  # a websocket peer silent this long after a ping is dropped (0: no pings)
    preprocess_workers: int = min(8, os.cpu_count() or 1)  # threads decoding and preprocessing requests

    @property
    def transport_limit_bytes(self) -> int:
        """Messages up to this size are read (and answered with an error above the limit); larger ones are refused
        unread, which closes the connection."""
        return TRANSPORT_SIZE_FACTOR * self.max_message_bytes


@dataclass
class _Request:
    query: Any  # the policy's prepared query
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
        http_spec: ObservationSpec | None = None,
    ):
        self.policy, self.spec, self.metadata, self.settings = policy, spec, metadata, settings
        self.postprocess = postprocess
        self.http_spec = http_spec  # request keys of the HTTP endpoint (settings.http_port)
        self._queue: asyncio.Queue[_Request] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.http_port: int | None = None  # the bound port of the HTTP endpoint, once serving
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=INFERENCE_THREAD_PREFIX)
        self._preprocess_pool = ThreadPoolExecutor(
            max_workers=settings.preprocess_workers, thread_name_prefix=PREPROCESS_THREAD_PREFIX
        )

    def authorized(self, authorization_header: str | None) -> bool:
        """Whether a request with this ``Authorization`` header may use the policy."""
        if self.settings.api_key is None:
            return True
        expected = f"Api-Key {self.settings.api_key}".encode()
        return hmac.compare_digest((authorization_header or "").encode(), expected)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == HEALTH_PATH:
            return connection.respond(HTTPStatus.OK, "OK\n")
        if not self.authorized(request.headers.get("Authorization")):
            return connection.respond(HTTPStatus.UNAUTHORIZED, UNAUTHORIZED_MESSAGE + "\n")
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
            prepared, raw_actions = await asyncio.get_running_loop().run_in_executor(
                self._preprocess_pool, self._decode_and_prepare, message
            )
        except BAD_QUERY_ERRORS as error:
            return f"error: bad observation: {error}"
        except Exception as error:  # noqa: BLE001 - reported to the client; the server keeps serving
            return f"error: the policy failed: {type(error).__name__}: {error}"
        try:
            chunk, timing = await self.infer(prepared)
        except Exception as error:  # noqa: BLE001 - reported to the client; the server keeps serving
            return f"error: the policy failed: {type(error).__name__}: {error}"
        actions = chunk if raw_actions else self.postprocess(chunk)
        return packb({"actions": actions, "server_timing": timing})

    def _decode_and_prepare(self, message: bytes) -> tuple[Any, bool]:
        """A websocket frame's prepared query, and whether it asks for the chunk before post-processing."""
        request = unpackb(message)
        return self.prepare(self.spec, request), self.spec.wants_raw_actions(request)

    def prepare(self, spec: ObservationSpec, request: Any) -> Any:
        """The policy's prepared query of one decoded request (checked against ``spec``, then preprocessed); runs in
        a preprocessing or HTTP thread, never in the inference thread. Bad input raises one of ``BAD_QUERY_ERRORS``."""
        return self.policy.preprocess(*spec.parse(request))

    async def infer(self, query: Any) -> tuple[np.ndarray, dict[str, float]]:
        """The model's un-normalised chunk for one prepared query (batched with others) and its timing."""
        assert self._queue is not None
        request = _Request(query, time.perf_counter(), asyncio.get_running_loop().create_future())
        await self._queue.put(request)
        chunk, timing = await request.future
        return check_finite_actions(chunk), timing

    def infer_threadsafe(self, query: Any) -> tuple[np.ndarray, dict[str, float]]:
        """:meth:`infer` from another thread (the HTTP endpoint's)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(self.infer(query), self._loop).result()

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

    async def _predict(self, queries: list[Any]) -> list[np.ndarray | Exception]:
        """Chunks of ``queries`` from one ``predict_prepared`` call; when it fails, each query is retried alone, so
        only the one that breaks the model gets its error."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self.policy.predict_prepared, queries)
        except Exception as error:  # noqa: BLE001 - handed to the request(s) it belongs to
            if len(queries) == 1:
                return [error]
        return [result for query in queries for result in await self._predict([query])]

    async def _batch_loop(self) -> None:
        while True:
            batch = await self._take_batch()
            started = time.perf_counter()
            results = await self._predict([request.query for request in batch])
            infer_ms = (time.perf_counter() - started) * 1000
            for request, result in zip(batch, results, strict=True):
                if request.future.done():
                    continue
                if isinstance(result, Exception):
                    request.future.set_exception(result)
                else:
                    timing = {"infer_ms": infer_ms, "queue_ms": (started - request.received) * 1000}
                    request.future.set_result((result, {**timing, "batch_size": len(batch)}))

    async def serve(self, on_ready: Callable[[int], None], stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; ``on_ready`` gets the bound port once clients can connect."""
        self._queue = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        batcher = asyncio.create_task(self._batch_loop())
        http_server = None
        try:
            if self.settings.http_port is not None:
                http_server = start_act_server(self, self.settings.host, self.settings.http_port)
                self.http_port = http_server.server_address[1]
            async with serve(
                self._handle,
                self.settings.host,
                self.settings.port,
                compression=None,
                max_size=self.settings.transport_limit_bytes,
                max_queue=(PIPELINED_FRAMES, 0),
                ping_interval=self.settings.keepalive_timeout_s or None,
                ping_timeout=self.settings.keepalive_timeout_s or None,
                process_request=self._process_request,
            ) as server:
                on_ready(next(iter(server.sockets)).getsockname()[1])
                await stop.wait()
        finally:
            if http_server is not None:
                http_server.shutdown()
                http_server.server_close()
            batcher.cancel()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._preprocess_pool.shutdown(wait=False, cancel_futures=True)


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
