"""Metrics of the main process: a JSONL file in the run folder, a tqdm bar, and wandb when enabled."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm


class MetricsLogger:
    """Averages step metrics over ``log_freq`` optimizer steps and writes them everywhere at once.

    Only the main process writes; others just discard. ``metrics.jsonl`` gets one line per logged step (appended,
    so a resumed run continues the same file).
    """

    def __init__(
        self,
        run_dir: Path,
        is_main: bool,
        log_freq: int,
        start_step: int,
        max_steps: int,
        wandb_run: object | None = None,
    ) -> None:
        self.is_main, self.log_freq, self.wandb_run = is_main, log_freq, wandb_run
        self.path = run_dir / "metrics.jsonl"
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self.bar = tqdm(total=max_steps, initial=start_step, desc="train", disable=not is_main, dynamic_ncols=True)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        """Records the metrics of optimizer step ``step`` (1-based) and flushes every ``log_freq`` steps."""
        for name, value in metrics.items():
            self._sums[name] += value
            self._counts[name] += 1
        self.bar.update(1)
        if step % self.log_freq == 0:
            self.write(step, {name: self._sums[name] / self._counts[name] for name in self._sums})
            self._sums.clear()
            self._counts.clear()

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.is_main:
            return
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items() if "loss" in k})
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def close(self) -> None:
        self.bar.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """The logged metrics of a run, one dict per logged step."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
