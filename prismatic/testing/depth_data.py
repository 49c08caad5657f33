"""Depth for LeRobot test data: adds per-frame depth and intrinsics columns to a LeRobot v3.0 folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def add_lerobot_depth(
    dataset_dir: Path, depth_key: str, intrinsics_key: str, depth: np.ndarray, intrinsics: np.ndarray
) -> None:
    """Adds ``depth`` ``[H, W]`` and ``intrinsics`` ``[3, 3]`` (the same for every frame) to every data file of
    ``dataset_dir`` as nested-list float32 columns (as HF ``Array2D`` stores them), declared in ``meta/info.json``."""
    nested = pa.list_(pa.list_(pa.float32()))
    for data_file in sorted((dataset_dir / "data").rglob("*.parquet")):
        table = pq.read_table(data_file)
        table = table.append_column(depth_key, pa.array([depth.tolist()] * table.num_rows, nested))
        table = table.append_column(intrinsics_key, pa.array([intrinsics.tolist()] * table.num_rows, nested))
        pq.write_table(table, data_file)
    info_path = dataset_dir / "meta/info.json"
    info = json.loads(info_path.read_text())
    info["features"][depth_key] = {"dtype": "float32", "shape": list(depth.shape), "names": None}
    info["features"][intrinsics_key] = {"dtype": "float32", "shape": [3, 3], "names": None}
    info_path.write_text(json.dumps(info))
