"""The look-up and the breakages of the closed-loop regression check, without the simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.robot.libero.nearest_neighbour_policy import BREAKAGES, FrameTable, break_request, image_features

STATS = {"q01": [-0.25] * 6 + [0.0], "q99": [0.25] * 6 + [1.0], "mask": [True] * 6 + [False]}  # normalise: 4 x


def test_table_round_trip_and_nearest_frame(tmp_path: Path) -> None:
    pixel_values = torch.zeros(3, 12, 224, 224)
    pixel_values[1, :3] = 1.0  # frame 1: a bright first view of the third-person camera
    pixel_values[2, 6:9] = 1.0  # frame 2: a bright first view of the wrist camera
    features = image_features(pixel_values, 4)
    assert features.shape == (3, 2 * 3 * 16) and features[1, :48].min() == 1.0 and features[1, 48:].max() == 0.0
    actions = np.arange(3 * 8 * 7, dtype=np.float32).reshape(3, 8, 7) / 200
    FrameTable(features, np.zeros((3, 8), np.float32), actions).save(tmp_path / "table.npz")
    table = FrameTable.load(tmp_path / "table.npz")
    assert table.pooled_size == 4 and np.allclose(table.actions, actions, atol=1e-3)
    assert [table.nearest(features[index], np.zeros(8)) for index in range(3)] == [0, 1, 2]


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_each_breakage_changes_one_link(breakage: str) -> None:
    seen = {}
    chunk = np.linspace(-0.5, 0.5, 8 * 7).reshape(8, 7)
    chunk[:, -1] = 1.0  # open

    def request(observation: dict[str, np.ndarray]) -> np.ndarray:
        seen.update(observation)
        return chunk

    full, wrist = np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8)
    full[0, 0], wrist[0, 1] = 255, 255
    result = break_request(request, breakage, STATS)({"full_image": full, "wrist_image": wrist, "state": np.ones(8)})
    expected_full, expected_wrist, expected_chunk = full, wrist, chunk
    if breakage == "image_orientation":
        expected_full, expected_wrist = full[::-1, ::-1], wrist[::-1, ::-1]
    if breakage == "camera_order":
        expected_full, expected_wrist = wrist, full
    if breakage == "gripper":
        expected_chunk = np.concatenate([chunk[:, :-1], np.zeros((8, 1))], axis=1)
    if breakage == "normalisation":
        expected_chunk = np.concatenate([np.clip(4 * chunk[:, :-1], -1, 1), chunk[:, -1:]], axis=1)
    if breakage == "chunk_order":
        expected_chunk = chunk[::-1]
    assert np.array_equal(seen["full_image"], expected_full) and np.array_equal(seen["wrist_image"], expected_wrist)
    assert np.allclose(result, expected_chunk)
