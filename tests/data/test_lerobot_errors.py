"""Bad LeRobot input stops before anything is written, with one line naming the file and key and what was expected."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prismatic.util.cli import UserError
from prismatic.vla.datasets.lerobot import LeRobotMapping
from prismatic.vla.datasets.lerobot_dataset import LeRobotConfig, LeRobotDataset

FIXTURES = Path(__file__).resolve().parent / "lerobot_fixtures"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _edit_info(key: str, value: object) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        info_path = root / "meta/info.json"
        info = json.loads(info_path.read_text())
        node = info
        *parents, last = key.split("/")
        for part in parents:
            node = node[part]
        node[last] = value
        info_path.write_text(json.dumps(info))

    return edit


def _overwrite(relative: str) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        (root / relative).write_bytes(b"this is not the expected file format" * 8)

    return corrupt


def _truncate(relative: str, keep: float) -> Callable[[Path], None]:
    """Cuts a copied video (or file) to its first ``keep`` share of bytes, as an interrupted download does."""

    def cut(root: Path) -> None:
        data = (root / relative).read_bytes()
        (root / relative).write_bytes(data[: int(len(data) * keep)])

    return cut


def _set_action(data_file: str, row: int, dimension: int, value: float) -> Callable[[Path], None]:
    """Writes ``value`` into one cell of the ``action`` column of a copied parquet file."""

    def edit(root: Path) -> None:
        table = pq.read_table(root / data_file)
        actions = table.column("action").to_pylist()
        actions[row][dimension] = value
        column = pa.array(actions, type=table.schema.field("action").type)
        pq.write_table(table.set_column(table.schema.get_field_index("action"), "action", column), root / data_file)

    return edit


CASES = {
    "unsupported version": (
        "libero_like_v21",
        _edit_info("codebase_version", "v2.0"),
        {},
        ["meta/info.json", "codebase_version 'v2.0'", "v2.1", "v3.0"],
    ),
    "missing feature": (
        "libero_like_v30",
        lambda root: None,
        {"mapping": LeRobotMapping(state_key="observation.joint_state")},
        ["meta/info.json", "'observation.joint_state'", "--lerobot_state_key", "observation.state"],
    ),
    "unknown camera": (
        "aloha_like_v21",
        lambda root: None,
        {"mapping": LeRobotMapping(camera_keys=("observation.images.cam_low",))},
        ["meta/info.json", "'observation.images.cam_low'", "--lerobot_camera_keys", "observation.images.cam_high"],
    ),
    "mismatched dims": (
        "libero_like_v30",
        _edit_info("features/action/shape", [6]),
        {},
        ["file-000.parquet", "'action'", "[7]", "shape [6]"],
    ),
    "too many cameras": (
        "libero_like_v21",
        lambda root: None,
        {"num_images_in_input": 3},
        ["--num_images_in_input 3", "libero_like_v21", "expected 1..2"],
    ),
    "unreadable video": (
        "libero_like_v21",
        _overwrite("videos/chunk-000/observation.images.wrist_image/episode_000002.mp4"),
        {},
        ["observation.images.wrist_image/episode_000002.mp4", "unreadable video"],
    ),
    # The container opens (its index is at the front); the frames of the last episode are gone.
    "truncated concatenated video": (
        "libero_like_v30",
        _truncate("videos/observation.images.image/chunk-000/file-000.mp4", 0.7),
        {},
        ["observation.images.image/chunk-000/file-000.mp4", "5.900 s", "episode 3", "complete video"],
    ),
    "truncated episode video": (
        "libero_like_v21",
        _truncate("videos/chunk-000/observation.images.wrist_image/episode_000002.mp4", 0.8),
        {},
        ["observation.images.wrist_image/episode_000002.mp4", "1.100 s", "episode 2", "complete video"],
    ),
    "nan action": (
        "libero_like_v21",
        _set_action("data/chunk-000/episode_000003.parquet", 5, 2, float("nan")),
        {},
        ["data/chunk-000/episode_000003.parquet", "column 'action' of episode 3, frame 5 (dimension 2) is nan"],
    ),
    "infinite action": (
        "libero_like_v30",
        _set_action("data/chunk-000/file-000.parquet", 20, 0, float("-inf")),
        {},
        ["data/chunk-000/file-000.parquet", "column 'action' of episode 1, frame 6 (dimension 0) is -inf"],
    ),
    "data_path leaving the dataset": (
        "libero_like_v21",
        _edit_info("data_path", "../elsewhere/episode_{episode_index:06d}.parquet"),
        {},
        ["meta/info.json", "data_path gives '../elsewhere/episode_000000.parquet'", "leaves the dataset folder"],
    ),
    "absolute video_path": (
        "libero_like_v30",
        _edit_info("video_path", "/etc/{video_key}/{chunk_index}-{file_index}.mp4"),
        {},
        ["meta/info.json", "video_path gives '/etc/observation.images.image/0-0.mp4'", "leaves the dataset folder"],
    ),
    "info without data_path": (
        "libero_like_v30",
        _edit_info("data_path", None),
        {},
        ["meta: malformed LeRobot metadata", "NoneType", "LeRobot v2.1 or v3.0"],
    ),
    "unknown placeholder": (
        "libero_like_v21",
        _edit_info("data_path", "data/{chunk}/episode_{episode_index:06d}.parquet"),
        {},
        ["meta: malformed LeRobot metadata (missing key 'chunk')"],
    ),
    "episode without length": (
        "libero_like_v21",
        lambda root: (root / "meta/episodes.jsonl").write_text('{"episode_index": 0, "tasks": ["x"]}\n'),
        {},
        ["meta: malformed LeRobot metadata (missing key 'length')"],
    ),
    "fps not a number": (
        "aloha_like_v21",
        _edit_info("fps", "fast"),
        {"num_images_in_input": 3},
        ["meta: malformed LeRobot metadata", "could not convert string to float: 'fast'"],
    ),
    "features not a map": (
        "libero_like_v21",
        _edit_info("features", [1, 2]),
        {},
        ["meta: malformed LeRobot metadata", "'list' object has no attribute 'items'"],
    ),
    "unreadable parquet": (
        "aloha_like_v30",
        _overwrite("data/chunk-000/file-000.parquet"),
        {"num_images_in_input": 3},
        ["data/chunk-000/file-000.parquet", "unreadable parquet"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_raises_one_line_naming_file_and_key_and_writes_nothing(tmp_path, case):
    name, damage, overrides, expected_parts = CASES[case]
    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root)
    damage(root)
    before = _tree_digest(root)
    with pytest.raises(UserError) as error:
        LeRobotDataset(LeRobotConfig(tmp_path, name, **overrides), batch_transform=lambda frame: frame)
    message = str(error.value)
    assert "\n" not in message
    for part in expected_parts:
        assert part in message, f"{part!r} not in {message!r}"
    assert _tree_digest(root) == before  # nothing damaged, no statistics cache written


def test_training_cli_stops_with_the_one_line_error_before_creating_the_run(tmp_path):
    shutil.copytree(FIXTURES / "libero_like_v21", tmp_path / "data" / "libero_like_v21")
    flags = [
        f"--data_root_dir={tmp_path / 'data'}",
        "--dataset_name=libero_like_v21",
        f"--run_root_dir={tmp_path / 'runs'}",
        "--lerobot_camera_keys=observation.images.top",
        "--vla_path=unused",
        "--use_wandb=False",
    ]
    env = {**os.environ, "USE_TF": "0", "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "vla-scripts" / "finetune.py"), *flags],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "'observation.images.top'" in error_lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()
