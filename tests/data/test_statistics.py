"""Dataset statistics: numpy-exact values, cached beside the data, upstream's dataset_statistics.json format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prismatic.vla.normalization import unnormalize
from prismatic.util.cli import UserError
from prismatic.vla.datasets import rlds
from prismatic.vla.datasets.registry import DATASETS
from prismatic.vla.datasets.statistics import (
    compute_statistics,
    load_dataset_statistics,
    read_statistics_cache,
    save_dataset_statistics,
    statistics_to_json,
)

SPEC = DATASETS["libero_spatial_no_noops"]


def test_statistics_equal_numpy_on_the_same_episodes(synthetic_dataset, expected_statistics, check_statistics):
    builder = rlds.open_builder(synthetic_dataset.builder_dir, SPEC, ("primary", "wrist"))
    statistics = rlds.get_dataset_statistics(builder, SPEC)
    check_statistics(statistics, expected_statistics)
    np.testing.assert_array_equal(statistics["action"]["mask"], [True] * 6 + [False])


def test_statistics_are_cached_beside_the_data(synthetic_dataset, expected_statistics, check_statistics, monkeypatch):
    builder = rlds.open_builder(synthetic_dataset.builder_dir, SPEC, ("primary", "wrist"))
    rlds.get_dataset_statistics(builder, SPEC)
    cache_files = list(synthetic_dataset.builder_dir.glob("dataset_statistics_*.json"))
    assert len(cache_files) == 1

    def fail(*args, **kwargs):
        raise AssertionError("statistics were recomputed although cached")

    monkeypatch.setattr(rlds, "_compute_builder_statistics", fail)
    check_statistics(rlds.get_dataset_statistics(builder, SPEC), expected_statistics)


def test_dataset_statistics_json_has_upstream_format_and_reloads(tmp_path, expected_statistics, check_statistics):
    path = save_dataset_statistics({"libero_spatial_no_noops": expected_statistics}, tmp_path)
    assert path == tmp_path / "dataset_statistics.json"
    raw = json.loads(path.read_text())
    entry = raw["libero_spatial_no_noops"]
    assert set(entry) == {"action", "proprio", "num_transitions", "num_trajectories"}
    assert set(entry["action"]) == {"mean", "std", "max", "min", "q01", "q99", "mask"}
    assert set(entry["proprio"]) == {"mean", "std", "max", "min", "q01", "q99"}
    assert entry["action"]["mask"] == [True] * 6 + [False] and len(entry["proprio"]["q99"]) == 8
    assert isinstance(entry["num_transitions"], int)
    check_statistics(load_dataset_statistics(path)["libero_spatial_no_noops"], expected_statistics)


def test_unnormalize_inverts_bounds_q99_on_masked_dims_only():
    stats = {"q01": np.array([-2.0, 0.0]), "q99": np.array([2.0, 1.0]), "mask": np.array([True, False])}
    normalized = np.array([[-1.0, 0.25], [0.5, 1.0]])
    np.testing.assert_allclose(unnormalize(normalized, stats, "bounds_q99"), [[-2.0, 0.25], [1.0, 1.0]], atol=1e-7)


def test_a_nan_in_the_data_stops_the_statistics_naming_column_episode_and_frame():
    actions = [np.zeros((5, 7)), np.zeros((4, 7))]
    proprios = [np.zeros((5, 8)), np.zeros((4, 8))]
    proprios[1][3, 6] = np.nan

    with pytest.raises(UserError) as error:
        compute_statistics(actions, proprios, where="dataset /data/libero_spatial_no_noops/1.0.0")

    assert str(error.value).startswith(
        "dataset /data/libero_spatial_no_noops/1.0.0: column 'proprio' of episode 1, frame 3 (dimension 6) is nan: "
    )


def test_a_statistics_cache_holding_nan_is_refused_naming_the_file(tmp_path):
    statistics = compute_statistics([np.ones((3, 7))], [np.ones((3, 8))])
    statistics["action"]["q99"][4] = np.nan
    path = tmp_path / "dataset_statistics_0123.json"
    path.write_text(json.dumps(statistics_to_json(statistics)))

    with pytest.raises(UserError, match=f"statistics cache {path}: action q99 holds NaN or infinity"):
        read_statistics_cache(path)
