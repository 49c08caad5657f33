"""Run by the serving tests in the separate openpi-client venv (numpy < 2): talks to our server with openpi's own
``WebsocketClientPolicy`` and writes what it saw as JSON.

    python openpi_client_probe.py PORT REQUEST.npz OUT.json [API_KEY]

Sends the request, then the request without its first camera key (must fail with the server's error text), then
the request again on the same connection.
"""

import json
import sys

import numpy as np
from openpi_client.websocket_client_policy import WebsocketClientPolicy


def main() -> None:
    port, request_path, out_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    api_key = sys.argv[4] if len(sys.argv) > 4 else None
    with np.load(request_path) as arrays:
        request = {key.replace("__", "/"): arrays[key] for key in arrays.files if key != "prompt"}
        request["prompt"] = str(arrays["prompt"])
    client = WebsocketClientPolicy(host="127.0.0.1", port=port, api_key=api_key)
    metadata = client.get_server_metadata()
    first = client.infer(request)
    camera_key = metadata["camera_keys"][0]
    try:
        client.infer({key: value for key, value in request.items() if key != camera_key})
        error = None
    except RuntimeError as exception:
        error = str(exception)
    again = client.infer(request)
    result = {
        "numpy": np.__version__,
        "metadata": metadata,
        "actions": first["actions"].tolist(),
        "actions_dtype": str(first["actions"].dtype),
        "server_timing": first["server_timing"],
        "error": error,
        "actions_again": again["actions"].tolist(),
    }
    with open(out_path, "w") as out:
        json.dump(result, out)


if __name__ == "__main__":
    main()
