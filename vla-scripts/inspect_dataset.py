"""Look at an RLDS or LeRobot dataset before training on it.

Prints the number of episodes and transitions, the action/proprio statistics (and writes them, keyed by dataset
name, in ``dataset_statistics.json`` format with ``--stats_out``), the keys, shapes and dtypes of collated
training batches, and saves a PNG grid of a few frames (every camera, with and without augmentation) captioned
with their instruction and normalised action chunk.

    python vla-scripts/inspect_dataset.py --data_root_dir data/libero --dataset_name libero_spatial_no_noops \
        --stats_out dataset_statistics.json --num_batches 2

A LeRobot folder (``<data_root_dir>/<dataset_name>/meta/info.json``, format v2.1 or v3.0) is read with the feature
mapping flags of training (``--lerobot_camera_keys``, ``--lerobot_state_key``, ``--lerobot_action_key``,
``--lerobot_gripper``, ``--num_actions_chunk``).

Without ``--vla_path`` batches are built with the offline tiny tokenizer and openvla-7b's image preprocessing
(same keys, shapes and dtypes as with the real processor; prompt token ids differ). With ``--vla_path`` (a
checkpoint folder holding the tokenizer and ``preprocessor_config.json``) the checkpoint's processor is used.
"""

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("USE_TF", "0")  # keep transformers from importing TensorFlow on its own

import draccus  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from prismatic.util.cli import UserError, run_cli, user_errors  # noqa: E402
from prismatic.util.file_checks import check_writable_dir  # noqa: E402
from prismatic.vla.action_tokenizer import ActionTokenizer  # noqa: E402
from prismatic.vla.datasets import (  # noqa: E402
    PaddedCollatorForActionPrediction,
    RLDSBatchTransform,
    RLDSConfig,
    RLDSDataset,
    save_dataset_statistics,
)
from prismatic.vla.datasets.lerobot import is_lerobot_dataset  # noqa: E402
from prismatic.vla.datasets.lerobot_dataset import (  # noqa: E402
    LeRobotConfig,
    LeRobotDataset,
    lerobot_input_flags,
    mapping_from_flags,
)
from prismatic.vla.datasets.pipeline import build_dataset  # noqa: E402
from prismatic.vla.datasets.registry import resolve_data_mix  # noqa: E402
from prismatic.vla.datasets.visualize import save_frame_grid  # noqa: E402


@dataclass
class InspectConfig:
    data_root_dir: Path = Path("data/libero")  # folder holding <dataset_name>/<version>/
    dataset_name: str = "libero_spatial_no_noops"  # dataset or mixture name
    stats_out: Path | None = None  # write dataset_statistics.json here
    num_batches: int = 1  # collated batches to build and describe
    batch_size: int = 8
    num_images_in_input: int | None = None  # cameras (default: what the data holds; LeRobot: the mapped ones)
    shuffle_buffer_size: int = 1_000
    num_preview_frames: int = 4  # rows of the PNG grid
    preview_out: Path | None = None  # default: ./inspect_<dataset_name>.png
    vla_path: Path | None = None  # checkpoint folder with tokenizer + preprocessor_config.json
    seed: int = 7
    # LeRobot datasets only: the feature mapping, as in training
    lerobot_camera_keys: str = ""  # comma-separated image features, primary first ("": all)
    lerobot_state_key: str = "observation.state"
    lerobot_action_key: str = "action"
    lerobot_gripper: str = "none"  # none | libero (the last action dim is LIBERO's gripper)
    num_actions_chunk: int = 8


def load_processing(vla_path: Path | None) -> tuple[Any, Any]:
    """(tokenizer, image processor) of a checkpoint folder, or the tiny tokenizer + openvla-7b preprocessing."""
    from prismatic.models.processing_prismatic import PrismaticImageProcessor

    if vla_path is not None:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(vla_path), PrismaticImageProcessor.from_pretrained(vla_path)
    from prismatic.models.presets import openvla_7b_config
    from prismatic.testing.tokenizer import build_tiny_tokenizer

    return build_tiny_tokenizer(), PrismaticImageProcessor.from_vla_config(openvla_7b_config())


def describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {value.dtype}"
    if isinstance(value, list):
        return f"list[{len(value)}] of {type(value[0]).__name__}"
    return repr(value)


def inspect_dataset(cfg: InspectConfig) -> dict[str, Any]:
    """Runs the inspection; returns the statistics and the first collated batch."""
    lerobot = is_lerobot_dataset(cfg.data_root_dir, cfg.dataset_name)
    if cfg.num_images_in_input is None:  # as training: every camera the data holds
        held = lerobot_input_flags(cfg) if lerobot else {"num_images_in_input": _rlds_num_cameras(cfg.dataset_name)}
        cfg = replace(cfg, num_images_in_input=held["num_images_in_input"])
        print(f"--num_images_in_input {cfg.num_images_in_input} (what the data holds)")
    tokenizer, image_processor = load_processing(cfg.vla_path)
    batch_transform = RLDSBatchTransform(
        ActionTokenizer(tokenizer),
        tokenizer,
        image_processor.apply_transform,
        use_wrist_image=cfg.num_images_in_input > 1,
        use_proprio=True,
    )
    if lerobot:
        data_config = LeRobotConfig(
            data_root_dir=cfg.data_root_dir,
            dataset_name=cfg.dataset_name,
            mapping=mapping_from_flags(cfg),
            num_actions_chunk=cfg.num_actions_chunk,
            num_images_in_input=cfg.num_images_in_input,
            seed=cfg.seed,
        )
        dataset = LeRobotDataset(data_config, batch_transform)
    else:
        data_config = RLDSConfig(
            data_root_dir=cfg.data_root_dir,
            data_mix=cfg.dataset_name,
            shuffle_buffer_size=cfg.shuffle_buffer_size,
            num_images_in_input=cfg.num_images_in_input,
            seed=cfg.seed,
        )
        dataset = RLDSDataset(data_config, batch_transform)

    np.set_printoptions(precision=4, suppress=True, linewidth=120)
    for name, statistics in dataset.dataset_statistics.items():
        print(f"== {name}: {statistics['num_trajectories']} episodes, {statistics['num_transitions']} transitions")
        for group in ("action", "proprio"):
            for key, value in statistics[group].items():
                print(f"  {group:>7s}.{key:<4s} {value}")
    if cfg.stats_out is not None:
        print(f"Statistics written to {save_dataset_statistics(dataset.dataset_statistics, cfg.stats_out)}")

    collator = PaddedCollatorForActionPrediction(tokenizer.model_max_length, tokenizer.pad_token_id)
    loader = iter(DataLoader(dataset, batch_size=cfg.batch_size, collate_fn=collator, num_workers=0))
    first_batch = None
    for index in range(cfg.num_batches):
        start = time.perf_counter()
        batch = next(loader)
        print(f"batch {index}: built in {time.perf_counter() - start:.2f} s")
        if index == 0:
            first_batch = batch
            for key, value in batch.items():
                print(f"  {key:<15s} {describe(value)}")

    # Same seed, so both pipelines yield the same frames in the same order; only the augmentation differs.
    num_frames = cfg.num_preview_frames
    plain = _take(dataset.iter_frames(), num_frames)
    augmented_config = replace(data_config, image_aug=True)
    if lerobot:
        augmented = _take(LeRobotDataset(augmented_config, batch_transform).iter_frames(), num_frames)
    else:
        augmented_stream = build_dataset(augmented_config, dataset.sources, dataset.rank, dataset.world_size)
        augmented = _take(augmented_stream.as_numpy_iterator(), num_frames)
    preview_out = cfg.preview_out or Path(f"inspect_{cfg.dataset_name}.png")
    print(f"Preview of {num_frames} frames saved to {save_frame_grid(plain, augmented, preview_out)}")
    return {"dataset_statistics": dataset.dataset_statistics, "batch": first_batch}


def _rlds_num_cameras(dataset_name: str) -> int:
    with user_errors():
        return min(len(spec.image_obs_keys) for spec, _ in resolve_data_mix(dataset_name))


def _take(iterator: Any, count: int) -> list[Any]:
    return [frame for frame, _ in zip(iterator, range(count), strict=False)]


def check_config(cfg: InspectConfig) -> None:
    """Every flag and the folders it names, before the dataset is opened or anything written."""
    for flag in ("num_batches", "batch_size", "num_images_in_input", "shuffle_buffer_size", "num_preview_frames"):
        if getattr(cfg, flag) is not None and getattr(cfg, flag) < 1:
            raise UserError(f"--{flag} {getattr(cfg, flag)}: expected a positive integer")
    # A LeRobot folder is checked when it is opened (before anything is written); RLDS names must be registered.
    specs = [] if is_lerobot_dataset(cfg.data_root_dir, cfg.dataset_name) else None
    if specs is None:
        with user_errors():
            specs = resolve_data_mix(cfg.dataset_name)
    for spec, _ in specs:
        if not (cfg.data_root_dir / spec.name).is_dir():
            raise UserError(
                f"--data_root_dir {cfg.data_root_dir}: no dataset folder {spec.name}/ there: expected "
                f"{spec.name}/<version>/*.tfrecord* (e.g. from make_synthetic_libero.py or convert_libero_hdf5.py)"
            )
    if cfg.vla_path is not None and not (cfg.vla_path / "preprocessor_config.json").is_file():
        raise UserError(f"--vla_path {cfg.vla_path}: no preprocessor_config.json there: expected a checkpoint folder")
    if cfg.stats_out is not None:
        check_writable_dir(cfg.stats_out.parent, "--stats_out")
    check_writable_dir((cfg.preview_out or Path(".")).parent, "--preview_out")


@draccus.wrap()
def main(cfg: InspectConfig) -> None:
    check_config(cfg)
    inspect_dataset(cfg)


if __name__ == "__main__":
    run_cli(main)
