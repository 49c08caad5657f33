"""tf.data transforms: standardisation, normalisation and action chunking per trajectory; JPEG decoding,
lanczos3 resizing and image augmentation per frame.

Shapes use T for trajectory length, C for the action chunk length (8 for LIBERO) and W = 1 for the
observation window (only the current observation is kept).
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from prismatic.vla.constants import NormalizationType
from prismatic.vla.datasets.config import ImageAugConfig
from prismatic.vla.datasets.statistics import normalize
from prismatic.vla.datasets.tf_runtime import import_tensorflow

if TYPE_CHECKING:
    from prismatic.vla.datasets.registry import RLDSDatasetSpec

Trajectory = dict[str, Any]


def standardize_libero(action: Any, state: Any) -> tuple[Any, Any]:
    """LIBERO raw action/state -> (action, proprio) in upstream's convention.

    The gripper action (-1 open, +1 close) becomes 1 - clip(a, 0, 1), i.e. 1 open, 0 close; the proprio is the
    EEF state (position 3 + axis-angle 3) followed by the 2 gripper joint positions.
    """
    tf = import_tensorflow()
    gripper = 1.0 - tf.clip_by_value(action[:, -1:], 0.0, 1.0)  # [T, 1]
    return tf.concat([action[:, :6], gripper], axis=-1), tf.concat([state[:, :6], state[:, -2:]], axis=-1)


def restructure_trajectory(episode: Trajectory, spec: RLDSDatasetSpec, camera_views: tuple[str, ...]) -> Trajectory:
    """A raw RLDS episode (image bytes undecoded) -> the pipeline's trajectory layout.

    Output: ``observation/image_<view>`` [T] JPEG bytes, ``observation/proprio`` [T, P],
    ``observation/timestep`` [T], ``task/language_instruction`` [T], ``action`` [T, A], ``dataset_name`` [T].
    """
    tf = import_tensorflow()
    steps = episode["steps"]
    action, proprio = spec.standardize(steps["action"], steps["observation"][spec.state_obs_key])
    traj_len = tf.shape(action)[0]
    observation = {f"image_{view}": steps["observation"][spec.image_obs_keys[view]] for view in camera_views}
    observation["proprio"] = proprio
    observation["timestep"] = tf.range(traj_len, dtype=tf.int32)
    return {
        "observation": observation,
        "task": {"language_instruction": steps["language_instruction"]},
        "action": action,
        "dataset_name": tf.fill([traj_len], spec.name),
    }


def normalize_trajectory(
    trajectory: Trajectory, statistics: dict[str, Any], normalization_type: NormalizationType
) -> Trajectory:
    """Normalises ``action`` (honouring the action mask) and ``observation/proprio`` (all dims)."""
    tf = import_tensorflow()
    ops = SimpleNamespace(clip=tf.clip_by_value, where=tf.where)
    observation = dict(trajectory["observation"])
    observation["proprio"] = normalize(observation["proprio"], statistics["proprio"], normalization_type, ops)
    return {
        **trajectory,
        "observation": observation,
        "action": normalize(trajectory["action"], statistics["action"], normalization_type, ops),
    }


def has_language(trajectory: Trajectory) -> Any:
    """False for trajectories without an instruction (upstream's ``skip_unlabeled``)."""
    tf = import_tensorflow()
    return tf.reduce_any(trajectory["task"]["language_instruction"] != "")


def chunk_actions(trajectory: Trajectory, num_actions_chunk: int) -> Trajectory:
    """One sample per step t whose chunk a[t], ..., a[t + C - 1] lies inside the trajectory.

    Observations become ``[T', W=1, ...]`` (the observation at t), ``action`` becomes ``[T', C, A]`` and the
    rest ``[T']``, with T' = max(T - C + 1, 0): the last C - 1 steps never start a chunk.
    """
    tf = import_tensorflow()
    traj_len = tf.shape(trajectory["action"])[0]
    num_chunks = tf.maximum(traj_len - num_actions_chunk + 1, 0)
    starts = tf.range(num_chunks)  # [T']
    chunk_indices = starts[:, None] + tf.range(num_actions_chunk)[None, :]  # [T', C]
    return {
        "observation": tf.nest.map_structure(lambda x: tf.gather(x, starts[:, None]), trajectory["observation"]),
        "task": tf.nest.map_structure(lambda x: x[:num_chunks], trajectory["task"]),
        "action": tf.gather(trajectory["action"], chunk_indices),  # [T', C, A]
        "dataset_name": trajectory["dataset_name"][:num_chunks],
    }


def decode_and_resize(image_bytes: Any, size: tuple[int, int]) -> Any:
    """Encoded image -> [H, W, 3] uint8, resized with lanczos3 (antialiased), rounded and clipped like upstream."""
    tf = import_tensorflow()
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)  # [H0, W0, 3] uint8
    image = tf.image.resize(image, size, method="lanczos3", antialias=True)  # [H, W, 3] float32
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _clip_unit(image: Any) -> Any:
    return import_tensorflow().clip_by_value(image, 0.0, 1.0)


def random_resized_crop(image: Any, seed: Any, scale: tuple[float, float], ratio: tuple[float, float]) -> Any:
    """Crops a random box of ``scale`` area fraction and ``ratio`` aspect, resized (bilinear) to the input size."""
    tf = import_tensorflow()
    scale_seed, ratio_seed, offset_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=3))
    area = tf.random.stateless_uniform([], scale_seed, minval=scale[0], maxval=scale[1])
    log_ratio = tf.random.stateless_uniform([], ratio_seed, minval=tf.math.log(ratio[0]), maxval=tf.math.log(ratio[1]))
    height = tf.minimum(tf.sqrt(area / tf.exp(log_ratio)), 1.0)  # fractions of the image side
    width = tf.minimum(tf.sqrt(area * tf.exp(log_ratio)), 1.0)
    offset = tf.random.stateless_uniform([2], offset_seed) * tf.stack([1.0 - height, 1.0 - width])
    box = tf.stack([offset[0], offset[1], offset[0] + height, offset[1] + width])[None]  # [1, 4] (y1, x1, y2, x2)
    return tf.image.crop_and_resize(image[None], box, [0], tf.shape(image)[:2])[0]


def augment_image(image: Any, seed: Any, aug: ImageAugConfig) -> Any:
    """Random crop, brightness, contrast, saturation, hue (in that order) on a [H, W, 3] uint8 image.

    Works in float [0, 1], clipping after every op, and converts back with saturation. All ops are stateless:
    the same ``seed`` ([2] int64) always gives the same augmentation.
    """
    tf = import_tensorflow()
    crop_seed, brightness_seed, contrast_seed, saturation_seed, hue_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=5)
    )
    image = tf.image.convert_image_dtype(image, tf.float32)
    image = _clip_unit(
        random_resized_crop(image, crop_seed, aug.random_resized_crop_scale, aug.random_resized_crop_ratio)
    )
    image = _clip_unit(tf.image.stateless_random_brightness(image, aug.brightness_max_delta, brightness_seed))
    image = _clip_unit(tf.image.stateless_random_contrast(image, *aug.contrast_range, contrast_seed))
    image = _clip_unit(tf.image.stateless_random_saturation(image, *aug.saturation_range, saturation_seed))
    image = _clip_unit(tf.image.stateless_random_hue(image, aug.hue_max_delta, hue_seed))
    return tf.image.convert_image_dtype(image, tf.uint8, saturate=True)


def make_frame_transform(
    camera_views: tuple[str, ...],
    resize_resolution: tuple[int, int],
    aug: ImageAugConfig | None,
    seed: int,
    keep_proprio: bool = True,
) -> Callable[[Any, Trajectory], Trajectory]:
    """``(sample_index, frame) -> frame`` decoding every camera to [1, H, W, 3] uint8, augmented when ``aug`` is set
    (and dropping ``observation/proprio`` unless ``keep_proprio``).

    The augmentation seed of camera k of a sample is derived from (``seed``, ``sample_index``, k), so a
    sample's augmentation does not depend on how many samples were drawn before it.
    """
    tf = import_tensorflow()

    def transform(sample_index: Any, frame: Trajectory) -> Trajectory:
        observation = dict(frame["observation"])
        if not keep_proprio:
            del observation["proprio"]
        sample_seed = tf.stack([tf.constant(seed, tf.int64), tf.cast(sample_index, tf.int64)])
        for camera_index, view in enumerate(camera_views):
            image = decode_and_resize(observation[f"image_{view}"][0], resize_resolution)  # window of one
            if aug is not None:
                image = augment_image(image, tf.random.experimental.stateless_fold_in(sample_seed, camera_index), aug)
            observation[f"image_{view}"] = image[None]  # [W=1, H, W, 3]
        return {**frame, "observation": observation}

    return transform
