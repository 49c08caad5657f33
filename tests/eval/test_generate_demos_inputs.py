"""generate_libero_demos.py refuses bad input in one line with exit status 2, before writing anything."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from experiments.robot.libero import demo_generation
from experiments.robot.libero.demo_generation import DemoGenerationConfig, generate_demos
from prismatic.util.cli import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"task_suite_name": "libero_nowhere"}, "--task_suite_name 'libero_nowhere': expected one of"),
        ({"task_ids": [10]}, "--task_ids 10: expected ids in [0, 10) for libero_spatial"),
        (
            {"task_ids": [4]},
            "--task_ids 4: the oracle does not support libero_spatial task 4; supported: libero_spatial 0",
        ),
        ({"format": "hdf5"}, "--format 'hdf5': expected one of ('rlds', 'lerobot')"),
        ({"format": "lerobot", "with_depth": True}, "--with_depth True: expected --format rlds"),
        ({"format": "lerobot", "video_crf": 64}, "--video_crf 64: expected an AV1 quality in [0, 63]"),
    ],
)
def test_bad_suite_task_or_format_is_refused_before_writing(
    flags: dict, message: str, tmp_path: Path, libero_config_dir: Path
) -> None:
    cfg = DemoGenerationConfig(data_root_dir=tmp_path / "out", **flags)
    with pytest.raises(UserError, match="^" + re.escape(message)):
        generate_demos(cfg)
    assert not (tmp_path / "out").exists()


def test_folder_holding_another_tasks_demos_is_refused_and_kept(tmp_path: Path, libero_config_dir: Path) -> None:
    other = DemoGenerationConfig(data_root_dir=tmp_path, task_ids=[3])
    other.work_dir.mkdir(parents=True)
    (other.work_dir / demo_generation.MANIFEST).write_text(json.dumps(other.manifest()))
    (other.work_dir / "task03").mkdir()
    (other.work_dir / "task03" / "attempt00000.npz").write_bytes(b"an earlier run's demonstration")
    before = _files(tmp_path)
    with pytest.raises(UserError, match="holds demonstrations of other settings"):
        generate_demos(DemoGenerationConfig(data_root_dir=tmp_path, task_ids=[0]))
    assert _files(tmp_path) == before


def test_dataset_folder_not_written_by_the_tool_is_refused(tmp_path: Path, libero_config_dir: Path) -> None:
    (tmp_path / "libero_spatial_no_noops" / "1.0.0").mkdir(parents=True)
    with pytest.raises(UserError, match="was not written from"):
        generate_demos(DemoGenerationConfig(data_root_dir=tmp_path))
    assert not DemoGenerationConfig(data_root_dir=tmp_path).work_dir.exists()


def test_full_disk_is_refused_before_writing(tmp_path: Path, libero_config_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(demo_generation.shutil, "disk_usage", lambda path: SimpleNamespace(free=0))
    with pytest.raises(UserError, match=r"^--data_root_dir: 0 MiB free on .*; expected at least 800 MiB for 50"):
        generate_demos(DemoGenerationConfig(data_root_dir=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    env = {**os.environ, "USE_TF": "0", "PYTHONPATH": str(REPO_ROOT), "LIBERO_CONFIG_PATH": str(tmp_path / "libero")}
    command = [sys.executable, "vla-scripts/generate_libero_demos.py", "--task_ids", "[4]"]
    completed = subprocess.run(
        [*command, "--data_root_dir", str(tmp_path / "out")], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines()[-1].startswith("error: --task_ids 4: the oracle does not support")
    assert not (tmp_path / "out").exists()
