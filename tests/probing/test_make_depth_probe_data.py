"""make_depth_probe_data.py: what it writes, its split, its preview, resuming and refusing changed settings."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from prismatic.probing.data import load_probe_data, read_meta
from tests.probing.conftest import DATA_FLAGS, REPO_ROOT, run_tool, sim_env

pytestmark = pytest.mark.sim


def test_scenes_hold_policy_images_and_registered_metric_depth(probe_data):
    data = load_probe_data(probe_data)
    assert len(data.scenes) == 8 and data.suites == ["libero_object", "libero_spatial"]
    assert data.rgb.shape == (8, 2, 224, 224, 3) and data.rgb.dtype == np.uint8
    assert data.depth.shape == (8, 2, 224, 224) and data.depth.dtype == np.float32
    assert np.isfinite(data.depth).all() and data.depth.min() > 0.005 and data.depth.max() < 10
    assert data.depth[:, 1].mean() < data.depth[:, 0].mean()  # the wrist camera is closer to the table
    for suite in data.suites:  # split by initial state: its perturbation shares its side
        scenes = [scene for scene in data.scenes if scene.suite == suite]
        assert {scene.split for scene in scenes} == {"train", "test"}
        for scene in scenes:
            assert scene.split == next(s.split for s in scenes if s.init_index == scene.init_index and s.variant == 0)
    # A perturbation changes the scene (objects and arm moved).
    unperturbed, perturbed = data.depth[0], data.depth[1]
    assert data.scenes[1].variant == 1 and np.abs(unperturbed - perturbed).mean() > 1e-3
    meta = read_meta(probe_data)
    assert meta["preprocessing"] == {"image_size": 224, "center_crop": True, "crop_area": 0.9}
    assert np.array(meta["intrinsics"]["primary"]).shape == (3, 3)
    assert Image.open(probe_data / "preview.png").size[0] > 400


def test_rerun_resumes_without_rendering_and_changed_settings_are_refused(probe_data, tmp_path):
    scene_file = next((probe_data / "scenes").iterdir())
    modified = scene_file.stat().st_mtime_ns
    script = "vla-scripts/make_depth_probe_data.py"
    run_tool([script, "--out_dir", str(probe_data), *DATA_FLAGS], env=sim_env(tmp_path))
    assert scene_file.stat().st_mtime_ns == modified
    changed = subprocess.run(
        [sys.executable, script, "--out_dir", str(probe_data), *DATA_FLAGS, "--seed", "8"],
        cwd=REPO_ROOT, env=sim_env(tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert changed.returncode == 2 and "seed" in changed.stderr and "--out_dir" in changed.stderr
