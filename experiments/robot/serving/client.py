"""A synchronous client of the policy server, as the LIBERO simulator workers use it (``--policy_server``).

It speaks the same protocol as openpi's ``WebsocketClientPolicy`` (which robots use; openpi-client pins numpy < 2,
so it cannot live in this environment) and maps the evaluation's observation onto the request keys that the server
announces in its metadata.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from websockets.exceptions import InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from experiments.robot.policy import Observation
from experiments.robot.serving.observation import RAW_ACTIONS_KEY, policy_camera_key
from experiments.robot.serving.wire import packb, unpackb

API_KEY_ENV = "POLICY_SERVER_API_KEY"  # read from the environment, so the key never lands in logs or configs
CONNECT_TIMEOUT_S = 60


class PolicyServerError(RuntimeError):
    """The server answered a request with an error text frame."""


class PolicyClient:
    """One websocket connection to a policy server; :meth:`infer` sends a request and returns the reply dict."""

    def __init__(self, uri: str, api_key: str | None = None):
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self._connection: ClientConnection = connect(
            uri,
            compression=None,
            max_size=None,
            additional_headers=headers,
            open_timeout=CONNECT_TIMEOUT_S,
            legacy=True,  # a long-lived connection, closed by close()
        )
        self.metadata: dict[str, Any] = unpackb(self._connection.recv())

    def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        self._connection.send(packb(request))
        reply = self._connection.recv()
        if isinstance(reply, str):
            raise PolicyServerError(reply)
        return unpackb(reply)

    def predict_chunk(self, observation: Observation, instruction: str) -> np.ndarray:
        """The action chunk ``[chunk, action_dim]`` in the dataset's frame (before the gripper convention, which
        ``metadata["gripper"]`` names) for an evaluation observation."""
        request: dict[str, Any] = {self.metadata["prompt_key"]: instruction, RAW_ACTIONS_KEY: True}
        for index, key in enumerate(self.metadata["camera_keys"]):
            request[key] = observation[policy_camera_key(index)]
        if self.metadata["state_key"] is not None:
            request[self.metadata["state_key"]] = observation["state"]
        return np.asarray(self.infer(request)["actions"], dtype=np.float64)

    def close(self) -> None:
        self._connection.close()


def policy_server_metadata(uri: str, action_dim: int) -> dict[str, Any]:
    """The metadata of the server at ``uri``, checked to answer ``action_dim``-D chunks; raises naming the flag."""
    try:
        client = PolicyClient(uri)
    except (OSError, InvalidHandshake, InvalidURI) as error:
        raise ValueError(
            f"--policy_server {uri}: cannot connect ({error}); start vla-scripts/serve_policy.py there "
            f"(and set {API_KEY_ENV} when it has an --api_key)"
        ) from None
    client.close()
    if client.metadata.get("action_dim") != action_dim:
        raise ValueError(
            f"--policy_server {uri} serves {client.metadata.get('action_dim')}-D actions; the suite needs {action_dim}"
        )
    return client.metadata
