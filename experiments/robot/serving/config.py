"""``ServeConfig``: the flags of ``serve_policy.py``, and the server they build from a checkpoint folder."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from experiments.robot.robot_utils import postprocess_actions
from experiments.robot.serving.client import API_KEY_ENV
from experiments.robot.serving.observation import MIN_IMAGE_SIDE, ObservationSpec
from experiments.robot.serving.server import PolicyServer, ServerSettings
from experiments.robot.vla_policy import VLAPolicy
from prismatic.policy.pi0_policy import Pi0Policy
from prismatic.util.checkpoint_install import settle_pending_install
from prismatic.util.cli import UserError
from prismatic.vla.image_utils import OPENVLA_IMAGE_SIZE
from prismatic.vla.policy_config import PolicyConfig, read_policy_config

PROTOCOL = "openpi-websocket"


@dataclass
class ServeConfig:
    # fmt: off
    pretrained_checkpoint: str = ""               # Checkpoint folder (as for run_libero_eval.py)
    host: str = "127.0.0.1"                       # Address to bind; any non-loopback address needs --api_key
    port: int = 8000                              # Port (openpi's default); 0 lets the OS choose
    api_key: str | None = None                    # "Authorization: Api-Key <key>"; else $POLICY_SERVER_API_KEY
    max_batch_size: int = 8                       # Requests answered by one forward pass at most (1: no batching)
    batch_wait_ms: float = 5.0                    # How long the first request of a batch waits for others
    max_message_mb: float = 32.0                  # Larger observations get an error reply
    http_port: int | None = None                  # Also serve OpenVLA-OFT's POST /act (json-numpy) on this port
    request_timeout_s: float = 30.0               # An HTTP connection silent this long is closed
    # A websocket client that does not answer a keepalive ping within this many seconds is disconnected (the
    # websockets library's 20 s); 0: no pings (a loopback client on a busy machine may not answer in time)
    keepalive_timeout_s: float = ServerSettings.keepalive_timeout_s
    # Frames must be this size (LIBERO renders 256); each goes through the training chain (JPEG round trip +
    # lanczos3 to 224) and other sizes are refused. None: any size, 224 x 224 frames taken as already prepared
    input_image_size: int | None = None
    # Without policy_config.json in the checkpoint: the suite or dataset whose statistics and platform apply
    task_suite_name: str = "libero_spatial"
    unnorm_key: str = ""                          # Statistics key; "" = policy_config.json's, else the suite's
    # Request keys (default: openpi's LIBERO keys, observation/<camera name>, observation/state, prompt)
    camera_keys: list[str] | None = None          # Primary camera first, then wrist cameras
    state_key: str = "observation/state"          # Unnormalised proprio state
    prompt_key: str = "prompt"                    # Language instruction
    # fmt: on


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to any interface


def api_key(cfg: ServeConfig) -> str | None:
    """``--api_key``, else the ``POLICY_SERVER_API_KEY`` environment variable (the one the clients read; it keeps
    the key out of the process list), else None (no key)."""
    return cfg.api_key if cfg.api_key is not None else os.environ.get(API_KEY_ENV) or None


def validate_serve_config(cfg: ServeConfig) -> None:
    """Raise :class:`UserError` naming the flag before anything is loaded or bound."""
    if not cfg.pretrained_checkpoint or not Path(cfg.pretrained_checkpoint).is_dir():
        raise UserError(f"--pretrained_checkpoint {cfg.pretrained_checkpoint!r}: expected a checkpoint folder")
    settle_pending_install(cfg.pretrained_checkpoint, "--pretrained_checkpoint")
    key = api_key(cfg)
    if not is_loopback(cfg.host) and not key:
        raise UserError(
            f"--host {cfg.host} exposes the server beyond this machine: pass --api_key KEY or set {API_KEY_ENV} "
            "(clients send 'Authorization: Api-Key KEY'), or bind 127.0.0.1"
        )
    if key is not None and len(key) < 8:
        source = "--api_key" if cfg.api_key is not None else API_KEY_ENV
        raise UserError(f"{source}: expected at least 8 characters")
    for flag in ("port", "http_port"):
        port = getattr(cfg, flag)
        if port is not None and not 0 <= port <= 65535:
            raise UserError(f"--{flag} {port}: expected 0..65535")
    if cfg.max_batch_size < 1:
        raise UserError(f"--max_batch_size {cfg.max_batch_size}: expected at least 1")
    if cfg.batch_wait_ms < 0:
        raise UserError(f"--batch_wait_ms {cfg.batch_wait_ms}: expected a non-negative number")
    if cfg.max_message_mb <= 0:
        raise UserError(f"--max_message_mb {cfg.max_message_mb}: expected a positive number")
    if cfg.request_timeout_s <= 0:
        raise UserError(f"--request_timeout_s {cfg.request_timeout_s}: expected a positive number of seconds")
    if cfg.keepalive_timeout_s < 0:
        raise UserError(f"--keepalive_timeout_s {cfg.keepalive_timeout_s}: expected seconds (0: no pings)")

    if cfg.input_image_size is not None and (
        cfg.input_image_size < MIN_IMAGE_SIDE or cfg.input_image_size == OPENVLA_IMAGE_SIZE
    ):
        raise UserError(
            f"--input_image_size {cfg.input_image_size}: expected the side the camera renders (LIBERO: 256), at "
            f"least {MIN_IMAGE_SIDE} and not the model's {OPENVLA_IMAGE_SIZE} (frames of that size skip the chain)"
        )


def bind_error(cfg: ServeConfig, error: OSError) -> UserError:
    """The one-line error of a port that cannot be bound."""
    ports = f"--port {cfg.port}" + (f" / --http_port {cfg.http_port}" if cfg.http_port is not None else "")
    return UserError(f"--host {cfg.host} {ports}: cannot bind: {error}: expected a free port of a local address")


def check_ports_free(cfg: ServeConfig) -> None:
    """Bind (and release) ``--port`` and ``--http_port`` once, so that a taken port is reported before the model
    loads; the server binds them again when it starts."""
    for port in (cfg.port, cfg.http_port):
        if not port:  # None, or 0: the OS chooses a free one
            continue
        try:
            family, kind, protocol, _, address = socket.getaddrinfo(
                cfg.host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            with socket.socket(family, kind, protocol) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
                probe.bind(address)
        except OSError as error:
            raise bind_error(cfg, error) from None


def checkpoint_policy_config(cfg: ServeConfig) -> PolicyConfig:
    """The checkpoint's ``policy_config.json``, or upstream's LIBERO defaults for ``--task_suite_name``."""
    try:
        policy_config = read_policy_config(cfg.pretrained_checkpoint)
    except ValueError as error:
        raise UserError(str(error)) from None
    return policy_config or PolicyConfig.upstream_default(cfg.task_suite_name)


def observation_spec(cfg: ServeConfig, policy_config: PolicyConfig) -> ObservationSpec:
    default = ObservationSpec.openpi_default(policy_config)
    camera_keys = tuple(cfg.camera_keys) if cfg.camera_keys is not None else default.camera_keys
    if len(camera_keys) != policy_config.num_images_in_input:
        raise UserError(
            f"--camera_keys {list(camera_keys)}: the checkpoint reads {policy_config.num_images_in_input} image(s)"
        )
    state_key = cfg.state_key if policy_config.use_proprio else None
    aliases = default.camera_aliases if cfg.camera_keys is None else ()  # --camera_keys: exactly those keys
    return ObservationSpec(
        camera_keys,
        state_key,
        cfg.prompt_key,
        policy_config.embodiment.proprio_dim,
        camera_aliases=aliases,
        image_size=cfg.input_image_size,
    )


def load_policy(cfg: ServeConfig, policy_config: PolicyConfig) -> VLAPolicy | Pi0Policy:
    """The policy of the checkpoint's family (``prismatic.policy.families``), with the choices its
    ``policy_config.json`` describes."""
    # Imported here: the registry imports every family (SpatialVLA's modeling warns on import), which the CLI's
    # flag checks must not print before their one-line errors.
    from prismatic.policy.families import family_class

    try:
        return family_class(policy_config.model_family).from_checkpoint(
            cfg.pretrained_checkpoint, task_suite_name=cfg.task_suite_name, unnorm_key=cfg.unnorm_key or None
        )
    except (ValueError, FileNotFoundError) as error:
        raise UserError(f"--pretrained_checkpoint {cfg.pretrained_checkpoint}: {error}") from None


def server_metadata(
    cfg: ServeConfig, policy_config: PolicyConfig, spec: ObservationSpec, policy: VLAPolicy
) -> dict[str, Any]:
    """What a client learns on connecting: the request keys and the geometry of the replies."""
    embodiment = policy_config.embodiment
    return {
        "protocol": PROTOCOL,
        "model_family": policy_config.model_family,
        "checkpoint": Path(cfg.pretrained_checkpoint).name,
        "action_head": policy_config.action_head,
        "action_dim": embodiment.action_dim,
        "num_actions_chunk": embodiment.num_actions_chunk,
        "proprio_dim": embodiment.proprio_dim if policy_config.use_proprio else 0,
        "camera_keys": list(spec.camera_keys),
        "state_key": spec.state_key,
        "prompt_key": spec.prompt_key,
        "image_size": OPENVLA_IMAGE_SIZE,
        "input_image_size": cfg.input_image_size,
        "center_crop": policy_config.image.center_crop,
        "unnorm_key": policy.unnorm_key,
        "normalization_type": embodiment.normalization_type,
        "gripper": embodiment.gripper,
        "max_batch_size": cfg.max_batch_size,
        "max_message_bytes": int(cfg.max_message_mb * 2**20),
    }


def build_server(cfg: ServeConfig, policy: VLAPolicy | None = None) -> PolicyServer:
    """The server of ``cfg`` (``policy``: an already loaded policy of the same checkpoint, e.g. in tests)."""
    validate_serve_config(cfg)
    policy_config = checkpoint_policy_config(cfg)
    spec = observation_spec(cfg, policy_config)
    check_ports_free(cfg)
    policy = policy if policy is not None else load_policy(cfg, policy_config)
    settings = ServerSettings(
        host=cfg.host,
        port=cfg.port,
        api_key=api_key(cfg),
        max_batch_size=cfg.max_batch_size,
        batch_wait_ms=cfg.batch_wait_ms,
        max_message_bytes=int(cfg.max_message_mb * 2**20),
        http_port=cfg.http_port,
        request_timeout_s=cfg.request_timeout_s,
        keepalive_timeout_s=cfg.keepalive_timeout_s,
    )
    return PolicyServer(
        policy,
        spec,
        server_metadata(cfg, policy_config, spec, policy),
        settings,
        postprocess=partial(postprocess_actions, gripper=policy_config.embodiment.gripper),
        http_spec=replace(ObservationSpec.openvla_oft(policy_config), image_size=cfg.input_image_size),
    )
