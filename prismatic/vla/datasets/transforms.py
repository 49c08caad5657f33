"""tf.data transforms: standardisation, normalisation and action chunking per trajectory; JPEG decoding,
lanczos3 resizing and image augmentation per frame.

Shapes use T for trajectory length, C for the action chunk length (8 for LIBERO) and W = 1 for the
observation window (only the current observation is kept).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from prismatic.vla.constants import NormalizationType
from prismatic.vla.datasets.config import ImageAugConfig
from prismatic.vla.datasets.geometry import points_from_depth
from prismatic.vla.datasets.registry import RLDSDatasetSpec
from prismatic.vla.datasets.tf_runtime import import_tensorflow
from prismatic.vla.normalization import normalize

Trajectory = dict[str, Any]


def restructure_trajectory(
    episode: Trajectory, spec: RLDSDatasetSpec, camera_views: tuple[str, ...], with_camera_points: bool = False
) -> Trajectory:
    """A raw RLDS episode (image bytes undecoded) -> the pipeline's trajectory layout.

    Output: ``observation/image_<view>`` [T] JPEG bytes, ``observation/proprio`` [T, P],
    ``observation/timestep`` [T], ``task/language_instruction`` [T], ``action`` [T, A], ``dataset_name`` [T]; with
    ``with_camera_points`` also ``observation/depth_<view>`` [T, H, W] and ``observation/intrinsics_<view>`` [T, 3, 3].
    """
    tf = import_tensorflow()
    steps = episode["steps"]
    action, proprio = spec.standardize(steps["action"], steps["observation"][spec.state_obs_key])
    traj_len = tf.shape(action)[0]
    observation = {f"image_{view}": steps["observation"][spec.image_obs_keys[view]] for view in camera_views}
    if with_camera_points:
        for view in camera_views:
            depth_key, intrinsics_key = spec.geometry_obs_keys(view)
            depth = steps["observation"][depth_key]  # [T, H, W] or [T, H, W, 1]
            observation[f"depth_{view}"] = depth[..., 0] if depth.shape.rank == 4 else depth
            observation[f"intrinsics_{view}"] = tf.reshape(steps["observation"][intrinsics_key], [traj_len, 3, 3])
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
    """Normalises ``action`` (honouring the action mask) and ``observation/proprio`` (all dims), dims with
    ``min == max`` set to 0 (upstream's training rule; ``prismatic.vla.normalization``)."""
    tnp = import_tensorflow().experimental.numpy
    normalize_values = partial(normalize, normalization_type=normalization_type, zero_constant_dims=True, xp=tnp)
    observation = dict(trajectory["observation"])
    observation["proprio"] = normalize_values(observation["proprio"], statistics["proprio"])
    return {
        **trajectory,
        "observation": observation,
        "action": normalize_values(trajectory["action"], statistics["action"]),
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


def random_crop_box(
    seed: Any, scale: tuple[float, float], ratio: tuple[float, float], independent_draws: bool = False
) -> Any:
    """The normalised box ``[1, 4]`` (y1, x1, y2, x2) of a random crop of ``scale`` area fraction and ``ratio`` aspect.

    By default as upstream's dlimp ``random_resized_crop``, which passes one seed to all four of its uniform draws
    (area, aspect, height offset, width offset): one number u ~ U[0, 1) fixes the whole box, area
    ``scale[0] + (scale[1] - scale[0]) u``, offsets ``u (1 - height)`` and ``u (1 - width)``, so every box lies on
    the image diagonal (a kept upstream quirk; with LIBERO's scale (0.9, 0.9) the area is always 0.9).
    ``independent_draws`` draws the four numbers independently instead.
    """
    tf = import_tensorflow()
    if independent_draws:
        seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num=4))
    else:
        seeds = [seed] * 4
    scale_u, ratio_u, height_u, width_u = (tf.random.stateless_uniform([], s) for s in seeds)
    area = scale[0] + (scale[1] - scale[0]) * scale_u
    log_ratio = tf.math.log(ratio[0]) + (tf.math.log(ratio[1]) - tf.math.log(ratio[0])) * ratio_u
    height = tf.clip_by_value(tf.sqrt(area / tf.exp(log_ratio)), 0.0, 1.0)  # fractions of the image side
    width = tf.clip_by_value(tf.sqrt(area * tf.exp(log_ratio)), 0.0, 1.0)
    top, left = height_u * (1.0 - height), width_u * (1.0 - width)
    return tf.stack([top, left, top + height, left + width])[None]  # [1, 4]


def crop_and_resize(image: Any, box: Any) -> Any:
    """``[H, W, C]`` float -> the ``box`` ``[1, 4]`` cut out and resized (bilinear) back to ``[H, W, C]``."""
    tf = import_tensorflow()
    return tf.image.crop_and_resize(image[None], box, [0], tf.shape(image)[:2])[0]


def random_resized_crop(
    image: Any, seed: Any, scale: tuple[float, float], ratio: tuple[float, float], independent_draws: bool = False
) -> Any:
    """Crops the ``random_crop_box`` of ``seed`` out of ``image``, resized (bilinear) to the input size."""
    return crop_and_resize(image, random_crop_box(seed, scale, ratio, independent_draws))


def augmentation_seeds(seed: Any) -> list[Any]:
    """The five op seeds of one image's augmentation: crop, brightness, contrast, saturation, hue."""
    tf = import_tensorflow()
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=5))


def augmentation_crop_box(seed: Any, aug: ImageAugConfig) -> Any:
    """The crop box ``[1, 4]`` that ``augment_image`` with ``seed`` cuts (for maps that must follow the image)."""
    scale, ratio = aug.random_resized_crop_scale, aug.random_resized_crop_ratio
    return random_crop_box(augmentation_seeds(seed)[0], scale, ratio, aug.crop_independent_draws)


def augment_image(image: Any, seed: Any, aug: ImageAugConfig) -> Any:
    """Random crop, brightness, contrast, saturation, hue (in that order) on a [H, W, 3] uint8 image.

    Works in float [0, 1], clipping after every op, and converts back with saturation. All ops are stateless:
    the same ``seed`` ([2] int64) always gives the same augmentation.
    """
    tf = import_tensorflow()
    _, brightness_seed, contrast_seed, saturation_seed, hue_seed = augmentation_seeds(seed)
    image = tf.image.convert_image_dtype(image, tf.float32)
    image = _clip_unit(crop_and_resize(image, augmentation_crop_box(seed, aug)))
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
    with_camera_points: bool = False,
) -> Callable[[Any, Trajectory], Trajectory]:
    """``(sample_index, frame) -> frame`` decoding every camera to [1, H, W, 3] uint8, augmented when ``aug`` is set
    (and dropping ``observation/proprio`` unless ``keep_proprio``).

    The augmentation seed of camera k of a sample is derived from (``seed``, ``sample_index``, k), so a
    sample's augmentation does not depend on how many samples were drawn before it. With ``with_camera_points`` the
    frame's ``depth_<view>`` and ``intrinsics_<view>`` become ``points_<view>`` [1, H, W, 3] float32, resized and
    cropped like the image (``prismatic.vla.datasets.geometry``).
    """
    tf = import_tensorflow()

    def transform(sample_index: Any, frame: Trajectory) -> Trajectory:
        observation = dict(frame["observation"])
        if not keep_proprio:
            del observation["proprio"]
        sample_seed = tf.stack([tf.constant(seed, tf.int64), tf.cast(sample_index, tf.int64)])
        for camera_index, view in enumerate(camera_views):
            image = decode_and_resize(observation[f"image_{view}"][0], resize_resolution)  # window of one
            camera_seed = tf.random.experimental.stateless_fold_in(sample_seed, camera_index)
            if aug is not None:
                image = augment_image(image, camera_seed, aug)
            observation[f"image_{view}"] = image[None]  # [W=1, H, W, 3]
            if with_camera_points:
                depth, intrinsics = observation.pop(f"depth_{view}")[0], observation.pop(f"intrinsics_{view}")[0]
                points = points_from_depth(depth, intrinsics, xp=tf.experimental.numpy)  # [H0, W0, 3]
                points = tf.image.resize(points, resize_resolution, method="bilinear")
                if aug is not None:
                    points = crop_and_resize(points, augmentation_crop_box(camera_seed, aug))
                observation[f"points_{view}"] = points[None]  # [W=1, H, W, 3]
        return {**frame, "observation": observation}

    return transform
