"""OpenVLA-OFT's REST endpoint (``vla-scripts/deploy.py``) for users of that stack: ``POST /act``.

The body is a JSON observation in json-numpy's encoding (arrays as ``{"__numpy__": base64, "dtype", "shape"}``) with
OFT's keys (``full_image``, ``wrist_image``, ``state``, ``instruction``), or ``{"encoded": "<that JSON as a
string>"}``; the reply is the chunk as a JSON list of json-numpy arrays (a JSON string of it for ``encoded``), as
OFT's ``get_vla_action`` returns it: un-normalised, without the gripper post-processing. Errors are JSON
``{"error": ...}`` with status 400, 401 or 413 (the connection stays usable up to twice the size limit). It runs on
its own port (websockets serves only GET requests) in the same process, sharing the websocket server's batching,
key and size limit. Each connection's thread decodes and preprocesses its own requests; a connection that sends
nothing for ``request_timeout_s`` (a half-sent request, an idle keep-alive) is closed, freeing its thread.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import numpy as np

from experiments.robot.serving.observation import BAD_QUERY_ERRORS
from experiments.robot.serving.wire import ALLOWED_DTYPE_KINDS

if TYPE_CHECKING:
    from experiments.robot.serving.server import PolicyServer

ACT_PATH = "/act"
DISCARD_CHUNK_BYTES = 1 << 16
UNAUTHORIZED_MESSAGE = "missing or wrong 'Authorization: Api-Key' header"
logger = logging.getLogger(__name__)


def decode_json_numpy(obj: dict) -> Any:
    """json-numpy's object hook, restricted to numeric and boolean dtypes with consistent sizes."""
    if "__numpy__" not in obj:
        return obj
    try:
        dtype = np.dtype(obj["dtype"])
        data = base64.b64decode(obj["__numpy__"], validate=True)
        shape = tuple(obj["shape"])
    except (KeyError, TypeError, ValueError, binascii.Error) as error:
        raise ValueError(f"malformed json-numpy array: {error}") from None
    if dtype.kind not in ALLOWED_DTYPE_KINDS:
        raise ValueError(f"numpy dtype {dtype} is not allowed: expected a numeric or boolean dtype")
    if not all(isinstance(n, int) and n >= 0 for n in shape) or len(data) != dtype.itemsize * int(np.prod(shape)):
        raise ValueError(f"json-numpy data does not hold a {dtype} array of shape {shape}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    return array if shape else array[()]


def read_json(text: str | bytes) -> Any:
    """A JSON request body with json-numpy arrays; nesting too deep for the parser is a ValueError, not a crash."""
    try:
        return json.loads(text, object_hook=decode_json_numpy)
    except RecursionError:
        raise ValueError("JSON nested too deeply: expected an observation map of arrays and strings") from None


def encode_json_numpy(array: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(array)
    return {"__numpy__": base64.b64encode(array.tobytes()).decode(), "dtype": array.dtype.str, "shape": array.shape}


class _ActHandler(BaseHTTPRequestHandler):
    server: _ActHTTPServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.policy_server.settings.request_timeout_s  # socket timeout of this connection
        super().setup()

    def _reply(self, status: HTTPStatus, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        self.close_connection = True  # the body (if any) is left unread
        self._reply(status, {"error": message})

    def _discard_body(self, length: int) -> None:
        """Read and drop a rejected body, so the connection stays usable."""
        while length > 0:
            chunk = self.rfile.read(min(length, DISCARD_CHUNK_BYTES))
            if not chunk:
                return
            length -= len(chunk)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        policy_server = self.server.policy_server
        settings = policy_server.settings
        length_header = self.headers.get("Content-Length", "")
        if not length_header.isdigit():
            return self._refuse(HTTPStatus.LENGTH_REQUIRED, "expected a Content-Length header")
        length = int(length_header)
        too_large = (
            f"body of {length / 2**20:.1f} MiB exceeds the server's limit of "
            f"{settings.max_message_bytes / 2**20:.1f} MiB (--max_message_mb)"
        )
        if length > settings.transport_limit_bytes:
            return self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, too_large)
        if self.path != ACT_PATH:
            rejection = (HTTPStatus.NOT_FOUND, f"unknown path {self.path!r}; expected POST {ACT_PATH}")
        elif not policy_server.authorized(self.headers.get("Authorization")):
            rejection = (HTTPStatus.UNAUTHORIZED, UNAUTHORIZED_MESSAGE)
        elif length > settings.max_message_bytes:
            rejection = (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, too_large)
        else:
            rejection = None
        if rejection is not None:
            self._discard_body(length)
            return self._reply(rejection[0], {"error": rejection[1]})
        body = self.rfile.read(length)
        try:
            payload = read_json(body)
            encoded = isinstance(payload, dict) and "encoded" in payload
            if encoded:
                payload = read_json(payload["encoded"])
            query = policy_server.prepare(self.server.spec, payload)
        except BAD_QUERY_ERRORS as error:
            return self._reply(HTTPStatus.BAD_REQUEST, {"error": f"bad observation: {error}"})
        try:
            chunk, _ = policy_server.infer_threadsafe(query)
        except Exception as error:  # noqa: BLE001 - reported to the client; the server keeps serving
            return self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(error).__name__}: {error}"})
        actions = [encode_json_numpy(action) for action in chunk]  # OFT: a list of [action_dim] arrays
        self._reply(HTTPStatus.OK, json.dumps(actions) if encoded else actions)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        logger.debug(format, *args)


class _ActHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], policy_server: PolicyServer):
        self.policy_server = policy_server
        assert policy_server.http_spec is not None
        self.spec = policy_server.http_spec
        super().__init__(address, _ActHandler)


def start_act_server(policy_server: PolicyServer, host: str, port: int) -> ThreadingHTTPServer:
    """Bind ``host:port`` and serve ``POST /act`` from a background thread; stop it with ``shutdown()``."""
    http_server = _ActHTTPServer((host, port), policy_server)
    threading.Thread(target=http_server.serve_forever, name="act-http", daemon=True).start()
    return http_server
