"""``policy_config.json``: the choices that make a checkpoint folder one self-describing policy.

Written into every checkpoint by training and read back by loading, evaluation, serving and probing, so no consumer
repeats training flags. A released checkpoint without the file is described by :meth:`PolicyConfig.upstream_default`
(upstream's LIBERO evaluation defaults).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prismatic.spatial_forcing.config import AlignConfig
from prismatic.util.checkpoint_files import POLICY_CONFIG_NAME
from prismatic.util.io import write_json_atomic
from prismatic.vla.constants import NormalizationType, PlatformConstants, constants_for
from vggt.constants import VGGT_IMAGE_SIZE

logger = logging.getLogger(__name__)

# 1: ``spatial_forcing`` held the training flags only; 2: it is the aligner's AlignConfig (widths included).
POLICY_CONFIG_VERSION = 2
MODEL_FAMILIES = ("openvla-oft", "spatialvla", "pi0")
ACTION_HEADS = ("l1_regression", "diffusion", "discrete_tokens", "flow_matching")  # flow_matching: pi0
# How the gripper dimension of a predicted action maps to the robot's command:
#   "libero": the dataset's gripper is in [0, 1] (1 = open); the robot takes -1 (open) / +1 (close):
#             binarise to +-1 at 0.5 and invert (upstream's normalize_gripper_action + invert_gripper_action);
#   "none":   actions are used as predicted (the robot's own units).
GRIPPER_CONVENTIONS = ("libero", "none")
# What --image_aug did to the training images (``PolicyConfig.training_augmentation``): nothing; the data pipeline's
# random crop and colour jitter (OpenVLA-OFT, matched at evaluation by the center crop); openpi's crop and rotation of
# the non-wrist cameras and colour (pi0); openpi's colour part only (pi0 with Spatial Forcing).
NO_AUGMENTATION, OFT_AUGMENTATION = "none", "oft"
OPENPI_AUGMENTATION, OPENPI_COLOUR_AUGMENTATION = "openpi", "openpi_colour"
TRAINING_AUGMENTATIONS = (NO_AUGMENTATION, OFT_AUGMENTATION, OPENPI_AUGMENTATION, OPENPI_COLOUR_AUGMENTATION)


@dataclass
class EmbodimentConfig:
    """The robot: action/proprio geometry, its cameras and its gripper convention."""

    name: str = "libero"
    action_dim: int = 7
    proprio_dim: int = 8
    num_actions_chunk: int = 8
    normalization_type: str = "bounds_q99"
    # Observation keys of the cameras the policy reads, primary (third-person) first, then wrist cameras.
    camera_names: list[str] = field(default_factory=lambda: ["image", "wrist_image"])
    gripper: str = "libero"
    gripper_dims: list[int] = field(default_factory=lambda: [-1])  # Action dims that are grippers

    @classmethod
    def from_platform(cls, platform: PlatformConstants, **overrides: Any) -> EmbodimentConfig:
        values = dict(
            name=platform.name,
            action_dim=platform.action_dim,
            proprio_dim=platform.proprio_dim,
            num_actions_chunk=platform.num_actions_chunk,
            normalization_type=platform.action_proprio_normalization_type.value,
        )
        values.update(overrides)
        return cls(**values)

    def platform(self) -> PlatformConstants:
        """The :class:`PlatformConstants` the model code takes."""
        normalization = NormalizationType(self.normalization_type)
        return PlatformConstants(self.name, self.num_actions_chunk, self.action_dim, self.proprio_dim, normalization)


@dataclass
class ImagePreprocessingConfig:
    """What every consumer does to a camera frame before the processor (evaluation, serving, probing)."""

    image_size: int = 224  # Side the frame is resized to (lanczos3, after a JPEG round trip, as in training data)
    center_crop: bool = True  # Crop the central `crop_area` and resize back (needed after training with image_aug)
    crop_area: float = 0.9


@dataclass(kw_only=True)
class SpatialForcingRecord(AlignConfig):
    """The Spatial Forcing settings a checkpoint was trained with: the aligner's :class:`AlignConfig` itself (same
    field names, which are the training flags) plus the teacher it aligned to."""

    teacher: str  # vggt | geometry | rgb (``--teacher``)
    vggt_image_size: int  # side of the teacher's input images
    vggt_sha256: str | None = None  # teacher vggt: the SHA-256 of the weights file the run trained against
    teacher_width: int | None = None  # geometry | rgb: their flags
    teacher_patch_size: int | None = None
    teacher_seed: int | None = None
    geometry_workspace_min: list[float] | None = None  # geometry: its flags
    geometry_workspace_max: list[float] | None = None


@dataclass
class PolicyConfig:
    """Everything needed to rebuild and query the policy stored beside this file."""

    model_family: str = "openvla-oft"
    action_head: str = "l1_regression"
    num_diffusion_steps_train: int = 50
    num_diffusion_steps_inference: int = 50
    use_proprio: bool = True
    use_film: bool = False
    num_images_in_input: int = 2
    unnorm_key: str = ""  # Key of dataset_statistics.json holding the action/proprio statistics
    embodiment: EmbodimentConfig = field(default_factory=EmbodimentConfig)
    image: ImagePreprocessingConfig = field(default_factory=ImagePreprocessingConfig)
    spatial_forcing: SpatialForcingRecord | None = None  # None: plain OpenVLA-OFT
    # Where the training data came from and how its features map to the policy inputs (e.g. a LeRobot mapping).
    data: dict[str, Any] | None = None
    # The base model the adapter was trained on: its config fingerprint and checksums of a few tensors.
    base_model: dict[str, Any] | None = None
    # One of TRAINING_AUGMENTATIONS; None: not recorded (written before this field).
    training_augmentation: str | None = None
    format_version: int = POLICY_CONFIG_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.embodiment, dict):
            self.embodiment = EmbodimentConfig(**self.embodiment)
        if isinstance(self.image, dict):
            self.image = ImagePreprocessingConfig(**self.image)
        if isinstance(self.spatial_forcing, dict):
            self.spatial_forcing = SpatialForcingRecord(**self.spatial_forcing)
        if self.model_family not in MODEL_FAMILIES:
            raise ValueError(f"model_family {self.model_family!r}: expected one of {MODEL_FAMILIES}")
        if self.action_head not in ACTION_HEADS:
            raise ValueError(f"action_head {self.action_head!r}: expected one of {ACTION_HEADS}")
        if self.training_augmentation not in (None, *TRAINING_AUGMENTATIONS):
            raise ValueError(
                f"training_augmentation {self.training_augmentation!r}: expected one of {TRAINING_AUGMENTATIONS}"
            )
        if self.embodiment.gripper not in GRIPPER_CONVENTIONS:
            raise ValueError(f"embodiment.gripper {self.embodiment.gripper!r}: expected one of {GRIPPER_CONVENTIONS}")

    @classmethod
    def upstream_default(cls, dataset_or_suite_name: str = "libero") -> PolicyConfig:
        """A released OpenVLA-OFT / SF LIBERO checkpoint without ``policy_config.json``: upstream's eval defaults."""
        return cls(embodiment=EmbodimentConfig.from_platform(constants_for(dataset_or_suite_name)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> PolicyConfig:
        """The config a ``policy_config.json`` payload holds, of this format version or an earlier one."""
        payload = migrate_payload(payload)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(payload) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}: expected keys among {sorted(known)}")
        return cls(**payload)


def migrate_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """A ``policy_config.json`` payload of an earlier format version as one of :data:`POLICY_CONFIG_VERSION`.

    Version 1 recorded the alignment's training flags without the aligner's widths: the widths take
    :class:`AlignConfig`'s defaults (every consumer takes them from the models it loads), a record without a
    teacher was trained against VGGT (the only teacher then) at VGGT's image size.
    """
    version = payload.get("format_version", 1)
    if version > POLICY_CONFIG_VERSION:
        raise ValueError(
            f"format_version {version}: expected at most {POLICY_CONFIG_VERSION} (a newer release wrote it)"
        )
    if version == POLICY_CONFIG_VERSION:
        return payload
    spatial_forcing = payload.get("spatial_forcing")
    if spatial_forcing is not None:
        spatial_forcing = {"teacher": "vggt", "vggt_image_size": VGGT_IMAGE_SIZE, **spatial_forcing}
    return {**payload, "spatial_forcing": spatial_forcing, "format_version": POLICY_CONFIG_VERSION}


def write_policy_config(checkpoint_dir: str | Path, config: PolicyConfig) -> Path:
    """Write ``policy_config.json`` into ``checkpoint_dir`` atomically."""
    path = Path(checkpoint_dir) / POLICY_CONFIG_NAME
    write_json_atomic(path, config.to_dict())
    return path


def read_policy_config(checkpoint_dir: str | Path) -> PolicyConfig | None:
    """The checkpoint's ``policy_config.json``, or None when the folder has none (a released checkpoint)."""
    path = Path(checkpoint_dir) / POLICY_CONFIG_NAME
    if not path.exists():
        return None
    try:
        return PolicyConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a valid policy config: {error}") from None


def load_policy_config(checkpoint_dir: str | Path, fallback_name: str = "libero") -> PolicyConfig:
    """The checkpoint's ``policy_config.json``, or upstream's defaults for the platform of ``fallback_name`` (a
    dataset or LIBERO suite name) when the folder has none (a released checkpoint)."""
    config = read_policy_config(checkpoint_dir)
    if config is None:
        logger.debug("%s has no %s: using upstream's defaults", checkpoint_dir, POLICY_CONFIG_NAME)
        config = PolicyConfig.upstream_default(fallback_name)
    return config


@dataclass(frozen=True)
class PolicyChoice:
    """One choice of the policy: its evaluation flag (upstream's name; ``None`` there = the checkpoint's value), the
    ``PolicyConfig`` field holding it, and the fine-tuning flag whose value training records there."""

    flag: str
    owner: str  # "" (the PolicyConfig itself) or the sub-config holding ``field`` ("image")
    field: str
    training_flag: str | None  # None: training derives the value otherwise (said where it does)

    def holder(self, config: PolicyConfig) -> Any:
        return getattr(config, self.owner) if self.owner else config

    def value(self, config: PolicyConfig) -> Any:
        return getattr(self.holder(config), self.field)


# The policy's choices besides the action head, read by evaluation (``flag``: its pre-flight and loader) and by
# training (``training_flag``: what it records, and what a resume without training_config.json compares).
POLICY_CHOICES = (
    PolicyChoice("num_diffusion_steps_train", "", "num_diffusion_steps_train", "num_diffusion_steps_train"),
    # Training records the steps it trained with for evaluation as well.
    PolicyChoice("num_diffusion_steps_inference", "", "num_diffusion_steps_inference", "num_diffusion_steps_train"),
    PolicyChoice("use_proprio", "", "use_proprio", "use_proprio"),
    PolicyChoice("use_film", "", "use_film", "use_film"),
    PolicyChoice("num_images_in_input", "", "num_images_in_input", "num_images_in_input"),
    # Training: the dataset's name, or "" for a mixture (evaluation then picks the suite's statistics).
    PolicyChoice("unnorm_key", "", "unnorm_key", None),
    # Training: --image_aug's random crops are matched by the center crop of the same area (pi0 pads instead).
    PolicyChoice("center_crop", "image", "center_crop", None),
)
HEAD_FLAGS = ("use_l1_regression", "use_diffusion")  # select the action head; the same names in every CLI
# Every evaluation flag that selects the policy (None: from the checkpoint's policy_config.json).
POLICY_FLAGS = (*HEAD_FLAGS, *(choice.flag for choice in POLICY_CHOICES))
TRAINING_CHOICES = tuple(choice for choice in POLICY_CHOICES if choice.training_flag is not None)


def apply_flag_overrides(config: PolicyConfig, **flags: Any) -> PolicyConfig:
    """``config`` with the explicitly given evaluation flags of :data:`POLICY_FLAGS` applied (``None`` = take it
    from the checkpoint). A flag that contradicts the checkpoint is honoured, with a warning naming both values."""
    given = {name: value for name, value in flags.items() if value is not None and value != ""}
    unknown = sorted(set(given) - set(POLICY_FLAGS))
    if unknown:
        raise ValueError(f"unknown policy flag(s) {unknown}")
    config = _copy(config)
    head = _action_head_from_flags(config.action_head, given.get("use_l1_regression"), given.get("use_diffusion"))
    _override(config, "action_head", head, "--use_l1_regression/--use_diffusion")
    for choice in POLICY_CHOICES:
        if choice.flag in given:
            _override(choice.holder(config), choice.field, given[choice.flag], f"--{choice.flag}")
    return config


def policy_flags(config: PolicyConfig) -> dict[str, Any]:
    """The flags of :data:`POLICY_FLAGS` (upstream's evaluation names) that select ``config``: the inverse of
    :func:`apply_flag_overrides`."""
    return _head_flags(config) | {choice.flag: choice.value(config) for choice in POLICY_CHOICES}


def apply_training_flags(config: PolicyConfig, flags: Mapping[str, Any]) -> PolicyConfig:
    """``config`` with the action head and every choice of :data:`TRAINING_CHOICES` taken from the fine-tuning
    ``flags`` (by name)."""
    config = _copy(config)
    config.action_head = _action_head_from_flags("discrete_tokens", flags["use_l1_regression"], flags["use_diffusion"])
    for choice in TRAINING_CHOICES:
        setattr(choice.holder(config), choice.field, flags[choice.training_flag])
    return config


def training_flags(config: PolicyConfig) -> dict[str, Any]:
    """The fine-tuning flags (heads, inputs) a config written by training records: the inverse of
    :func:`apply_training_flags`."""
    recorded = {choice.training_flag: choice.value(config) for choice in TRAINING_CHOICES}
    return _head_flags(config) | recorded


def _copy(config: PolicyConfig) -> PolicyConfig:
    """A copy whose choices can be set without touching ``config`` (its sub-configs are copied too)."""
    return dataclasses.replace(config, image=dataclasses.replace(config.image))


def _head_flags(config: PolicyConfig) -> dict[str, bool]:
    return {
        "use_l1_regression": config.action_head == "l1_regression",
        "use_diffusion": config.action_head == "diffusion",
    }


def _action_head_from_flags(current: str, use_l1_regression: bool | None, use_diffusion: bool | None) -> str:
    if use_diffusion:
        return "diffusion"
    if use_l1_regression:
        return "l1_regression"
    turned_off = (use_diffusion is False and current == "diffusion") or (
        use_l1_regression is False and current == "l1_regression"
    )
    return "discrete_tokens" if turned_off else current


def _override(target: Any, field_name: str, value: Any, flag: str) -> None:
    current = getattr(target, field_name)
    if current != value:
        logger.warning(
            "%s asks for %s=%r but the checkpoint's policy config says %r: using %r",
            flag,
            field_name,
            value,
            current,
            value,
        )
        setattr(target, field_name, value)
