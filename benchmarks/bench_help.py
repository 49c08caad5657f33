"""Prints how long ``--help`` of each training script takes (fresh interpreter each time, scripts interleaved).

python benchmarks/bench_help.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("finetune_align.py", "finetune.py", "estimate_memory.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {script: [] for script in SCRIPTS}
    for _ in range(args.rounds):
        for script in SCRIPTS:  # interleaved, so machine load falls on every script alike
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, str(REPO_ROOT / "vla-scripts" / script), "--help"],
                check=True,
                capture_output=True,
                cwd=REPO_ROOT,
            )
            times[script].append(time.perf_counter() - start)
    for script, seconds in times.items():
        print(
            f"{script:<20s} --help: median {statistics.median(seconds):.2f} s, "
            f"min {min(seconds):.2f} s, max {max(seconds):.2f} s over {len(seconds)} runs"
        )


if __name__ == "__main__":
    main()
