"""Writing LIBERO episodes as a LeRobotDataset of format v3.0 (the layout lerobot 0.4.x writes and reads).

Output ``<root>/``:
    meta/info.json                            codebase_version v3.0, fps, features, path templates
    meta/stats.json                           per feature min/max/mean/std/count and quantiles q01..q99
    meta/tasks.parquet                        task_index, indexed by the task string
    meta/episodes/chunk-000/file-000.parquet  per episode: length, row range, per camera video file and timestamps
    data/chunk-000/file-000.parquet           per frame: observation.state, action, timestamp, indexes
    videos/<camera>/chunk-000/file-000.mp4    every episode's frames back to back (AV1, yuv420p)
Cameras ``observation.images.image`` (primary) and ``observation.images.wrist_image`` hold the frames as the robot
sees them (the RLDS data's orientation), so a policy trained on either copy sees the same images.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from prismatic.vla.datasets.writer import LIBERO_ACTION_DIM, LIBERO_STATE_DIM, LiberoEpisode

CODEBASE_VERSION = "v3.0"
CAMERA_KEYS = {"images": "observation.images.image", "wrist_images": "observation.images.wrist_image"}
VIDEO_CODEC = "libsvtav1"
DEFAULT_VIDEO_CRF = 30  # lerobot's encode_video_frames default
MAX_VIDEO_CRF = 63  # SVT-AV1's range is 0..63
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
INDEX_COLUMNS = ("frame_index", "episode_index", "index", "task_index")
STATS_FRAME_STRIDE = 4
STATS_PIXEL_STRIDE = 4


def _vector_stats(values: np.ndarray) -> dict[str, Any]:
    """LeRobot's per-feature statistics of [N, D] values."""
    values = np.asarray(values, dtype=np.float64)
    stats: dict[str, Any] = {
        "min": values.min(axis=0).tolist(),
        "max": values.max(axis=0).tolist(),
        "mean": values.mean(axis=0).tolist(),
        "std": values.std(axis=0).tolist(),
        "count": [len(values)],
    }
    for quantile in QUANTILES:
        stats[f"q{round(quantile * 100):02d}"] = np.quantile(values, quantile, axis=0).tolist()
    return stats


def _image_stats(frames: np.ndarray) -> dict[str, Any]:
    """Per-channel statistics of uint8 frames [N, H, W, 3] scaled to [0, 1], shaped [3, 1, 1] as LeRobot stores
    them."""
    pixels = frames.reshape(-1, 3).astype(np.float64) / 255.0
    return {
        name: (np.asarray(values).reshape(3, 1, 1).tolist() if name != "count" else [len(frames)])
        for name, values in _vector_stats(pixels).items()
    }


def _features(image_size: int, fps: int) -> dict[str, Any]:
    video = {
        "dtype": "video",
        "shape": [image_size, image_size, 3],
        "names": ["height", "width", "channels"],
        "info": {
            "video.height": image_size,
            "video.width": image_size,
            "video.codec": "av1",
            "video.pix_fmt": "yuv420p",
            "video.is_depth_map": False,
            "video.fps": fps,
            "video.channels": 3,
            "has_audio": False,
        },
    }
    features: dict[str, Any] = {key: video for key in CAMERA_KEYS.values()}
    features["observation.state"] = {"dtype": "float32", "shape": [LIBERO_STATE_DIM], "names": None}
    features["action"] = {"dtype": "float32", "shape": [LIBERO_ACTION_DIM], "names": None}
    features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for name in INDEX_COLUMNS:
        features[name] = {"dtype": "int64", "shape": [1], "names": None}
    return features


def _huggingface_metadata() -> bytes:
    """The ``datasets`` feature description lerobot's parquet files carry."""

    def vector(length: int) -> dict[str, Any]:
        return {"feature": {"dtype": "float32", "_type": "Value"}, "length": length, "_type": "List"}

    features = {"observation.state": vector(LIBERO_STATE_DIM), "action": vector(LIBERO_ACTION_DIM)}
    features["timestamp"] = {"dtype": "float32", "_type": "Value"}
    features.update({name: {"dtype": "int64", "_type": "Value"} for name in INDEX_COLUMNS})
    return json.dumps({"info": {"features": features}}).encode()


def _tasks_table(tasks: dict[str, int]) -> pa.Table:
    """``meta/tasks.parquet``: column task_index, the task strings as the pandas index (how lerobot reads it)."""
    pandas_metadata = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [
            {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "str", "metadata": None}
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": None,
                "field_name": "__index_level_0__",
                "pandas_type": "object",
                "numpy_type": "str",
                "metadata": None,
            },
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
    }
    table = pa.table(
        {
            "task_index": pa.array(list(tasks.values()), pa.int64()),
            "__index_level_0__": pa.array(list(tasks), pa.large_string()),
        }
    )
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_metadata).encode()})


class _VideoWriter:
    def __init__(self, path: Path, image_size: int, fps: int, crf: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream(VIDEO_CODEC, rate=fps)
        self.stream.width = self.stream.height = image_size
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"g": "2", "crf": str(crf)}  # a key frame every 2 frames: cheap random access

    def append(self, frame: np.ndarray) -> None:
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def write_lerobot_v30(
    episodes: Iterable[LiberoEpisode],
    root: str | Path,
    fps: int = 20,
    robot_type: str = "panda",
    video_crf: int = DEFAULT_VIDEO_CRF,
) -> Path:
    """Writes ``episodes`` (consumed lazily, one in memory at a time) as a LeRobot v3.0 dataset at ``root``, its
    videos AV1 at constant quality ``video_crf`` (0-63, lower is closer to the frames)."""
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} already exists; expected a new folder")
    writers: dict[str, _VideoWriter] = {}
    columns: dict[str, list] = {name: [] for name in ("observation.state", "action", "timestamp", *INDEX_COLUMNS)}
    episode_rows: list[dict[str, Any]] = []
    tasks: dict[str, int] = {}
    # Image statistics from every STATS_FRAME_STRIDE-th frame at every STATS_PIXEL_STRIDE-th pixel (a few MB).
    stats_frames: dict[str, list[np.ndarray]] = {key: [] for key in CAMERA_KEYS}
    frames_total, image_size = 0, None
    for episode_index, episode in enumerate(episodes):
        if image_size is None:
            image_size = int(episode.images.shape[1])
            for field_name, key in CAMERA_KEYS.items():
                writers[field_name] = _VideoWriter(
                    root / f"videos/{key}/chunk-000/file-000.mp4", image_size, fps, video_crf
                )
        episode.validate(image_size)
        length = len(episode.actions)
        task_index = tasks.setdefault(episode.language_instruction, len(tasks))
        row = {
            "episode_index": episode_index,
            "tasks": [episode.language_instruction],
            "length": length,
            "data/chunk_index": 0,
            "data/file_index": 0,
            "dataset_from_index": frames_total,
            "dataset_to_index": frames_total + length,
        }
        for field_name, key in CAMERA_KEYS.items():
            frames = np.asarray(getattr(episode, field_name))
            for frame in frames:
                writers[field_name].append(frame)
            stride = STATS_PIXEL_STRIDE
            stats_frames[field_name].append(frames[::STATS_FRAME_STRIDE, ::stride, ::stride])
            row.update(
                {
                    f"videos/{key}/chunk_index": 0,
                    f"videos/{key}/file_index": 0,
                    f"videos/{key}/from_timestamp": frames_total / fps,
                    f"videos/{key}/to_timestamp": (frames_total + length) / fps,
                }
            )
        columns["observation.state"].extend(np.asarray(episode.states, np.float32))
        columns["action"].extend(np.asarray(episode.actions, np.float32))
        columns["timestamp"].extend(np.arange(length, dtype=np.float32) / fps)
        columns["frame_index"].extend(range(length))
        columns["episode_index"].extend([episode_index] * length)
        columns["index"].extend(range(frames_total, frames_total + length))
        columns["task_index"].extend([task_index] * length)
        episode_rows.append(row)
        frames_total += length
    for writer in writers.values():
        writer.close()
    if not episode_rows:
        raise ValueError("no episodes to write")

    state = np.stack(columns["observation.state"])
    action = np.stack(columns["action"])
    data = pa.table(
        {
            "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(state.ravel()), LIBERO_STATE_DIM),
            "action": pa.FixedSizeListArray.from_arrays(pa.array(action.ravel()), LIBERO_ACTION_DIM),
            "timestamp": pa.array(np.asarray(columns["timestamp"], np.float32)),
            **{name: pa.array(np.asarray(columns[name], np.int64)) for name in INDEX_COLUMNS},
        }
    )
    data = data.replace_schema_metadata({b"huggingface": _huggingface_metadata()})
    (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
    pq.write_table(data, root / "data/chunk-000/file-000.parquet")
    (root / "meta/episodes/chunk-000").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(episode_rows), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(_tasks_table(tasks), root / "meta/tasks.parquet")

    stats = {"observation.state": _vector_stats(state), "action": _vector_stats(action)}
    stats["timestamp"] = _vector_stats(np.asarray(columns["timestamp"])[:, None])
    for name in INDEX_COLUMNS:
        stats[name] = _vector_stats(np.asarray(columns[name])[:, None])
    for field_name, key in CAMERA_KEYS.items():
        stats[key] = _image_stats(np.concatenate(stats_frames[field_name]))
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": len(episode_rows),
        "total_frames": frames_total,
        "total_tasks": len(tasks),
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200,
        "fps": fps,
        "splits": {"train": f"0:{len(episode_rows)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": _features(image_size, fps),
    }
    (root / "meta/stats.json").write_text(json.dumps(stats, indent=4))
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    return root
