"""Platform constants, chosen explicitly from a dataset or suite name.

Upstream picks these at import time by sniffing ``sys.argv``; here callers ask for them with
``constants_for(name)`` and pass the result (or its fields) down through their configs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

IGNORE_INDEX = -100
STOP_INDEX = 2  # Llama "</s>"
NUM_ACTION_BINS = 256


class NormalizationType(StrEnum):
    NORMAL = "normal"  # zero mean, unit std
    BOUNDS = "bounds"  # [min, max] -> [-1, 1]
    BOUNDS_Q99 = "bounds_q99"  # [q01, q99] -> [-1, 1]


@dataclass(frozen=True)
class PlatformConstants:
    """Action/proprio geometry of a robot platform; baked into the action head and the action masks."""

    name: str
    num_actions_chunk: int
    action_dim: int
    proprio_dim: int
    action_proprio_normalization_type: NormalizationType

    @property
    def num_action_tokens(self) -> int:
        """Hidden-state slots the LLM spends on one action chunk (one per scalar)."""
        return self.num_actions_chunk * self.action_dim


LIBERO = PlatformConstants("libero", 8, 7, 8, NormalizationType.BOUNDS_Q99)
# ALOHA uses a 25-step chunk in OpenVLA-OFT and a 30-step chunk in the Spatial Forcing code.
ALOHA = PlatformConstants("aloha", 25, 14, 14, NormalizationType.BOUNDS)
ALOHA_SF = PlatformConstants("aloha_sf", 30, 14, 14, NormalizationType.BOUNDS)
BRIDGE = PlatformConstants("bridge", 5, 7, 7, NormalizationType.BOUNDS_Q99)

PLATFORMS: dict[str, PlatformConstants] = {p.name: p for p in (LIBERO, ALOHA, ALOHA_SF, BRIDGE)}


def constants_for(name: str) -> PlatformConstants:
    """Platform constants for a dataset, suite or platform name (``libero_spatial_no_noops`` -> LIBERO).

    Matching is by substring, in upstream's order (libero, aloha, bridge); an exact platform name wins.
    Unknown names raise instead of silently falling back to LIBERO as upstream does.
    """
    key = name.lower()
    if key in PLATFORMS:
        return PLATFORMS[key]
    for platform in ("libero", "aloha", "bridge"):
        if platform in key:
            return PLATFORMS[platform]
    raise ValueError(
        f"Cannot tell the robot platform of {name!r}: expected a name containing one of "
        f"'libero', 'aloha', 'bridge' (or exactly one of {sorted(PLATFORMS)})."
    )
