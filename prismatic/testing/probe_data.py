"""A minimal depth-probe data folder in ``make_depth_probe_data.py``'s format, written without rendering (tests of
the readers' checks)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from prismatic.probing.data import FORMAT_VERSION, ScenePlan, write_meta, write_scene

SCENES = [
    ScenePlan("libero_spatial_t00_i000_v00", "libero_spatial", 0, 0, 0, "train", "put the bowl on the plate"),
    ScenePlan("libero_spatial_t00_i001_v00", "libero_spatial", 0, 1, 0, "test", "put the bowl on the plate"),
]
SIDE = 8


def write_scene_arrays(root: Path, scene: ScenePlan, **arrays: np.ndarray) -> None:
    """One scene of two ``SIDE`` x ``SIDE`` views (depth 1 m everywhere) with ``arrays`` replacing those given."""
    defaults = {
        "rgb": np.zeros((2, SIDE, SIDE, 3), np.uint8),
        "depth": np.ones((2, SIDE, SIDE), np.float32),
        "state": np.zeros(8),
    }
    write_scene(root, scene.name, **{**defaults, **arrays})


def write_probe_folder(root: Path) -> Path:
    """A valid data folder of the two ``SCENES`` (a train and a test scene of one suite)."""
    write_meta(
        root,
        {
            "format_version": FORMAT_VERSION,
            "settings": {"env_img_res": 64},
            "cameras": {"primary": "agentview", "wrist": "robot0_eye_in_hand"},
            "preprocessing": {"image_size": 224, "center_crop": False, "crop_area": 0.9},
            "scenes": [asdict(scene) for scene in SCENES],
        },
    )
    for scene in SCENES:
        write_scene_arrays(root, scene)
    return root
