"""Per-folder test durations from pytest JUnit XML reports, as the markdown table in docs/reference/test-times.md.

    make test PYTEST_ARGS=--junitxml=/tmp/fast.xml
    make test-slow PYTEST_ARGS=--junitxml=/tmp/slow.xml
    python scripts/test_times.py /tmp/fast.xml /tmp/slow.xml

Each report is one column (its file name); a folder's time is the sum of its tests' times (fixtures included, since
pytest charges a fixture's set-up to the first test that uses it), and the slowest test of each folder is named.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from pathlib import Path


def folder_times(report: Path) -> tuple[dict[str, float], dict[str, tuple[float, str]], float]:
    """(seconds per test folder, slowest test per folder, the report's wall time) of one JUnit XML report."""
    root = ElementTree.parse(report).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        raise ValueError(f"{report}: expected a pytest JUnit XML report (a <testsuite> element)")
    per_folder: dict[str, float] = defaultdict(float)
    slowest: dict[str, tuple[float, str]] = {}
    for case in suite.iter("testcase"):
        seconds = float(case.get("time", 0.0))
        module = case.get("classname", "").split(".")
        folder = "/".join(module[:2]) if len(module) > 2 else module[0]
        per_folder[folder] += seconds
        name = f"{module[-1]}::{case.get('name')}"
        if seconds > slowest.get(folder, (-1.0, ""))[0]:
            slowest[folder] = (seconds, name)
    return dict(per_folder), slowest, float(suite.get("time", 0.0))


def markdown_table(reports: list[Path]) -> str:
    """One row per folder, one column per report, then the slowest test of the folder across all reports."""
    columns = [folder_times(report) for report in reports]
    folders = sorted({folder for per_folder, _, _ in columns for folder in per_folder})
    header = ["folder", *(f"{report.stem} (s)" for report in reports), "slowest test (s)"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for folder in folders:
        candidates = [slowest[folder] for _, slowest, _ in columns if folder in slowest]
        seconds, name = max(candidates)
        cells = [f"{per_folder.get(folder, 0.0):.0f}" for per_folder, _, _ in columns]
        rows.append(f"| {folder} | " + " | ".join(cells) + f" | {name} ({seconds:.0f}) |")
    totals = [f"**{wall / 60:.1f} min**" for _, _, wall in columns]
    rows.append("| **wall time** | " + " | ".join(totals) + " | |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="pytest --junitxml reports")
    args = parser.parse_args()
    for report in args.reports:
        if not report.is_file():
            print(f"error: report {report} does not exist; expected a pytest --junitxml file", file=sys.stderr)
            raise SystemExit(2)
    try:
        print(markdown_table(args.reports))
    except (ValueError, ElementTree.ParseError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
