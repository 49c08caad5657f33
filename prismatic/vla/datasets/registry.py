"""Known RLDS datasets (their on-disk layout and normalisation) and named mixtures of them.

Mirrors upstream's ``oxe/configs.py`` + ``oxe/mixtures.py`` for the LIBERO ``*_no_noops`` datasets of
``openvla/modified_libero_rlds``: cameras ``image`` (primary) and ``wrist_image`` (wrist), 8-D state
(EEF position 3, axis-angle 3, gripper 2), 7-D EEF-delta actions whose gripper dimension is not normalised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prismatic.vla.constants import LIBERO, PlatformConstants
from prismatic.vla.datasets.geometry import DEPTH_SUFFIX, INTRINSICS_SUFFIX
from prismatic.vla.datasets.tf_runtime import import_tensorflow

CAMERA_VIEWS = ("primary", "wrist")


def standardize_libero(action: Any, state: Any) -> tuple[Any, Any]:
    """LIBERO raw action/state -> (action, proprio) in upstream's convention.

    The gripper action (-1 open, +1 close) becomes 1 - clip(a, 0, 1), i.e. 1 open, 0 close; the proprio is the
    EEF state (position 3 + axis-angle 3) followed by the 2 gripper joint positions.
    """
    tf = import_tensorflow()
    gripper = 1.0 - tf.clip_by_value(action[:, -1:], 0.0, 1.0)  # [T, 1]
    return tf.concat([action[:, :6], gripper], axis=-1), tf.concat([state[:, :6], state[:, -2:]], axis=-1)


@dataclass(frozen=True)
class RLDSDatasetSpec:
    """How to read one RLDS dataset: which observation keys hold which camera, and which action dims to normalise."""

    name: str
    image_obs_keys: dict[str, str]  # camera view ("primary", "wrist") -> image key under steps/observation
    state_obs_key: str
    standardize: Callable[[Any, Any], tuple[Any, Any]]  # (raw action [T, A], raw state [T, S]) -> (action, proprio)
    action_normalization_mask: tuple[bool, ...]  # False: the dim passes through normalisation unchanged
    platform: PlatformConstants

    def required_step_keys(self, camera_views: tuple[str, ...], with_camera_points: bool = False) -> tuple[str, ...]:
        """Feature paths under ``steps`` that reading this dataset with ``camera_views`` (and their depth) needs."""
        image_keys = tuple(f"observation/{self.image_obs_keys[view]}" for view in camera_views)
        geometry_keys = tuple(
            f"observation/{key}" for view in camera_views if with_camera_points for key in self.geometry_obs_keys(view)
        )
        return (*image_keys, *geometry_keys, f"observation/{self.state_obs_key}", "action", "language_instruction")

    def geometry_obs_keys(self, view: str) -> tuple[str, str]:
        """(depth key, intrinsics key) of a camera view under ``steps/observation`` (``datasets.geometry``)."""
        image_key = self.image_obs_keys[view]
        return image_key + DEPTH_SUFFIX, image_key + INTRINSICS_SUFFIX


def _libero_spec(name: str) -> RLDSDatasetSpec:
    return RLDSDatasetSpec(
        name=name,
        image_obs_keys={"primary": "image", "wrist": "wrist_image"},
        state_obs_key="state",
        standardize=standardize_libero,
        action_normalization_mask=(True,) * 6 + (False,),
        platform=LIBERO,
    )


LIBERO_SUITES = ("libero_spatial_no_noops", "libero_object_no_noops", "libero_goal_no_noops", "libero_10_no_noops")
DATASETS: dict[str, RLDSDatasetSpec] = {name: _libero_spec(name) for name in (*LIBERO_SUITES, "libero_90_no_noops")}

# Mixture name -> [(dataset name, weight)]. Weights are multiplied by each dataset's number of transitions
# (upstream's ``balance_weights=True``), so the 4-suite mix samples every transition equally often.
MIXTURES: dict[str, list[tuple[str, float]]] = {
    **{name: [(name, 1.0)] for name in DATASETS},
    "libero_4_task_suites_no_noops": [(name, 1.0) for name in LIBERO_SUITES],
}


def resolve_data_mix(data_mix: str) -> list[tuple[RLDSDatasetSpec, float]]:
    """The datasets and (unbalanced) weights of a mixture or single dataset name."""
    if data_mix not in MIXTURES:
        raise ValueError(
            f"Unknown dataset name {data_mix!r} (flag --dataset_name / data_mix): expected one of {sorted(MIXTURES)}."
        )
    return [(DATASETS[name], weight) for name, weight in MIXTURES[data_mix]]
