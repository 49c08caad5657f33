"""A folder of good and broken inputs for every CLI (tiny checkpoints, a synthetic dataset, runs, adapters), built
once, and a helper that runs many CLI cases in one subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import draccus
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForVision2Seq

from prismatic.policy.base_model_record import base_model_record, write_base_model_record
from prismatic.probing.data import META_NAME, scene_path
from prismatic.testing.probe_data import SCENES, write_probe_folder, write_scene_arrays
from prismatic.testing.tiny_checkpoints import tiny_finetune_flags, write_tiny_base_checkpoints
from prismatic.testing.tiny_vla import save_tiny_vla_checkpoint
from prismatic.training.alignment import spatial_forcing_record
from prismatic.training.config import AlignFinetuneConfig
from prismatic.training.lora import apply_lora
from prismatic.training.run_guard import CONTENT_KEY, content_digests, flags_as_dict
from prismatic.training.training_family import training_policy_config
from prismatic.util.checkpoint_files import TRAINING_CONFIG_NAME
from prismatic.vla.constants import constants_for
from prismatic.vla.policy_config import write_policy_config
from vggt.loading import save_vggt_weights
from vggt.models.vggt import VGGT
from vggt.presets import tiny_vggt_kwargs

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).resolve().parent / "case_runner.py"
DATASET_NAME = "libero_spatial_no_noops"
NORM_STATS = {
    DATASET_NAME: {
        "action": {"q01": [-0.5] * 7, "q99": [0.5] * 7, "min": [-1.0] * 7, "max": [1.0] * 7, "mask": [True] * 7},
        "proprio": {"q01": [-1.0] * 8, "q99": [1.0] * 8, "min": [-1.0] * 8, "max": [1.0] * 8},
    }
}
LEROBOT_FIXTURES = REPO_ROOT / "tests" / "data" / "lerobot_fixtures"
CLI_ENV = {"USE_TF": "0", "WANDB_MODE": "disabled", "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}
# Damaged copies of a LeRobot fixture: name -> (fixture, info.json keys replaced, episodes.jsonl text or None).
LEROBOT_DAMAGE = {
    "lerobot_escape": (
        "libero_like_v21",
        {"data_path": "../../{episode_chunk}/episode_{episode_index:06d}.parquet"},
        None,
    ),
    "lerobot_no_data_path": ("libero_like_v30", {"data_path": None}, None),
    "lerobot_fps_text": ("libero_like_v21", {"fps": "fast"}, None),
    "lerobot_no_length": ("libero_like_v21", {}, '{"episode_index": 0, "tasks": ["x"]}\n'),
}


class RunsCodeWhenUnpickled:
    """A pickle that names ``os.system``: what a crafted weights file holds."""

    def __reduce__(self):
        return (os.system, ("true",))


def _write_damaged_lerobot(root: Path) -> None:
    for name, (fixture, info_changes, episodes) in LEROBOT_DAMAGE.items():
        folder = copy_tree(LEROBOT_FIXTURES / fixture, root / name)
        info_path = folder / "meta" / "info.json"
        info_path.write_text(json.dumps({**json.loads(info_path.read_text()), **info_changes}))
        if episodes is not None:
            (folder / "meta" / "episodes.jsonl").write_text(episodes)


def _write_damaged_probe_data(root: Path) -> None:
    meta_path = write_probe_folder(root / "probe_no_scenes") / META_NAME
    meta_path.write_text(json.dumps({k: v for k, v in json.loads(meta_path.read_text()).items() if k != "scenes"}))
    meta_path = write_probe_folder(root / "probe_escape") / META_NAME
    meta = json.loads(meta_path.read_text())
    meta["scenes"][0]["name"] = "../../outside"
    meta_path.write_text(json.dumps(meta))
    nan_view = np.stack([np.ones((8, 8)), np.full((8, 8), np.nan)]).astype(np.float32)
    write_scene_arrays(write_probe_folder(root / "probe_nan_depth"), SCENES[1], depth=nan_view)
    scene_path(write_probe_folder(root / "probe_corrupt_scene"), SCENES[0].name).write_text("not an npz")


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def copy_tree(source: Path, target: Path) -> Path:
    return Path(shutil.copytree(source, target))


@dataclass
class CliWorld:
    """Paths of the prepared inputs."""

    root: Path
    base: Path  # tiny OpenVLA base
    other_base: Path  # same shapes, other weights
    vggt: Path
    data: Path
    runs: Path  # holds run "r1" with a checkpoint at step 2, its metrics and saved flags
    adapter_checkpoint: Path  # LoRA-only checkpoint recorded against `base`, with earlier merged weights
    eval_checkpoint: Path  # merged checkpoint with heads and statistics

    def train_flags(self, **overrides: object) -> list[str]:
        defaults = tiny_finetune_flags(self.base, self.vggt, self.data, self.runs, DATASET_NAME)
        flags = dict(flag[2:].split("=", 1) for flag in defaults) | {"run_id_override": "fresh"}
        flags |= {name: str(value) for name, value in overrides.items()}
        return [f"--{name}={value}" for name, value in flags.items()]


def _write_adapter_checkpoint(folder: Path, base: Path) -> Path:
    save_tiny_vla_checkpoint(folder, seed=1, norm_stats=NORM_STATS, with_heads=True)
    peft_model = apply_lora(AutoModelForVision2Seq.from_pretrained(base, dtype=torch.float32), 4, 0.0)
    peft_model.save_pretrained(folder / "lora_adapter")
    adapter_config = folder / "lora_adapter" / "adapter_config.json"
    adapter_config.write_text(
        json.dumps({**json.loads(adapter_config.read_text()), "base_model_name_or_path": str(base)})
    )
    write_base_model_record(folder, base_model_record(base))
    return folder


def _write_statistics_cache(builder_dir: Path, content: str) -> Path:
    from prismatic.vla.datasets.rlds import _statistics_cache_key
    from prismatic.vla.datasets.tf_runtime import import_tensorflow_datasets

    builder = import_tensorflow_datasets().builder_from_directory(str(builder_dir))
    path = builder_dir / f"dataset_statistics_{_statistics_cache_key(builder)}.json"
    path.write_text(content)
    return path


@pytest.fixture(scope="session")
def cli_world(tmp_path_factory: pytest.TempPathFactory) -> CliWorld:
    from prismatic.vla.datasets.synthetic import SyntheticLiberoConfig, write_synthetic_libero

    root = tmp_path_factory.mktemp("cli")
    base, vggt = write_tiny_base_checkpoints(root / "ckpts")
    other_base = save_tiny_vla_checkpoint(root / "ckpts" / "other-openvla", seed=1)
    data = root / "data"
    write_synthetic_libero(
        SyntheticLiberoConfig(data_root_dir=data, dataset_name=DATASET_NAME, num_episodes=2, episode_length=8)
    )
    runs = root / "runs"
    world = CliWorld(
        root, base, other_base, vggt, data, runs, root / "adapter" / "run--2_chkpt", root / "eval" / "ckpt"
    )

    # An earlier run "r1": checkpoint at step 2 (recorded base), metrics, saved flags.
    checkpoint = runs / "r1--2_chkpt"
    checkpoint.mkdir(parents=True)
    torch.save({"step": 2}, checkpoint / "training_state--2_checkpoint.pt")
    write_base_model_record(checkpoint, base_model_record(base))
    (runs / "r1").mkdir()
    (runs / "r1" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n')
    saved = draccus.parse(AlignFinetuneConfig, args=world.train_flags(run_id_override="r1"))
    record = {**flags_as_dict(saved), CONTENT_KEY: content_digests(saved)}
    (runs / "r1" / TRAINING_CONFIG_NAME).write_text(json.dumps(record))
    # A run "r3" that saves latest-only: its checkpoint (step 3) in the run folder itself.
    (runs / "r3").mkdir()
    torch.save({"step": 3}, runs / "r3" / "training_state--latest_checkpoint.pt")
    write_base_model_record(runs / "r3", base_model_record(base))
    saved_r3 = draccus.parse(AlignFinetuneConfig, args=world.train_flags(run_id_override="r3"))
    (runs / "r3" / TRAINING_CONFIG_NAME).write_text(
        json.dumps({**flags_as_dict(saved_r3), CONTENT_KEY: content_digests(saved_r3)})
    )
    # A run "r2" without training_config.json: its checkpoint's policy_config.json records what the policy is.
    r2_policy = training_policy_config(saved, constants_for(DATASET_NAME))
    widths = {"vla_dim": 64, "vggt_dim": 64, "vggt_patch_size": 14}  # no check reads them
    r2_policy.spatial_forcing = spatial_forcing_record(saved, saved.align_config(**widths))
    write_policy_config(Path(shutil.copytree(checkpoint, runs / "r2--2_chkpt")), r2_policy)
    # What a resumed run must not swap in under a path: other data, another teacher.
    write_synthetic_libero(
        SyntheticLiberoConfig(
            data_root_dir=root / "other_data", dataset_name=DATASET_NAME, num_episodes=2, episode_length=8, seed=1
        )
    )
    torch.manual_seed(1)
    save_vggt_weights(VGGT(**tiny_vggt_kwargs()), root / "other_vggt.pt")

    adapter_checkpoint = _write_adapter_checkpoint(world.adapter_checkpoint, base)
    save_tiny_vla_checkpoint(world.eval_checkpoint, seed=2, norm_stats=NORM_STATS, with_heads=True)

    # Broken copies.
    truncate(next(copy_tree(base, root / "broken" / "vla_truncated").glob("model-00002-*.safetensors")))
    (copy_tree(base, root / "broken" / "vla_bad_config") / "config.json").write_text('{"text_config": ')
    (root / "broken" / "vggt_text.pt").write_text("this is a text file, not VGGT weights\n")
    truncate(Path(shutil.copy(vggt, root / "broken" / "vggt_truncated.pt")))
    (root / "broken" / "a_file").write_text("not a folder\n")
    truncate(
        copy_tree(adapter_checkpoint, root / "broken" / "adapter_truncated")
        / "lora_adapter"
        / "adapter_model.safetensors"
    )
    truncate(next(copy_tree(adapter_checkpoint, root / "broken" / "head_truncated").glob("action_head--*")))
    (copy_tree(adapter_checkpoint, root / "broken" / "stats_corrupt") / "dataset_statistics.json").write_text("{")
    truncate(next(copy_tree(world.eval_checkpoint, root / "broken" / "eval_head_truncated").glob("action_head--*")))
    no_stats = copy_tree(world.eval_checkpoint, root / "broken" / "eval_no_stats")
    (no_stats / "dataset_statistics.json").unlink()
    config = json.loads((no_stats / "config.json").read_text())
    (no_stats / "config.json").write_text(json.dumps({key: v for key, v in config.items() if key != "norm_stats"}))
    lora_only = copy_tree(adapter_checkpoint, root / "broken" / "eval_lora_other_base")
    for merged in [*lora_only.glob("model*.safetensors*"), lora_only / "config.json"]:
        merged.unlink()
    adapter_config = lora_only / "lora_adapter" / "adapter_config.json"
    adapter_config.write_text(
        json.dumps({**json.loads(adapter_config.read_text()), "base_model_name_or_path": str(other_base)})
    )
    (root / "broken" / "states_corrupt.json").write_text('{"task": [1, 2')
    truncate(  # its index is at the front: the container opens, the last episode's frames are gone
        copy_tree(LEROBOT_FIXTURES / "libero_like_v30", root / "lerobot_truncated" / "libero_like_v30")
        / "videos/observation.images.image/chunk-000/file-000.mp4",
        keep=0.7,
    )
    nan_state = copy_tree(LEROBOT_FIXTURES / "libero_like_v21", root / "lerobot_nan" / "libero_like_v21")
    table = pq.read_table(nan_state / "data/chunk-000/episode_000001.parquet")
    states = table.column("observation.state").to_pylist()
    states[4][7] = float("nan")
    column = pa.array(states, type=table.schema.field("observation.state").type)
    table = table.set_column(table.schema.get_field_index("observation.state"), "observation.state", column)
    pq.write_table(table, nan_state / "data/chunk-000/episode_000001.parquet")
    torch.save(RunsCodeWhenUnpickled(), root / "broken" / "vggt_pickle.pt")
    (root / "rlds_empty" / DATASET_NAME).mkdir(parents=True)
    for shard in copy_tree(data, root / "rlds_no_tfrecords").rglob("*.tfrecord*"):
        shard.unlink()
    truncate(next(copy_tree(data, root / "rlds_truncated").rglob("*.tfrecord*")))
    (root / "hdf5_text").mkdir()
    (root / "hdf5_text" / "demo.hdf5").write_text("a text file, not HDF5\n")
    _write_damaged_lerobot(root / "lerobot")
    _write_damaged_probe_data(root)
    (root / "empty_dir").mkdir()
    corrupt_data = root / "corrupt_cache_data"
    shutil.copytree(data, corrupt_data)
    _write_statistics_cache(corrupt_data / DATASET_NAME / "1.0.0", '{"action": {"mean": [0.1, ')
    return world


def run_cases(cases: list[tuple[str, list[str]]], watched: Path, tmp_path: Path) -> list[dict]:
    """Runs ``(script, args)`` cases in one subprocess; returns per case ``code``, ``stderr`` and ``changed``."""
    cases_path, results_path = tmp_path / "cases.json", tmp_path / "results.json"
    cases_path.write_text(json.dumps([{"script": str(REPO_ROOT / script), "args": args} for script, args in cases]))
    env = {**os.environ, **CLI_ENV, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.run(
        [sys.executable, str(RUNNER), str(cases_path), str(results_path), str(watched)],
        capture_output=True,
        text=True,
        env=env,
        cwd=watched,
        timeout=600,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(results_path.read_text())


def run_script(script: str, args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """One CLI in its own process."""
    env = {**os.environ, **CLI_ENV, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )
