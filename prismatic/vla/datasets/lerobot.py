"""Reading LeRobotDataset folders (format v2.1 and v3.0) directly: metadata, parquet columns, video locations.

A dataset is ``<data_root_dir>/<dataset_name>/`` holding ``meta/info.json``; its ``codebase_version`` picks the
layout (no TensorFlow, no ``lerobot`` needed):

- v2.1: ``data/chunk-XXX/episode_XXXXXX.parquet`` per episode, ``meta/episodes.jsonl``, ``meta/tasks.jsonl``,
  ``videos/chunk-XXX/<camera>/episode_XXXXXX.mp4`` per episode and camera (each video starts at t = 0);
- v3.0: ``data/chunk-XXX/file-XXX.parquet`` holding many episodes, ``meta/episodes/chunk-XXX/file-XXX.parquet``
  (per episode: data file, row range, per camera video file and ``from_timestamp``), ``meta/tasks.parquet``,
  ``videos/<camera>/chunk-XXX/file-XXX.mp4`` (episodes concatenated).

Every numeric column the policy needs (state, action, task) is read into memory once (a few floats per frame);
images stay in the video files and are decoded per sample (``video.py``). Every problem found while opening raises
:class:`UserError` naming the file and key and what was expected, before anything is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from prismatic.util.cli import UserError
from prismatic.vla.datasets.config import holdout_episodes
from prismatic.vla.datasets.geometry import check_depth_follows_crop
from prismatic.vla.datasets.statistics import (
    cached_statistics,
    compute_statistics,
    first_non_finite,
    non_finite_error,
)
from prismatic.vla.datasets.video import VideoFrameReader, check_video_file
from prismatic.vla.policy_config import GRIPPER_CONVENTIONS

INFO_FILE = "meta/info.json"
SUPPORTED_VERSIONS = ("v2.1", "v3.0")
IMAGE_DTYPES = ("video", "image")
MAX_CAMERAS = 3
STATISTICS_FORMAT = "sf-lerobot-statistics-v1"  # part of the cache key; bump when the computation changes


@dataclass(frozen=True)
class LeRobotMapping:
    """Which LeRobot features feed the policy; saved with the checkpoint (``PolicyConfig.data``).

    ``camera_keys``: image/video features, primary camera first, then wrist cameras (empty: every image feature
    in ``info.json`` order). The language instruction is the episode frame's task (``task_index`` -> tasks file).
    ``depth_keys`` / ``intrinsics_keys``: per camera, in camera order, the float32 depth ``[H, W]`` (or
    ``[H, W, 1]``) and intrinsics ``[3, 3]`` (or ``[9]``) features (``datasets.geometry``); empty without depth.
    ``gripper``: ``"none"`` (every action dim normalised, commands sent as predicted) or ``"libero"`` (the last action
    dim is LIBERO's gripper command, -1 open / +1 close, trained as upstream trains LIBERO's RLDS data: ``1 - clip(a,
    0, 1)``, not normalised, and evaluated with the ``libero`` gripper convention).
    """

    camera_keys: tuple[str, ...] = ()
    state_key: str = "observation.state"
    action_key: str = "action"
    language_source: str = "task"
    depth_keys: tuple[str, ...] = ()
    intrinsics_keys: tuple[str, ...] = ()
    gripper: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "lerobot",
            "camera_keys": list(self.camera_keys),
            "state_key": self.state_key,
            "action_key": self.action_key,
            "language_source": self.language_source,
            **(
                {"depth_keys": list(self.depth_keys), "intrinsics_keys": list(self.intrinsics_keys)}
                if self.depth_keys
                else {}
            ),
            **({"gripper": self.gripper} if self.gripper != "none" else {}),
        }


@dataclass
class LeRobotEpisode:
    """One episode: its frames' rows in the loaded arrays and, per camera, (video file, time offset)."""

    index: int
    row_start: int
    length: int
    videos: dict[str, tuple[Path, float]] = field(default_factory=dict)


@dataclass
class LeRobotSource:
    """An opened, validated LeRobot dataset with its numeric columns in memory."""

    name: str
    root: Path
    version: str
    fps: float
    mapping: LeRobotMapping  # with camera_keys resolved
    camera_dtypes: dict[str, str]  # camera key -> "video" | "image"
    episodes: list[LeRobotEpisode]
    actions: np.ndarray  # [N, A] float32, rows grouped by episode in frame order
    states: np.ndarray  # [N, S] float32
    timestamps: np.ndarray  # [N] float64, seconds from the episode's start
    instructions: list[str]  # per row
    images: dict[str, list[bytes]]  # per image-dtype camera: encoded frames per row (video cameras are absent)
    data_files: list[Path]
    depths: dict[str, pa.ChunkedArray] = field(default_factory=dict)  # per depth key: one row per frame
    depth_shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # per depth key: (H, W)
    intrinsics: dict[str, np.ndarray] = field(default_factory=dict)  # per intrinsics key: [N, 3, 3] float32

    def depth_at(self, key: str, row: int) -> np.ndarray:
        """The [H, W] float32 depth of feature ``key`` at data row ``row``."""
        values = self.depths[key][row].values
        while pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type):
            values = values.flatten()
        return np.asarray(values, dtype=np.float32).reshape(self.depth_shapes[key])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def proprio_dim(self) -> int:
        return int(self.states.shape[1])


def read_info(dataset_dir: Path) -> dict[str, Any]:
    """``meta/info.json`` of a LeRobot folder, after checking its format version."""
    info_path = dataset_dir / INFO_FILE
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{info_path}: cannot read LeRobot metadata ({error}); expected a JSON object.") from None
    version = info.get("codebase_version") if isinstance(info, dict) else None
    if version not in SUPPORTED_VERSIONS:
        raise UserError(
            f"{info_path}: codebase_version {version!r} is not supported; expected one of {list(SUPPORTED_VERSIONS)} "
            f"(convert with lerobot's converter to v3.0)."
        )
    return info


@contextlib.contextmanager
def _malformed_metadata(root: Path) -> Iterator[None]:
    """Turns a missing key or a wrong type met while reading the metadata of ``root`` into one UserError."""
    try:
        yield
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as error:
        detail = f"missing key {error}" if isinstance(error, KeyError) else f"{type(error).__name__}: {error}"
        raise UserError(
            f"{root / 'meta'}: malformed LeRobot metadata ({detail}): expected info.json and the episodes and tasks "
            "files of LeRobot v2.1 or v3.0"
        ) from None


def dataset_file(root: Path, relative: str, key: str) -> str:
    """``relative`` (a path that ``info.json``'s ``key`` template gave) after checking that it stays inside the
    dataset folder ``root``: no absolute path, no ``..``."""
    parts = PurePosixPath(relative).parts
    if PurePosixPath(relative).is_absolute() or Path(relative).is_absolute() or ".." in parts:
        raise UserError(
            f"{root / INFO_FILE}: {key} gives {relative!r}, which leaves the dataset folder: expected a path "
            f"relative to {root} without '..'"
        )
    return relative


def is_lerobot_dataset(data_root_dir: str | Path, dataset_name: str) -> bool:
    """Whether ``<data_root_dir>/<dataset_name>`` is a LeRobot folder (has ``meta/info.json``), not an RLDS one."""
    return (Path(data_root_dir) / dataset_name / INFO_FILE).is_file()


def open_lerobot(data_root_dir: str | Path, dataset_name: str, mapping: LeRobotMapping) -> LeRobotSource:
    """Opens ``<data_root_dir>/<dataset_name>``: checks the mapping against ``info.json``, reads the columns, checks
    their shapes and that every video file opens."""
    root = Path(data_root_dir) / dataset_name
    info = read_info(root)
    info_path = root / INFO_FILE
    with _malformed_metadata(root):
        features = info.get("features", {})
        mapping = resolve_mapping(mapping, features, info_path)
        episode_meta, tasks = (_read_v21_meta if info["codebase_version"] == "v2.1" else _read_v30_meta)(root, info)
        fps = float(info["fps"])
    data_files = sorted({root / meta["data_file"] for meta in episode_meta})
    columns = [mapping.state_key, mapping.action_key, "episode_index", "frame_index", "timestamp", "task_index"]
    image_cameras = [key for key in mapping.camera_keys if features[key]["dtype"] == "image"]
    geometry_columns = [*mapping.depth_keys, *mapping.intrinsics_keys]
    table = _read_parquet_files(data_files, columns + image_cameras + geometry_columns)
    table = table.sort_by([("episode_index", "ascending"), ("frame_index", "ascending")])

    actions = _vector_column(table, mapping.action_key, features, data_files)
    states = _vector_column(table, mapping.state_key, features, data_files)
    timestamps = table.column("timestamp").to_numpy().astype(np.float64)
    episode_index = table.column("episode_index").to_numpy()
    task_index = table.column("task_index").to_numpy()
    unknown_tasks = sorted(set(task_index.tolist()) - set(tasks))
    if unknown_tasks:
        raise UserError(
            f"{root}: task_index values {unknown_tasks} are not in the tasks file; expected {sorted(tasks)}."
        )

    frame_index = table.column("frame_index").to_numpy()
    for key, values in ((mapping.action_key, actions), (mapping.state_key, states)):
        found = first_non_finite(values)
        if found is not None:
            row, dimension = found
            episode = int(episode_index[row])
            data_file = next(root / meta["data_file"] for meta in episode_meta if meta["index"] == episode)
            raise non_finite_error(str(data_file), key, episode, int(frame_index[row]), dimension, values[found])

    if mapping.gripper == "libero":
        actions = libero_gripper_targets(actions)
    episodes = []
    for meta in episode_meta:
        rows = np.flatnonzero(episode_index == meta["index"])
        if len(rows) != meta["length"]:
            raise UserError(
                f"{root / meta['data_file']}: episode {meta['index']} has {len(rows)} rows; the episode metadata "
                f"lists length {meta['length']}."
            )
        videos = {}
        for camera in mapping.camera_keys:
            if features[camera]["dtype"] == "video":
                path, offset = meta["videos"][camera]
                videos[camera] = (root / path, offset)
        episodes.append(LeRobotEpisode(meta["index"], int(rows[0]), len(rows), videos))
    for path in sorted({video for episode in episodes for video, _ in episode.videos.values()}):
        check_video_file(path)
    check_episode_ends_decode(episodes, timestamps, float(info["fps"]))

    return LeRobotSource(
        name=dataset_name,
        root=root,
        version=info["codebase_version"],
        fps=fps,
        mapping=mapping,
        camera_dtypes={key: features[key]["dtype"] for key in mapping.camera_keys},
        episodes=episodes,
        actions=actions,
        states=states,
        timestamps=timestamps,
        instructions=[tasks[int(index)] for index in task_index],
        images={key: [cell["bytes"] for cell in table.column(key).to_pylist()] for key in image_cameras},
        data_files=data_files,
        depths={key: table.column(key) for key in mapping.depth_keys},
        depth_shapes={key: tuple(features[key]["shape"][:2]) for key in mapping.depth_keys},
        intrinsics={
            key: _vector_column(table, key, features, data_files).reshape(-1, 3, 3) for key in mapping.intrinsics_keys
        },
    )


def frame_tolerance(fps: float) -> float:
    """How far (seconds) a decoded frame may lie from a row's timestamp: half a frame."""
    return 0.5 / fps


def check_episode_ends_decode(episodes: list[LeRobotEpisode], timestamps: np.ndarray, fps: float) -> None:
    """Decodes each episode's last frame of every camera (the last one training reads), so a truncated or damaged
    video stops the run at start naming the file and the episode, not at the step that first samples it."""
    reader = VideoFrameReader()
    try:
        for episode in episodes:
            end = float(timestamps[episode.row_start + episode.length - 1])
            for path, offset in episode.videos.values():
                try:
                    reader.read(path, offset + end, frame_tolerance(fps))
                except UserError as error:
                    raise UserError(
                        f"{str(error).rstrip('.')} (the last frame of episode {episode.index}): expected a complete "
                        "video (re-encode or re-download it)"
                    ) from None
    finally:
        reader.close()


def resolve_mapping(mapping: LeRobotMapping, features: dict[str, Any], info_path: Path) -> LeRobotMapping:
    image_features = [key for key, spec in features.items() if spec.get("dtype") in IMAGE_DTYPES]
    camera_keys = mapping.camera_keys or tuple(image_features)
    if not 1 <= len(camera_keys) <= MAX_CAMERAS:
        raise UserError(
            f"{info_path}: {len(camera_keys)} cameras {list(camera_keys)} (--lerobot_camera_keys); expected 1 to "
            f"{MAX_CAMERAS} of the image features {image_features}."
        )
    for camera in camera_keys:
        if camera not in image_features:
            raise UserError(
                f"{info_path}: camera {camera!r} (--lerobot_camera_keys) is not an image or video feature of the "
                f"dataset; expected one of {image_features}."
            )
    for flag, key in (("--lerobot_state_key", mapping.state_key), ("--lerobot_action_key", mapping.action_key)):
        spec = features.get(key)
        if spec is None or not str(spec.get("dtype", "")).startswith("float") or len(spec.get("shape", ())) != 1:
            vectors = [k for k, s in features.items() if str(s.get("dtype", "")).startswith("float")]
            raise UserError(
                f"{info_path}: feature {key!r} ({flag}) is missing or not a float vector; expected one of {vectors}."
            )
    _check_geometry_features(mapping, tuple(camera_keys), features, info_path)
    if mapping.gripper not in GRIPPER_CONVENTIONS:
        raise UserError(f"--lerobot_gripper {mapping.gripper!r}: expected one of {list(GRIPPER_CONVENTIONS)}")
    return LeRobotMapping(
        tuple(camera_keys),
        mapping.state_key,
        mapping.action_key,
        mapping.language_source,
        mapping.depth_keys,
        mapping.intrinsics_keys,
        mapping.gripper,
    )


def libero_gripper_targets(actions: np.ndarray) -> np.ndarray:
    """LIBERO's raw actions ``[T, A]`` with the gripper (last dim: -1 open, +1 close) as upstream's RLDS transform
    makes it (``registry.standardize_libero``): ``1 - clip(a, 0, 1)``, i.e. 1 open, 0 close; returns a copy."""
    converted = np.array(actions, dtype=np.float32, copy=True)
    converted[:, -1] = 1.0 - np.clip(converted[:, -1], 0.0, 1.0)
    return converted


def _check_geometry_features(
    mapping: LeRobotMapping, camera_keys: tuple[str, ...], features: dict[str, Any], info_path: Path
) -> None:
    """Depth and intrinsics features, one per camera, of the shapes ``datasets.geometry`` reads."""
    if not mapping.depth_keys and not mapping.intrinsics_keys:
        return
    for flag, keys in (
        ("--lerobot_depth_keys", mapping.depth_keys),
        ("--lerobot_intrinsics_keys", mapping.intrinsics_keys),
    ):
        if len(keys) != len(camera_keys):
            raise UserError(
                f"{info_path}: {flag} names {len(keys)} features {list(keys)}; expected one per camera "
                f"{list(camera_keys)}, in the same order."
            )
    floats = [key for key, spec in features.items() if str(spec.get("dtype", "")).startswith("float")]
    for camera, depth_key, intrinsics_key in zip(camera_keys, mapping.depth_keys, mapping.intrinsics_keys, strict=True):
        for flag, key in (("--lerobot_depth_keys", depth_key), ("--lerobot_intrinsics_keys", intrinsics_key)):
            if key not in floats:
                raise UserError(
                    f"{info_path}: feature {key!r} ({flag}) is missing or not a float feature; expected one of "
                    f"{floats}."
                )
        depth_shape, intrinsics_shape = list(features[depth_key]["shape"]), list(features[intrinsics_key]["shape"])
        if len(depth_shape) not in (2, 3) or depth_shape[2:] not in ([], [1]) or intrinsics_shape not in ([3, 3], [9]):
            raise UserError(
                f"{info_path}: depth {depth_key!r} has shape {depth_shape} and intrinsics {intrinsics_key!r} shape "
                f"{intrinsics_shape}: expected depth [H, W] (or [H, W, 1]) and intrinsics [3, 3] (or [9])"
            )
        try:
            check_depth_follows_crop(
                tuple(features[camera]["shape"][:2]), tuple(depth_shape[:2]), f"{info_path}: {depth_key!r}"
            )
        except ValueError as error:
            raise UserError(str(error)) from None


def _read_v21_meta(root: Path, info: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[int, str]]:
    chunks_size = int(info.get("chunks_size", 1000))
    video_keys = [key for key, spec in info["features"].items() if spec.get("dtype") == "video"]
    episodes = []
    for record in _read_jsonl(root / "meta/episodes.jsonl"):
        index = int(record["episode_index"])
        chunk = index // chunks_size
        episodes.append(
            {
                "index": index,
                "length": int(record["length"]),
                "data_file": dataset_file(
                    root, info["data_path"].format(episode_chunk=chunk, episode_index=index), "data_path"
                ),
                "videos": {
                    key: (
                        dataset_file(
                            root,
                            info["video_path"].format(episode_chunk=chunk, video_key=key, episode_index=index),
                            "video_path",
                        ),
                        0.0,
                    )
                    for key in video_keys
                },
            }
        )
    tasks = {int(record["task_index"]): str(record["task"]) for record in _read_jsonl(root / "meta/tasks.jsonl")}
    return episodes, tasks


def _read_v30_meta(root: Path, info: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[int, str]]:
    video_keys = [key for key, spec in info["features"].items() if spec.get("dtype") == "video"]
    episode_files = sorted((root / "meta/episodes").glob("chunk-*/file-*.parquet"))
    if not episode_files:
        raise UserError(f"{root / 'meta/episodes'}: no chunk-XXX/file-XXX.parquet files; expected the v3.0 episodes.")
    table = _read_parquet_files(episode_files, None)
    episodes = []
    for record in table.to_pylist():
        data_file = dataset_file(
            root,
            info["data_path"].format(chunk_index=record["data/chunk_index"], file_index=record["data/file_index"]),
            "data_path",
        )
        videos = {}
        for key in video_keys:
            prefix = f"videos/{key}/"
            video_file = info["video_path"].format(
                video_key=key, chunk_index=record[prefix + "chunk_index"], file_index=record[prefix + "file_index"]
            )
            videos[key] = (dataset_file(root, video_file, "video_path"), float(record[prefix + "from_timestamp"]))
        episodes.append(
            {
                "index": int(record["episode_index"]),
                "length": int(record["length"]),
                "data_file": data_file,
                "videos": videos,
            }
        )
    tasks_table = _read_parquet_files([root / "meta/tasks.parquet"], None)
    names = tasks_table.column(tasks_table.column_names[-1] if "task" not in tasks_table.column_names else "task")
    tasks = {
        int(i): str(t) for i, t in zip(tasks_table.column("task_index").to_pylist(), names.to_pylist(), strict=True)
    }
    return sorted(episodes, key=lambda episode: episode["index"]), tasks


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: cannot read ({error}); expected one JSON object per line.") from None


def _read_parquet_files(paths: list[Path], columns: list[str] | None) -> pa.Table:
    tables = []
    for path in paths:
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as error:
            raise UserError(f"{path}: unreadable parquet file ({error}); re-export or re-download it.") from None
        missing = [column for column in columns or () if column not in schema.names]
        if missing:
            raise UserError(f"{path}: missing column(s) {missing}; the file has {schema.names}.")
        try:
            tables.append(pq.read_table(path, columns=columns))
        except (OSError, pa.ArrowException) as error:
            raise UserError(f"{path}: unreadable parquet file ({error}); re-export or re-download it.") from None
    return pa.concat_tables(tables, promote_options="default")


def _vector_column(table: pa.Table, key: str, features: dict[str, Any], data_files: list[Path]) -> np.ndarray:
    expected = int(np.prod(features[key]["shape"]))
    rows = [np.ravel(row) for row in table.column(key).to_pylist()]
    lengths = sorted({len(row) for row in rows})
    if lengths != [expected]:
        files = ", ".join(str(path) for path in data_files)
        raise UserError(
            f"{files}: column {key!r} holds vectors of length {lengths}; meta/info.json declares shape [{expected}]."
        )
    return np.asarray(rows, dtype=np.float32)


def split_episodes(source: LeRobotSource, train: bool, val_fraction: float = 0.0) -> list[LeRobotEpisode]:
    """The train or val episodes: with ``val_fraction`` 0 every episode trains (as for RLDS); otherwise the last
    ``holdout_episodes(N, val_fraction)`` episodes are held out whole."""
    cut = len(source.episodes) - holdout_episodes(len(source.episodes), val_fraction)
    return source.episodes[:cut] if train else source.episodes[cut:]


def get_lerobot_statistics(source: LeRobotSource, cache_dir: Path | None = None) -> dict[str, Any]:
    """Exact statistics (q01/q99 over every frame, as for RLDS) of the mapped action and state, all dims normalised;
    cached as ``dataset_statistics_<key>.json`` in the dataset folder (or ``cache_dir`` if it is read-only)."""
    identity = {
        "format": STATISTICS_FORMAT,
        "name": source.name,
        "action": source.mapping.action_key,
        "state": source.mapping.state_key,
        "files": {str(path.relative_to(source.root)): path.stat().st_size for path in source.data_files},
        **({"gripper": source.mapping.gripper} if source.mapping.gripper != "none" else {}),
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    cache_name = f"dataset_statistics_{key}.json"
    candidates = [source.root / cache_name]
    candidates.append((cache_dir or Path.home() / ".cache" / "spatial_forcing") / source.name / cache_name)

    def compute() -> dict[str, Any]:
        rows = [slice(e.row_start, e.row_start + e.length) for e in source.episodes]
        return compute_statistics([source.actions[r] for r in rows], [source.states[r] for r in rows])

    statistics = cached_statistics(candidates, compute)
    statistics["action"]["mask"] = np.ones(source.action_dim, dtype=bool)
    if source.mapping.gripper == "libero":
        statistics["action"]["mask"][-1] = False  # as the RLDS path's LIBERO mask: the {0, 1} gripper passes through
    return statistics
