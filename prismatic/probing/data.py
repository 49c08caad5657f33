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
import zipfile
from dataclasses import dataclass, fields
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
REQUIRED_META_KEYS = ("settings", "preprocessing")  # maps; "scenes" is checked by scene_plans


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

    def leading_views(self, count: int) -> ProbeData:
        """The first ``count`` cameras of every scene (primary first, as policies stack them)."""
        return ProbeData(self.scenes, self.rgb[:, :count], self.depth[:, :count], self.state, self.meta)

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
    """The file of scene ``name``; a name that is not a plain file name (a folder part, ``..``) is refused, so a
    ``meta.json`` cannot point outside ``scenes/``."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise UserError(
            f"{Path(root) / META_NAME}: scene name {name!r} leaves {SCENES_DIR}/: expected a plain file name"
        )
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
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); rerun make_depth_probe_data.py") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: found a JSON {type(meta).__name__}: expected the map make_depth_probe_data.py writes")
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: format_version {meta.get('format_version')!r}; expected {FORMAT_VERSION}")
    missing = [key for key in REQUIRED_META_KEYS if not isinstance(meta.get(key), dict)]
    preprocessing = meta.get("preprocessing") or {}
    missing += [f"preprocessing.{key}" for key in ("center_crop", "crop_area") if key not in preprocessing]
    if missing:
        raise UserError(f"{path}: no {missing}: expected the keys make_depth_probe_data.py writes")
    return meta


def scene_plans(root: str | Path, meta: dict[str, Any]) -> list[ScenePlan]:
    """The planned scenes of ``meta.json``, each checked (its keys, a plain file name)."""
    path = Path(root) / META_NAME
    entries = meta.get("scenes")
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: no 'scenes' list: expected the scenes make_depth_probe_data.py planned")
    keys = [field.name for field in fields(ScenePlan)]
    plans = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or sorted(entry) != sorted(keys):
            raise UserError(f"{path}: scenes[{index}] is {str(entry)[:80]}: expected a map with keys {keys}")
        plans.append(ScenePlan(**entry))
        scene_path(root, plans[-1].name)
    return plans


def _read_scene(root: str | Path, scene: ScenePlan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene's rgb, depth and state, checked: readable, the expected shapes, and depth with a finite value in
    every view (an all-NaN view is a failed render, reported rather than left out of the metrics)."""
    path = scene_path(root, scene.name)
    try:
        with np.load(path) as arrays:
            rgb, depth, state = arrays["rgb"], arrays["depth"], arrays["state"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise UserError(
            f"{path}: unreadable scene ({type(error).__name__}: {error}): expected an .npz with rgb, depth and state; "
            "delete it and rerun make_depth_probe_data.py with the same flags"
        ) from None
    if rgb.ndim != 4 or rgb.shape[-1] != 3 or depth.shape != rgb.shape[:-1] or state.ndim != 1:
        raise UserError(
            f"{path}: rgb {rgb.shape}, depth {depth.shape}, state {state.shape}: expected rgb [views, H, W, 3], depth "
            "[views, H, W] and a state vector"
        )
    empty_views = [
        VIEWS[view] if view < len(VIEWS) else view for view in range(len(depth)) if not np.isfinite(depth[view]).any()
    ]
    if empty_views:
        raise UserError(
            f"{path}: depth of view(s) {empty_views} has no finite value (a failed render): expected metric depth; "
            "delete the file and rerun make_depth_probe_data.py with the same flags"
        )
    return rgb, depth, state


def load_probe_data(root: str | Path) -> ProbeData:
    """All scenes of a finished data folder; raises naming the folder if scenes are missing, and naming the file if
    one is unreadable, of other shapes than the rest, or has a view without any depth."""
    meta = read_meta(root)
    scenes = scene_plans(root, meta)
    missing = [scene.name for scene in scenes if not scene_path(root, scene.name).exists()]
    if missing:
        raise UserError(
            f"--data {root}: {len(missing)} of {len(scenes)} scenes are not rendered yet (first: {missing[0]}); "
            "rerun make_depth_probe_data.py with the same flags to finish"
        )
    rgb, depth, state = [], [], []
    for scene in scenes:
        for arrays, array in zip((rgb, depth, state), _read_scene(root, scene), strict=True):
            if arrays and array.shape != arrays[0].shape:
                raise UserError(
                    f"{scene_path(root, scene.name)}: an array of shape {array.shape} where {scenes[0].name} has "
                    f"{arrays[0].shape}: expected every scene at the same size (one make_depth_probe_data.py run)"
                )
            arrays.append(array)
    return ProbeData(scenes, np.stack(rgb), np.stack(depth), np.stack(state), meta)
