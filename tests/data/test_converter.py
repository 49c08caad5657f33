"""LIBERO HDF5 -> RLDS conversion: upstream's no-op filter, 180-degree rotation, state layout, instructions."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from prismatic.vla.datasets.libero_hdf5 import convert_libero_hdf5, noop_mask
from prismatic.vla.datasets.registry import DATASETS
from prismatic.vla.datasets.rlds import open_builder
from prismatic.vla.datasets.tf_runtime import import_tensorflow, import_tensorflow_datasets

SOURCE_SIZE, TARGET_SIZE = 32, 64
QUADRANT_COLOURS = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], np.uint8)  # [row, col]


def quadrant_image(shade: int) -> np.ndarray:
    """A SOURCE_SIZE image whose four quadrants have distinct colours (darkened by ``shade``)."""
    half = SOURCE_SIZE // 2
    image = np.repeat(np.repeat(QUADRANT_COLOURS, half, axis=0), half, axis=1)
    return (image.astype(int) * (255 - shade) // 255).astype(np.uint8)


# Raw actions of one demo and which steps upstream's filter drops.
DEMO_ACTIONS = np.array(
    [
        [0, 0, 0, 0, 0, 0, -1],  # first step, no motion: no-op
        [0.2, 0, 0, 0, 0, 0, -1],  # motion: kept
        [0, 0, 0, 0, 0, 0, -1],  # no motion, gripper as at the last kept step: no-op
        [0, 0, 0, 0, 0, 0, 1],  # no motion but the gripper changes: kept
        [0, 0, 0, 0, 0, 0, 1],  # no-op
        [5e-5, 0, 0, 0, 0, 0, 1],  # motion below 1e-4: no-op
        [0, 0, 0.3, 0, 0.1, 0, 1],  # kept
    ],
    np.float32,
)
DEMO_KEPT = [1, 3, 6]


def test_noop_mask_follows_upstream_rule():
    np.testing.assert_array_equal(~noop_mask(DEMO_ACTIONS), np.isin(np.arange(7), DEMO_KEPT))


def write_libero_hdf5(path, instruction, num_demos: int) -> dict[str, dict[str, np.ndarray]]:
    """A robomimic-layout file like LIBERO's; returns the arrays of each demo."""
    rng = np.random.default_rng(len(instruction))
    demos = {}
    with h5py.File(path, "w") as hdf5_file:
        data = hdf5_file.create_group("data")
        data.attrs["problem_info"] = json.dumps({"problem_name": "test", "language_instruction": instruction})
        for index in range(num_demos):
            num_steps = len(DEMO_ACTIONS)
            arrays = {
                "actions": DEMO_ACTIONS,
                "obs/agentview_rgb": np.stack([quadrant_image(shade=10 * t) for t in range(num_steps)]),
                "obs/eye_in_hand_rgb": np.stack([quadrant_image(shade=100 + 10 * t) for t in range(num_steps)]),
                "obs/ee_states": rng.normal(size=(num_steps, 6)),
                "obs/gripper_states": rng.normal(size=(num_steps, 2)),
                "obs/joint_states": rng.normal(size=(num_steps, 7)),
            }
            for key, value in arrays.items():
                data.create_dataset(f"demo_{index}/{key}", data=value)
            demos[f"demo_{index}"] = arrays
    return demos


def test_converted_dataset_has_upstream_content(tmp_path):
    sources = {
        tmp_path / "put_the_bowl_on_the_plate_demo.hdf5": ("put the bowl on the plate", 2),
        tmp_path / "turn_on_the_stove_demo.hdf5": (list("turn on the stove"), 1),  # LIBERO's list-of-chars form
    }
    written = {path: write_libero_hdf5(path, instruction, n) for path, (instruction, n) in sources.items()}
    builder_dir = convert_libero_hdf5(list(sources), tmp_path / "rlds", "libero_goal_no_noops", image_size=TARGET_SIZE)

    spec = DATASETS["libero_goal_no_noops"]
    builder = open_builder(builder_dir, spec, ("primary", "wrist"))  # passes the reader's validation
    tf, tfds = import_tensorflow(), import_tensorflow_datasets()
    episodes = list(
        builder.as_dataset(split="train", decoders={"steps": tfds.decode.SkipDecoding()}).as_numpy_iterator()
    )
    assert len(episodes) == 3
    for episode in episodes:
        file_path = episode["episode_metadata"]["file_path"].decode()
        source_path, demo_name = file_path.rsplit("/data/", 1)
        demo = written[Path(source_path)][demo_name]
        steps = episode["steps"]
        np.testing.assert_array_equal(steps["action"], demo["actions"][DEMO_KEPT])
        expected_state = np.concatenate([demo["obs/ee_states"], demo["obs/gripper_states"]], axis=1)[DEMO_KEPT]
        np.testing.assert_allclose(steps["observation"]["state"], expected_state.astype(np.float32))
        np.testing.assert_allclose(
            steps["observation"]["joint_state"], demo["obs/joint_states"][DEMO_KEPT].astype(np.float32)
        )
        expected_instruction = "".join(sources[Path(source_path)][0])
        assert {s.decode() for s in steps["language_instruction"]} == {expected_instruction}
        for camera, raw_key in (("image", "obs/agentview_rgb"), ("wrist_image", "obs/eye_in_hand_rgb")):
            for stored, raw in zip(steps["observation"][camera], demo[raw_key][DEMO_KEPT], strict=True):
                decoded = tf.io.decode_jpeg(stored).numpy()
                assert decoded.shape == (TARGET_SIZE, TARGET_SIZE, 3)
                # Rotated by 180 degrees: each stored quadrant shows the colour of the opposite raw quadrant.
                for row, col in ((0, 0), (0, 1), (1, 0), (1, 1)):
                    stored_colour = decoded[quadrant_centre(row, TARGET_SIZE), quadrant_centre(col, TARGET_SIZE)]
                    raw_colour = raw[quadrant_centre(1 - row, SOURCE_SIZE), quadrant_centre(1 - col, SOURCE_SIZE)]
                    assert np.abs(stored_colour.astype(int) - raw_colour).max() <= 8


def quadrant_centre(index: int, size: int) -> int:
    return size // 4 + index * size // 2


def test_missing_problem_info_is_named(tmp_path):
    path = tmp_path / "broken_demo.hdf5"
    with h5py.File(path, "w") as hdf5_file:
        hdf5_file.create_group("data")
    with pytest.raises(KeyError, match=f"{path}: missing attribute data.attrs\\['problem_info'\\]"):
        convert_libero_hdf5([path], tmp_path / "rlds", "libero_goal_no_noops")
