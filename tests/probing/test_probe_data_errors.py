"""A damaged depth-probe data folder is one UserError naming the file and what was expected, read before any model
loads: meta.json without its keys or of another type, scene entries or names that do not fit, unreadable or
mismatched scene files, and a scene whose depth view holds no finite value (reported, not left out of the metrics)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from prismatic.probing.data import META_NAME, load_probe_data, scene_path, write_scene
from prismatic.testing.probe_data import SCENES, write_probe_folder, write_scene_arrays
from prismatic.util.cli import UserError


def edit_meta(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        meta = json.loads((root / META_NAME).read_text())
        change(meta)
        (root / META_NAME).write_text(json.dumps(meta))

    return edit


def rewrite_scene(index: int, **arrays: np.ndarray) -> Callable[[Path], None]:
    return lambda root: write_scene_arrays(root, SCENES[index], **arrays)


def first_scene_file(root: Path) -> Path:
    return scene_path(root, SCENES[0].name)


CASES: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "meta without scenes": (edit_meta(lambda meta: meta.pop("scenes")), ["meta.json: no 'scenes' list"]),
    "meta is a list": (lambda root: (root / META_NAME).write_text("[1, 2]"), ["meta.json: found a JSON list"]),
    "meta not text": (lambda root: (root / META_NAME).write_bytes(b"\xff\xfe\x00"), ["meta.json is not valid JSON"]),
    "meta without preprocessing": (
        edit_meta(lambda meta: meta.pop("preprocessing")),
        ["meta.json: no ['preprocessing', 'preprocessing.center_crop', 'preprocessing.crop_area']"],
    ),
    "scene entry without a key": (
        edit_meta(lambda meta: meta["scenes"][1].pop("split")),
        ["meta.json: scenes[1] is", "expected a map with keys ['name', 'suite'"],
    ),
    "scene name leaving the folder": (
        edit_meta(lambda meta: meta["scenes"][0].update(name="../../outside")),
        ["meta.json: scene name '../../outside' leaves scenes/"],
    ),
    "absolute scene name": (
        edit_meta(lambda meta: meta["scenes"][0].update(name="/etc/passwd")),
        ["scene name '/etc/passwd' leaves scenes/"],
    ),
    "scene file not an npz": (
        lambda root: first_scene_file(root).write_text("not an npz"),
        [f"{SCENES[0].name}.npz: unreadable scene", "rerun make_depth_probe_data.py"],
    ),
    "scene without depth": (
        lambda root: write_scene(root, SCENES[0].name, rgb=np.zeros((2, 8, 8, 3), np.uint8), state=np.zeros(8)),
        [f"{SCENES[0].name}.npz: unreadable scene (KeyError"],
    ),
    "scene of another size": (
        rewrite_scene(1, rgb=np.zeros((2, 4, 4, 3), np.uint8), depth=np.ones((2, 4, 4), np.float32)),
        [f"{SCENES[1].name}.npz: an array of shape (2, 4, 4, 3) where {SCENES[0].name} has (2, 8, 8, 3)"],
    ),
    "depth not matching rgb": (
        rewrite_scene(0, depth=np.ones((2, 5, 5), np.float32)),
        [f"{SCENES[0].name}.npz: rgb (2, 8, 8, 3), depth (2, 5, 5)"],
    ),
    "all-NaN depth view": (
        rewrite_scene(1, depth=np.stack([np.ones((8, 8)), np.full((8, 8), np.nan)]).astype(np.float32)),
        [f"{SCENES[1].name}.npz: depth of view(s) ['wrist'] has no finite value"],
    ),
}


def test_the_valid_folder_loads(tmp_path: Path) -> None:
    data = load_probe_data(write_probe_folder(tmp_path))
    assert data.rgb.shape == (2, 2, 8, 8, 3) and data.depth.shape == (2, 2, 8, 8) and data.scenes == SCENES


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_damaged_folder_is_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    damage, expected_parts = CASES[case]
    root = write_probe_folder(tmp_path / "data")
    damage(root)
    with pytest.raises(UserError) as error:
        load_probe_data(root)
    message = str(error.value)
    assert "\n" not in message
    for part in expected_parts:
        assert part in message, f"{part!r} not in {message!r}"
