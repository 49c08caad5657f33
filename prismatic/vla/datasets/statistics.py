"""Action/proprio statistics (``dataset_statistics.json``); the (un)normalisation they drive is
``prismatic.vla.normalization``.

In memory, statistics follow upstream: ``{dataset_name: {"action": {"mean", "std", "max", "min", "q01", "q99",
"mask"}, "proprio": {...same minus mask}, "num_transitions": int, "num_trajectories": int}}`` with numpy arrays;
on disk the arrays are JSON lists. They are computed over every transition of every episode (all splits) of the
standardised, un-normalised data, in float64: population std and linearly interpolated 1%/99% quantiles.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from prismatic.util.checkpoint_files import DATASET_STATISTICS_NAME
from prismatic.util.cli import UserError
from prismatic.util.file_checks import read_json_file
from prismatic.util.io import write_json_atomic

STAT_KEYS = ("mean", "std", "max", "min", "q01", "q99")


def first_non_finite(values: np.ndarray) -> tuple[int, int] | None:
    """(row, dimension) of the first NaN or infinity in ``values`` [N, D], or None when all are finite."""
    rows, dims = np.nonzero(~np.isfinite(values))
    return (int(rows[0]), int(dims[0])) if len(rows) else None


def non_finite_error(where: str, column: str, episode: int, frame: int, dimension: int, value: float) -> UserError:
    """The one-line error for a NaN/inf in the data, naming the file (or dataset), column, episode and frame."""
    return UserError(
        f"{where}: column {column!r} of episode {episode}, frame {frame} (dimension {dimension}) is {value}: expected "
        "finite numbers (one NaN makes the statistics, every loss and the served actions NaN); fix or drop that episode"
    )


def compute_statistics(
    actions: Iterable[np.ndarray], proprios: Iterable[np.ndarray], where: str = "the dataset"
) -> dict[str, Any]:
    """Statistics of per-episode arrays (``[T_i, action_dim]``, ``[T_i, proprio_dim]``), without the action mask.

    A NaN or infinity is a UserError naming ``where`` (the dataset), the column, the episode (in read order) and
    the frame.
    """
    action_list, proprio_list = list(actions), list(proprios)
    if not action_list:
        raise ValueError("Cannot compute dataset statistics of zero episodes.")
    for column, episodes in (("action", action_list), ("proprio", proprio_list)):
        for episode, values in enumerate(episodes):
            found = first_non_finite(values)
            if found is not None:
                raise non_finite_error(where, column, episode, *found, values[found])
    all_actions = np.concatenate(action_list).astype(np.float64)  # [N, action_dim]
    all_proprios = np.concatenate(proprio_list).astype(np.float64)  # [N, proprio_dim]
    return {
        "action": _array_statistics(all_actions),
        "proprio": _array_statistics(all_proprios),
        "num_transitions": int(all_actions.shape[0]),
        "num_trajectories": len(action_list),
    }


def _array_statistics(values: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "mean": values.mean(axis=0),
        "std": values.std(axis=0),
        "max": values.max(axis=0),
        "min": values.min(axis=0),
        "q01": np.quantile(values, 0.01, axis=0, method="linear"),
        "q99": np.quantile(values, 0.99, axis=0, method="linear"),
    }


def cached_statistics(candidates: list[Path], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Statistics read from the first existing cache file in ``candidates``, else computed and written to the first
    writable one (atomically). Shared by the RLDS and LeRobot readers."""
    for path in candidates:
        if path.is_file():
            return read_statistics_cache(path)
    statistics = compute()
    for path in candidates:
        try:
            write_json_atomic(path, statistics_to_json(statistics))
            return statistics
        except OSError:
            continue
    raise OSError(f"Cannot write the dataset statistics cache to any of {[str(path) for path in candidates]}.")


def statistics_to_json(statistics: Mapping[str, Any]) -> dict[str, Any]:
    """Nested statistics with numpy arrays/scalars -> plain JSON types (lists, floats, ints, bools)."""
    if isinstance(statistics, Mapping):
        return {key: statistics_to_json(value) for key, value in statistics.items()}
    if isinstance(statistics, np.ndarray):
        return statistics.tolist()
    if isinstance(statistics, np.generic):
        return statistics.item()
    return statistics


def statistics_from_json(statistics: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of ``statistics_to_json``: lists -> numpy arrays (``mask`` as bool, statistics as float64)."""
    converted: dict[str, Any] = {}
    for key, value in statistics.items():
        if isinstance(value, Mapping):
            converted[key] = statistics_from_json(value)
        elif isinstance(value, list):
            converted[key] = np.asarray(value, dtype=bool if key == "mask" else np.float64)
        else:
            converted[key] = value
    return converted


def save_dataset_statistics(dataset_statistics: Mapping[str, Any], out_path: str | Path) -> Path:
    """Writes ``{dataset_name: statistics}`` as upstream's ``dataset_statistics.json`` (atomically).

    ``out_path`` is the JSON file, or an existing directory (a run or checkpoint dir) to write
    ``dataset_statistics.json`` into, as upstream's ``save_dataset_statistics(stats, run_dir)`` does.
    """
    path = Path(out_path)
    if path.is_dir():
        path = path / DATASET_STATISTICS_NAME
    write_json_atomic(path, statistics_to_json(dataset_statistics))
    return path


def read_statistics_cache(path: str | Path) -> dict[str, Any]:
    """A statistics cache written by :func:`statistics_to_json`; a corrupt one is a UserError naming the file."""
    raw = read_json_file(path, "statistics cache")
    if not isinstance(raw, dict) or not all(isinstance(raw.get(group), dict) for group in ("action", "proprio")):
        raise UserError(
            f"statistics cache {path} lacks its action/proprio statistics: expected a complete cache (delete the file "
            "to recompute it)"
        )
    statistics = statistics_from_json(raw)
    for group in ("action", "proprio"):
        for key in STAT_KEYS:
            if key in statistics[group] and not np.isfinite(statistics[group][key]).all():
                raise UserError(
                    f"statistics cache {path}: {group} {key} holds NaN or infinity: expected finite statistics (delete "
                    "the file to recompute them, after fixing the data)"
                )
    return statistics


def load_dataset_statistics(path: str | Path) -> dict[str, Any]:
    """Reads a ``dataset_statistics.json`` into numpy arrays, checking each entry has the upstream keys."""
    path = Path(path)
    with open(path) as handle:
        raw = json.load(handle)
    for name, entry in raw.items():
        for group in ("action", "proprio"):
            missing = [key for key in STAT_KEYS if key not in entry.get(group, {})]
            if missing:
                raise KeyError(f"{path}: entry {name!r} lacks {group} statistics {missing}; expected keys {STAT_KEYS}.")
    return statistics_from_json(raw)
