"""Serve a checkpoint to robots over openpi's websocket protocol (openpi-client's WebsocketClientPolicy connects).

    python vla-scripts/serve_policy.py --pretrained_checkpoint ckpts/spatial-forcing-7b-finetuned-libero-spatial
    POLICY_SERVER_API_KEY="$KEY" python vla-scripts/serve_policy.py --pretrained_checkpoint DIR --host 0.0.0.0

Binds 127.0.0.1:8000 by default; any other address needs ``--api_key`` or ``$POLICY_SERVER_API_KEY``. A taken port is
reported before the model loads. ``--http_port 8777`` adds OpenVLA-OFT's
``POST /act`` (json-numpy). Flags: ``ServeConfig``; protocol and
batching: ``experiments/robot/serving/server.py``.
"""

import asyncio
import contextlib
import logging
import os

import draccus

from experiments.robot.serving.config import ServeConfig, bind_error, build_server, validate_serve_config
from prismatic.util.cli import run_cli


# No `from __future__ import annotations` here: draccus.wrap reads the real annotation of `cfg`.
@draccus.wrap()
def main(cfg: ServeConfig) -> None:
    os.environ["USE_TF"] = "0"  # transformers would import TensorFlow by itself; serving needs none
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] %(message)s")
    validate_serve_config(cfg)
    server = build_server(cfg)

    def announce(port: int) -> None:
        print(f"Serving {cfg.pretrained_checkpoint} on ws://{cfg.host}:{port} (openpi protocol)", flush=True)
        print(f"Request keys: {server.spec.describe()}", flush=True)
        if server.http_port is not None:
            print(f"OpenVLA-OFT endpoint: POST http://{cfg.host}:{server.http_port}/act (json-numpy)", flush=True)

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(server.serve(announce, asyncio.Event()))
    except OSError as error:  # the address was taken since build_server's check, or is not local
        raise bind_error(cfg, error) from None


if __name__ == "__main__":
    run_cli(main)
