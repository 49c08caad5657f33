"""Evaluation results: one JSONL line per finished episode, success-rate summaries and the per-task bar chart."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from prismatic.util.io import atomic_output


@dataclass(frozen=True)
class EpisodeResult:
    """One finished episode. ``steps`` counts policy actions executed (the wait steps excluded); ``seconds`` is the
    episode's wall time in its worker, including any resets replayed to reach its place in the reset stream."""

    suite: str
    task_id: int
    task: str
    episode: int
    success: bool
    steps: int
    seconds: float
    error: str | None = None  # simulator exception that ended the episode (counted as a failure, as upstream)
    final_state: tuple[float, ...] = ()  # proprio after the last step: a cheap fingerprint of the trajectory
    video: str | None = None

    @property
    def key(self) -> tuple[int, int]:
        return self.task_id, self.episode

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, line: str) -> EpisodeResult:
        record = json.loads(line)
        record["final_state"] = tuple(record.get("final_state", ()))
        return cls(**record)


class EpisodeStore:
    """Append-only JSONL of :class:`EpisodeResult`; every append is flushed and fsynced.

    A crash can only leave a torn last line; :meth:`load` drops it (and truncates the file to the last full line)
    so the episode is simply run again.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> list[EpisodeResult]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        complete_length = data.rfind(b"\n") + 1
        if complete_length < len(data):
            with open(self.path, "r+b") as file:
                file.truncate(complete_length)
        results = []
        for number, line in enumerate(data[:complete_length].decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                results.append(EpisodeResult.from_json(line))
            except (json.JSONDecodeError, TypeError) as error:
                raise ValueError(f"{self.path}:{number}: not an episode record ({error}): {line[:200]!r}") from error
        return results

    def append(self, result: EpisodeResult) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(result.to_json() + "\n")
            file.flush()
            os.fsync(file.fileno())


@dataclass(frozen=True)
class TaskSummary:
    task_id: int
    task: str
    episodes: int
    successes: int

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0


def summarize(results: Iterable[EpisodeResult]) -> list[TaskSummary]:
    """Per-task episode and success counts, ordered by task id."""
    by_task: dict[int, list[EpisodeResult]] = {}
    for result in results:
        by_task.setdefault(result.task_id, []).append(result)
    return [
        TaskSummary(task_id, episodes[0].task, len(episodes), sum(r.success for r in episodes))
        for task_id, episodes in sorted(by_task.items())
    ]


def total_success_rate(summaries: Iterable[TaskSummary]) -> tuple[int, int, float]:
    """(episodes, successes, success rate) over all tasks."""
    summaries = list(summaries)
    episodes = sum(s.episodes for s in summaries)
    successes = sum(s.successes for s in summaries)
    return episodes, successes, successes / episodes if episodes else 0.0


def summary_payload(suite: str, run_id: str, summaries: list[TaskSummary]) -> dict[str, Any]:
    """JSON-ready per-task and total success rates."""
    episodes, successes, rate = total_success_rate(summaries)
    return {
        "run_id": run_id,
        "suite": suite,
        "total": {"episodes": episodes, "successes": successes, "success_rate": rate},
        "tasks": [{**dataclasses.asdict(s), "success_rate": s.success_rate} for s in summaries],
    }


def plot_success_rates(path: Path, suite: str, summaries: list[TaskSummary]) -> None:
    """Horizontal bar chart of the success rate of every task, with the total in the title (PNG, atomic)."""
    episodes, successes, rate = total_success_rate(summaries)
    labels = [f"{s.task_id}: {s.task[:60]}" for s in summaries]
    figure = Figure(figsize=(10, 1.0 + 0.4 * len(summaries)))
    axes = figure.subplots()
    bars = axes.barh(range(len(summaries)), [100 * s.success_rate for s in summaries], color="tab:blue")
    for bar, summary in zip(bars, summaries, strict=True):
        axes.text(
            bar.get_width() + 1,
            bar.get_y() + bar.get_height() / 2,
            f"{summary.successes}/{summary.episodes}",
            va="center",
            fontsize=8,
        )
    axes.set_yticks(range(len(summaries)), labels, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0, 110)
    axes.set_xlabel("success rate (%)")
    axes.set_title(f"{suite}: {100 * rate:.1f}% ({successes}/{episodes} episodes)")
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a success rate (95 % by default); (0, 1) for no trials."""
    if trials == 0:
        return 0.0, 1.0
    rate = successes / trials
    centre = (rate + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(
    successes: int, trials: int, base_successes: int, base_trials: int, z: float = 1.959964
) -> tuple[float, float, float]:
    """The difference of two success rates (first minus base) with Newcombe's hybrid score interval (95 % by
    default; his method 10, built from the two Wilson intervals): (difference, low, high)."""
    rate, base = successes / trials, base_successes / base_trials
    low, high = wilson_interval(successes, trials, z)
    base_low, base_high = wilson_interval(base_successes, base_trials, z)
    difference = rate - base
    below = math.sqrt((rate - low) ** 2 + (base_high - base) ** 2)
    above = math.sqrt((high - rate) ** 2 + (base - base_low) ** 2)
    return difference, difference - below, difference + above
