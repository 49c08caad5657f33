"""LIBERO demonstrations regenerated in the simulator: two demos recorded in the real simulator (LIBERO's HDF5 layout)
are replayed as upstream's regeneration does (one env per task, its reset stream, 10 dummy steps before each replay);
the regenerated frames equal a direct render of that procedure, no-ops are dropped, a demo that does not finish its
task is dropped, and the kept episodes are written as RLDS. All sim work runs in fresh processes
with ``USE_TF=0`` (this pytest process may hold TensorFlow)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.sim

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 64
SIM_ENV = {**os.environ, "USE_TF": "0", "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *command], capture_output=True, text=True, env=SIM_ENV, cwd=REPO_ROOT, timeout=600
    )


@pytest.fixture(scope="module")
def recorded_demo(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("recorded")
    hdf5_path, expected_path = folder / "hdf5" / "task0_demo.hdf5", folder / "expected.npz"
    hdf5_path.parent.mkdir()
    result = _run("tests/eval/record_libero_demo.py", str(hdf5_path), str(expected_path), str(IMAGE_SIZE))
    assert result.returncode == 0, result.stderr[-4000:]
    return hdf5_path, expected_path


def _regenerate(hdf5_dir: Path, data_root: Path, work_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    return _run(
        "vla-scripts/regenerate_libero_hdf5.py",
        f"--hdf5_dir={hdf5_dir}",
        f"--data_root_dir={data_root}",
        "--dataset_name=libero_spatial_no_noops",
        f"--work_dir={work_dir}",
        f"--image_size={IMAGE_SIZE}",
        "--num_workers=1",
        *flags,
    )


@pytest.fixture(scope="module")
def kept_failed_run(recorded_demo, tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """(data root, replays folder, the finished process) of one regeneration that keeps the failed demos."""
    hdf5_path, _ = recorded_demo
    root = tmp_path_factory.mktemp("regenerated")
    result = _regenerate(hdf5_path.parent, root / "data", root / "replays", "--keep_failed=True")
    assert result.returncode == 0, result.stderr[-4000:]
    return root / "data", root / "replays", result


def test_regenerated_frames_equal_upstreams_replay_and_no_ops_are_dropped(recorded_demo, kept_failed_run):
    _, expected_path = recorded_demo
    data_root, work_dir, result = kept_failed_run
    assert "2 demos replayed: 2 kept, 2 failed (kept), 8 no-op steps dropped" in result.stdout

    expected = np.load(expected_path)
    for index in range(2):  # one env, demo i after the i-th reset, 10 dummy steps before each replay
        replay = np.load(work_dir / f"task0_demo--demo_{index}.npz")
        np.testing.assert_array_equal(replay["actions"], expected["actions"])  # 8 recorded steps, 4 kept
        np.testing.assert_array_equal(replay["images"], expected[f"demo_{index}/images"])
        np.testing.assert_array_equal(replay["wrist_images"], expected[f"demo_{index}/wrist_images"])
        np.testing.assert_allclose(replay["states"], expected[f"demo_{index}/states"], atol=1e-6)
        assert replay["images"].shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3) and replay["images"].std() > 10
    # The shortcuts the regeneration once took render other frames: a fresh env per demo, no dummy steps.
    assert not np.array_equal(expected["demo_1/images"], expected["fresh_env_demo_1/images"])
    assert not np.array_equal(expected["demo_0/images"], expected["no_settle_demo_0/images"])
    assert np.abs(expected["demo_0/states"] - expected["no_settle_demo_0/states"]).max() > 1e-3

    # The RLDS dataset holds the kept steps (JPEG-compressed frames, exact actions).
    read_back = (
        "import sys, numpy as np, tensorflow_datasets as tfds\n"
        f"builder = tfds.builder_from_directory({str(data_root / 'libero_spatial_no_noops/1.0.0')!r})\n"
        "episode = next(iter(builder.as_dataset(split='train')))\n"
        "steps = list(episode['steps'].as_numpy_iterator())\n"
        f"expected = np.load({str(expected_path)!r})\n"
        "images = np.stack([s['observation']['image'] for s in steps]).astype(float)\n"
        "print(len(steps), np.abs(np.stack([s['action'] for s in steps]) - expected['actions']).max(),"
        " min(np.abs(images - expected[f'demo_{i}/images']).mean() for i in range(2)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", read_back], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    num_steps, action_error, image_error = result.stdout.split()
    assert int(num_steps) == 4 and float(action_error) == 0.0 and float(image_error) < 3.0


def test_a_demo_that_fails_on_replay_is_dropped_and_a_rerun_resumes(recorded_demo, kept_failed_run, tmp_path):
    """Resumes from the replays of the run that kept the failed demos: what a replay records does not depend on
    --keep_failed, only what is written afterwards does."""
    hdf5_path, expected_path = recorded_demo
    work_dir = Path(shutil.copytree(kept_failed_run[1], tmp_path / "replays"))  # modification times kept
    saved = work_dir / "task0_demo--demo_0.npz"
    modified = saved.stat().st_mtime_ns
    result = _regenerate(hdf5_path.parent, tmp_path / "data", work_dir)  # resumes: nothing is replayed again
    assert result.returncode == 0, result.stderr[-4000:]
    assert "2 demos replayed: 0 kept, 2 failed (dropped)" in result.stdout
    assert "No demo kept: no dataset written." in result.stdout
    assert not (tmp_path / "data" / "libero_spatial_no_noops").exists()
    assert saved.stat().st_mtime_ns == modified
    (work_dir / "task0_demo--demo_1.npz").unlink()  # interrupted before demo 1: it resumes after the first reset
    rerun = _regenerate(hdf5_path.parent, tmp_path / "data", work_dir)
    assert rerun.returncode == 0 and saved.stat().st_mtime_ns == modified
    resumed = np.load(work_dir / "task0_demo--demo_1.npz")
    np.testing.assert_array_equal(resumed["images"], np.load(expected_path)["demo_1/images"])
