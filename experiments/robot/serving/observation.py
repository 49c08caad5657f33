"""The request of a policy server: which keys hold the cameras, the state and the instruction, and their checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from experiments.robot.policy import Observation
from experiments.robot.serving.wire import WireError
from prismatic.vla.image_utils import check_image_format
from prismatic.vla.policy_config import PolicyConfig

MAX_PROMPT_CHARS = 2000
MIN_IMAGE_SIDE = 16
# Larger sides are refused: resizing one needs a [224, side] float64 weight matrix per axis (14.7 MB at 8192).
MAX_IMAGE_SIDE = 8192
# A request with this key set to true gets the chunk in the dataset's frame (un-normalised, before the gripper
# convention, as OFT's /act replies): the evaluation's workers ask for it, so they ensemble before post-processing.
RAW_ACTIONS_KEY = "raw_actions"
# OpenVLA-OFT's ALOHA request names its two wrist cameras so (run_aloha_eval / deploy.py clients).
OFT_ALOHA_CAMERA_KEYS = ("full_image", "left_wrist_image", "right_wrist_image")
# openpi's LIBERO client keys, by camera order: also accepted when a checkpoint's cameras have other names (LeRobot).
OPENPI_CAMERA_KEYS = ("observation/image", "observation/wrist_image")


class ObservationError(ValueError):
    """An observation that the policy cannot take; the message names the key and what was expected."""


# A request's own fault, reported as a bad observation: the wire and key checks, and the policy's checks of a query
# (ValueError, TypeError; OverflowError from numbers out of a dtype's range).
BAD_QUERY_ERRORS = (WireError, ObservationError, ValueError, TypeError, OverflowError)


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
    # OpenVLA-OFT's rule (get_vla_action): the wrist cameras are the request's keys containing "wrist", in the
    # request's order; camera_keys[1:] then only name them in messages.
    wrist_keys_by_name: bool = False
    # Every frame must be image_size x image_size (None: any size); see ServeConfig.input_image_size.
    image_size: int | None = None
    camera_aliases: tuple[str, ...] = ()  # per camera, in order, another key accepted for it (openpi's short keys)

    @classmethod
    def openpi_default(cls, policy_config: PolicyConfig) -> ObservationSpec:
        """openpi's LIBERO keys: ``observation/<camera name>``, ``observation/state`` and ``prompt``."""
        cameras = policy_config.embodiment.camera_names[: policy_config.num_images_in_input]
        return cls(
            camera_keys=tuple(f"observation/{name}" for name in cameras),
            state_key="observation/state" if policy_config.use_proprio else None,
            prompt_key="prompt",
            proprio_dim=policy_config.embodiment.proprio_dim,
            camera_aliases=OPENPI_CAMERA_KEYS[: len(cameras)],
        )

    @classmethod
    def openvla_oft(cls, policy_config: PolicyConfig) -> ObservationSpec:
        """OpenVLA-OFT's deploy.py keys: ``full_image``, any keys containing ``wrist`` (LIBERO: ``wrist_image``;
        ALOHA: ``left_wrist_image``, ``right_wrist_image``), ``state`` and ``instruction``."""
        num_images = policy_config.num_images_in_input
        camera_keys = OFT_ALOHA_CAMERA_KEYS if num_images == 3 else tuple(map(policy_camera_key, range(num_images)))
        return cls(
            camera_keys=camera_keys,
            state_key="state" if policy_config.use_proprio else None,
            prompt_key="instruction",
            proprio_dim=policy_config.embodiment.proprio_dim,
            wrist_keys_by_name=True,
        )

    def request_camera_keys(self, request: dict[str, Any]) -> tuple[str, ...]:
        """The keys of ``request`` that hold the cameras, primary first (a camera's alias where the request uses it)."""
        wrist_keys = [key for key in request if isinstance(key, str) and "wrist" in key]
        if not self.wrist_keys_by_name or len(self.camera_keys) == 1 or not wrist_keys:
            return tuple(self._camera_key(request, index) for index in range(len(self.camera_keys)))
        if len(wrist_keys) != len(self.camera_keys) - 1:
            raise ObservationError(
                f"wrist image key(s) {wrist_keys}: the checkpoint reads {len(self.camera_keys) - 1} wrist image(s); "
                f"expected that many keys containing 'wrist', e.g. {list(self.camera_keys[1:])}"
            )
        return (self.camera_keys[0], *wrist_keys)

    def parse(self, request: Any) -> tuple[Observation, str]:
        """The policy observation and instruction of one request; raises :class:`ObservationError`."""
        if not isinstance(request, dict):
            raise ObservationError(f"expected a map of observation keys, got {type(request).__name__}")
        camera_keys = self.request_camera_keys(request)
        missing = [key for key in (*camera_keys, self.state_key, self.prompt_key) if key and key not in request]
        if missing:
            other = [alias for key, alias in zip(self.camera_keys, self.camera_aliases, strict=False) if alias != key]
            also = f" (cameras also as {other}, by order)" if other else ""
            raise ObservationError(f"missing key(s) {missing}; expected {self.expected_keys()}{also}")
        observation: Observation = {}
        for index, key in enumerate(camera_keys):
            try:
                check_image_format(request[key], repr(key))
            except ValueError as error:
                raise ObservationError(str(error)) from None
            if self.image_size is not None and request[key].shape[:2] != (self.image_size, self.image_size):
                raise ObservationError(
                    f"{key!r}: expected the camera frame as rendered, {self.image_size} x {self.image_size} "
                    f"(--input_image_size), found {request[key].shape[:2]}; do not resize it on the client"
                )
            if not MIN_IMAGE_SIDE <= min(request[key].shape[:2]) <= max(request[key].shape[:2]) <= MAX_IMAGE_SIDE:
                raise ObservationError(
                    f"{key!r}: expected an image of {MIN_IMAGE_SIDE} to {MAX_IMAGE_SIDE} pixels a side, "
                    f"found {request[key].shape}"
                )
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

    @staticmethod
    def wants_raw_actions(request: dict[str, Any]) -> bool:
        """Whether the request asks for the chunk before the gripper convention (``RAW_ACTIONS_KEY``)."""
        value = request.get(RAW_ACTIONS_KEY, False)
        if not isinstance(value, bool):
            raise ObservationError(f"{RAW_ACTIONS_KEY!r}: expected true or false, found {type(value).__name__}")
        return value

    def expected_keys(self) -> list[str]:
        return [key for key in (*self.camera_keys, self.state_key, self.prompt_key) if key]

    def describe(self) -> str:
        """The expected keys, each camera's alias beside it."""
        aliases = dict(zip(self.camera_keys, self.camera_aliases, strict=False))
        cameras = [f"{key} (or {aliases[key]})" if aliases.get(key, key) != key else key for key in self.camera_keys]
        return ", ".join([*cameras, *[key for key in (self.state_key, self.prompt_key) if key]])

    def _camera_key(self, request: dict, index: int) -> str:
        """The request's key for camera ``index``: its own key, else its alias when the request has that."""
        key = self.camera_keys[index]
        if key not in request and index < len(self.camera_aliases) and self.camera_aliases[index] in request:
            return self.camera_aliases[index]
        return key
