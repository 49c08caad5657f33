"""Runs many command-line cases in one Python process (the imports are paid once), each as ``python SCRIPT ARGS``
would: ``sys.argv`` set, the script run as ``__main__``, its stderr captured and any escaping exception printed as
Python prints it. Records, per case, the exit status, the stderr text and every file created, changed or removed
under the watched folder.

    python tests/cli/case_runner.py CASES.json RESULTS.json WATCHED_DIR

CASES.json: ``[{"script": "vla-scripts/x.py", "args": [...]}, ...]``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import sys
import traceback
from pathlib import Path


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (and every folder, size -1) with its size and modification time."""
    files = {}
    for folder, dirnames, filenames in os.walk(root):
        for name in dirnames:
            files[os.path.join(folder, name)] = (-1, 0)
        for name in filenames:
            path = os.path.join(folder, name)
            stat = os.stat(path)
            files[path] = (stat.st_size, stat.st_mtime_ns)
    return files


def run_case(script: str, args: list[str]) -> tuple[int, str]:
    stderr, stdout = io.StringIO(), io.StringIO()
    saved_argv = sys.argv
    sys.argv = [script, *args]
    code = 0
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
                if isinstance(exit_.code, str):
                    print(exit_.code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 - reported as the interpreter would
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
    return code, stderr.getvalue()


def main() -> None:
    cases_path, results_path, watched = sys.argv[1:4]
    cases = json.loads(Path(cases_path).read_text())
    root = Path(watched)
    results = []
    for number, case in enumerate(cases):
        print(f"case {number}: {case['script']} {case['args']}", file=sys.__stderr__, flush=True)
        before = snapshot(root)
        code, stderr = run_case(case["script"], case["args"])
        after = snapshot(root)
        changed = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
        results.append({"code": code, "stderr": stderr, "changed": changed})
    Path(results_path).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
