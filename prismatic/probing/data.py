"""On-disk format of a depth-probing data set, shared by its writer (a LIBERO rendering process) and the probes.

A data folder holds ``meta.json`` (settings, cameras, intrinsics of the policy images, the planned scenes with their
split) and one ``scenes/{name}.npz`` per rendered scene:

    rgb           [2, 224, 224, 3] uint8     what the policy sees (primary camera first, then wrist)
    depth         [2, 224, 224]    float32   metric depth (metres, along the optical axis), pixel-registered to rgb
    state         [8]              float64   proprio (end-effector position, axis-angle, gripper joints)
    camera_poses  [2, 4, 4]        float64   camera-to-world transforms (OpenCV axes: x right, y down, z forward)

Scene files are written atomically; a scene whose file exists is done, so an interrupted writer resumes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prismatic.util.cli import UserError
from prismatic.util.io import atomic_output, write_json_atomic

META_NAME = "meta.json"
SCENES_DIR = "scenes"
PREVIEW_NAME = "preview.png"
FORMAT_VERSION = 1
VIEWS = ("primary", "wrist")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class ScenePlan:
    """One scene: an initial state of a suite's task (``variant`` 0) or a seeded random perturbation of it."""

    name: str
    suite: str
    task_id: int
    init_index: int
    variant: int
    split: str
    instruction: str


@dataclass
class ProbeData:
    """Scenes of a data folder in memory (all arrays indexed by scene first)."""

    scenes: list[ScenePlan]
    rgb: np.ndarray  # [S, 2, H, W, 3] uint8
    depth: np.ndarray  # [S, 2, H, W] float32
    state: np.ndarray  # [S, 8]
    meta: dict[str, Any]

    def select(self, indices: list[int]) -> ProbeData:
        return ProbeData(
            [self.scenes[i] for i in indices], self.rgb[indices], self.depth[indices], self.state[indices], self.meta
        )

    def subset(self, suite: str | None = None, split: str | None = None) -> ProbeData:
        """Scenes of ``suite`` (any when None) and ``split`` (any when None)."""
        keep = [
            i
            for i, scene in enumerate(self.scenes)
            if (suite is None or scene.suite == suite) and (split is None or scene.split == split)
        ]
        return self.select(keep)

    @property
    def suites(self) -> list[str]:
        return sorted({scene.suite for scene in self.scenes})


def scene_name(suite: str, task_id: int, init_index: int, variant: int) -> str:
    return f"{suite}_t{task_id:02d}_i{init_index:03d}_v{variant:02d}"


def scene_path(root: str | Path, name: str) -> Path:
    return Path(root) / SCENES_DIR / f"{name}.npz"


def write_scene(root: str | Path, name: str, **arrays: np.ndarray) -> None:
    """Write one scene's arrays atomically (a reader never sees a partial file)."""
    with atomic_output(scene_path(root, name)) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, **arrays)


def write_meta(root: str | Path, meta: dict[str, Any]) -> None:
    write_json_atomic(Path(root) / META_NAME, meta)


def read_meta(root: str | Path) -> dict[str, Any]:
    path = Path(root) / META_NAME
    if not path.exists():
        raise UserError(f"--data {root}: no {META_NAME}; expected a folder written by make_depth_probe_data.py")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error}); rerun make_depth_probe_data.py") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: format_version {meta.get('format_version')!r}; expected {FORMAT_VERSION}")
    return meta


def load_probe_data(root: str | Path) -> ProbeData:
    """All scenes of a finished data folder; raises naming the folder if scenes are missing."""
    meta = read_meta(root)
    scenes = [ScenePlan(**scene) for scene in meta["scenes"]]
    missing = [scene.name for scene in scenes if not scene_path(root, scene.name).exists()]
    if missing:
        raise UserError(
            f"--data {root}: {len(missing)} of {len(scenes)} scenes are not rendered yet (first: {missing[0]}); "
            "rerun make_depth_probe_data.py with the same flags to finish"
        )
    rgb, depth, state = [], [], []
    for scene in scenes:
        with np.load(scene_path(root, scene.name)) as arrays:
            rgb.append(arrays["rgb"])
            depth.append(arrays["depth"])
            state.append(arrays["state"])
    return ProbeData(scenes, np.stack(rgb), np.stack(depth), np.stack(state), meta)
