"""The request of a policy server: which keys hold the cameras, the state and the instruction, and their checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from experiments.robot.image_utils import check_image_format
from experiments.robot.libero.libero_utils import process_action
from experiments.robot.policy import Observation
from prismatic.policy.config import PolicyConfig

MAX_PROMPT_CHARS = 2000
MIN_IMAGE_SIDE = 16
# openpi's LIBERO client keys, by camera order: also accepted when a checkpoint's cameras have other names (LeRobot).
OPENPI_CAMERA_KEYS = ("observation/image", "observation/wrist_image")


class ObservationError(ValueError):
    """An observation that the policy cannot take; the message names the key and what was expected."""


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
        """OpenVLA-OFT's deploy.py keys: ``full_image``, ``wrist_image``, ``state`` and ``instruction``."""
        return cls(
            camera_keys=tuple(policy_camera_key(index) for index in range(policy_config.num_images_in_input)),
            state_key="state" if policy_config.use_proprio else None,
            prompt_key="instruction",
            proprio_dim=policy_config.embodiment.proprio_dim,
        )

    def parse(self, request: Any) -> tuple[Observation, str]:
        """The policy observation and instruction of one request; raises :class:`ObservationError`."""
        if not isinstance(request, dict):
            raise ObservationError(f"expected a map of observation keys, got {type(request).__name__}")
        cameras = [self._camera_key(request, index) for index in range(len(self.camera_keys))]
        missing = [key for key in (*cameras, self.state_key, self.prompt_key) if key and key not in request]
        if missing:
            other = [alias for key, alias in zip(self.camera_keys, self.camera_aliases, strict=False) if alias != key]
            also = f" (cameras also as {other}, by order)" if other else ""
            raise ObservationError(f"missing key(s) {missing}; expected {self.expected_keys()}{also}")
        observation: Observation = {}
        for index, key in enumerate(cameras):
            try:
                check_image_format(request[key], repr(key))
            except ValueError as error:
                raise ObservationError(str(error)) from None
            if min(request[key].shape[:2]) < MIN_IMAGE_SIDE:
                raise ObservationError(
                    f"{key!r}: expected an image of at least {MIN_IMAGE_SIDE} x {MIN_IMAGE_SIDE} "
                    f"pixels, found {request[key].shape}"
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


def to_robot_units(chunk: np.ndarray, policy_config: PolicyConfig) -> np.ndarray:
    """The predicted chunk as the robot executes it (the checkpoint's gripper convention applied)."""
    if policy_config.embodiment.gripper == "libero":
        return process_action(chunk, "openvla")
    return chunk
