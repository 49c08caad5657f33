"""The per-episode JSONL store (append, reload, crash recovery), success-rate summaries and the bar chart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments.robot.results import (
    EpisodeResult,
    EpisodeStore,
    plot_success_rates,
    summarize,
    summary_payload,
    total_success_rate,
)
from prismatic.util.io import write_json_atomic


def make_result(task_id: int, episode: int, success: bool) -> EpisodeResult:
    return EpisodeResult(
        suite="libero_spatial",
        task_id=task_id,
        task=f"task number {task_id}",
        episode=episode,
        success=success,
        steps=17 + episode,
        seconds=1.5,
        final_state=(0.1, -0.2, 1.0 / 3.0),
    )


def test_store_reloads_appended_episodes_identically(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "run.jsonl")
    results = [make_result(0, 0, True), make_result(0, 1, False), make_result(3, 0, True)]
    for result in results:
        store.append(result)
    assert store.load() == results
    first_line = json.loads((tmp_path / "run.jsonl").read_text().splitlines()[0])
    assert {"suite", "task_id", "task", "episode", "success", "steps", "seconds"} <= set(first_line)


def test_store_drops_a_torn_last_line_and_keeps_appending(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    store = EpisodeStore(path)
    store.append(make_result(0, 0, True))
    with open(path, "a") as file:  # a crash in the middle of writing the next record
        file.write(make_result(0, 1, False).to_json()[:25])
    assert store.load() == [make_result(0, 0, True)]
    assert path.read_text().endswith("\n")
    store.append(make_result(0, 1, False))
    assert [result.key for result in store.load()] == [(0, 0), (0, 1)]


def test_store_names_file_and_line_of_a_corrupt_record(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text(make_result(0, 0, True).to_json() + "\n" + '{"not": "an episode"}\n')
    with pytest.raises(ValueError, match=r"run\.jsonl:2: not an episode record"):
        EpisodeStore(path).load()


def test_missing_store_is_empty(tmp_path: Path) -> None:
    assert EpisodeStore(tmp_path / "absent.jsonl").load() == []


def test_summaries_count_per_task_and_in_total() -> None:
    results = [make_result(2, 0, True), make_result(0, 0, True), make_result(0, 1, False), make_result(2, 1, True)]
    summaries = summarize(results)
    assert [(s.task_id, s.episodes, s.successes) for s in summaries] == [(0, 2, 1), (2, 2, 2)]
    assert summaries[0].success_rate == 0.5
    assert total_success_rate(summaries) == (4, 3, 0.75)
    payload = summary_payload("libero_spatial", "run-a", summaries)
    assert payload["total"] == {"episodes": 4, "successes": 3, "success_rate": 0.75}
    assert [task["success_rate"] for task in payload["tasks"]] == [0.5, 1.0]


def test_bar_chart_is_a_png_with_one_bar_per_task(tmp_path: Path) -> None:
    summaries = summarize([make_result(task_id, 0, task_id % 2 == 0) for task_id in range(10)])
    path = tmp_path / "out" / "chart.png"
    plot_success_rates(path, "libero_spatial", summaries)
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] > 300 and pixels.std() > 0  # grows with the number of tasks, not blank
    assert [p.name for p in path.parent.iterdir()] == ["chart.png"]  # no temporary file left behind


def test_json_written_atomically_reloads(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"a": [1, 2]})
    write_json_atomic(path, {"a": [3]})
    assert json.loads(path.read_text()) == {"a": [3]}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
