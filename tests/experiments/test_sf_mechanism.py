"""The mechanism experiment's harness: every stage on tiny synthetic data with depth (no simulator: the closed-loop
stage is recorded as skipped), its outputs, resumption, and its own flag checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from experiments.robot.results import wilson_interval
from experiments.sf_mechanism.design import steps_to_reach

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN = "experiments/sf_mechanism/run.py"
ENV = {**os.environ, "USE_TF": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


def harness(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, RUN, *args], cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=1800
    )


def test_wilson_interval_matches_the_closed_form():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    assert wilson_interval(50, 50) == pytest.approx((0.92865, 1.0), abs=1e-4)


def test_steps_to_reach_is_the_first_step_at_or_below_the_target():
    curve = [(10, 0.5), (20, 0.3), (30, 0.35), (40, 0.2)]
    assert steps_to_reach(curve, 0.3) == 20
    assert steps_to_reach(curve, 0.1) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variants", "plain,sf_vggt"], "--variants 'plain,sf_vggt'"),
        (["--variants", "sf_geometry"], "expected 'plain' among them"),
        (["--data_source", "lerobot"], "--data_source 'lerobot'"),
        (["--scale", "huge"], "--scale 'huge'"),
    ],
)
def test_bad_flags_get_one_line_and_exit_2_before_anything_is_written(tmp_path, args, message):
    out = tmp_path / "exp"
    completed = harness("--out", str(out), *args)
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [completed.stderr.strip()]
    assert completed.stderr.startswith("error: ") and message in completed.stderr
    assert not out.exists()


def test_a_folder_of_another_scale_is_refused(tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "experiment.json").write_text(json.dumps({"scale": "quick", "data_source": "oracle"}))
    completed = harness("--out", str(out), "--scale", "smoke", "--data_source", "synthetic")
    assert completed.returncode == 2 and "expected the same --scale/--data_source" in completed.stderr
    assert sorted(path.name for path in out.iterdir()) == ["experiment.json"]


@pytest.mark.slow
def test_the_stage_graph_on_synthetic_data_writes_every_artefact_and_resumes(tmp_path):
    out = tmp_path / "exp"
    args = ["--out", str(out), "--data_source", "synthetic", "--scale", "smoke", "--variants", "plain,sf_geometry"]
    first = harness(*args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    assert results["primary_metric"].startswith("closed-loop success at equal steps on the height-dependent task")
    assert results["closed_loop"] == "skipped: synthetic data has no simulator task"
    assert results["aligned_layer"] == 1
    assert sorted(results["groups"]) == ["task3_f050", "task3_f100"]
    for group in results["groups"].values():
        assert sorted(group["variants"]) == ["plain", "sf_geometry"]
        assert group["baseline_final_l1"] == group["variants"]["plain"]["l1_mean"][-1] > 0
        for row in group["variants"].values():
            assert row["steps"] == [2, 4] and row["seeds"] == [0] and row["success"] is None
            assert row["l1_min"] == row["l1_mean"] == row["l1_max"]  # one seed: the band is the curve
        assert group["variants"]["plain"]["speedup_vs_plain"] == 1.0
    probes = results["groups"]["task3_f100"]["variants"]
    for variant in ("plain", "sf_geometry"):
        (probe,) = probes[variant]["probe"]
        assert sorted(probe["linear_abs_rel_by_layer"]) == ["0", "1", "2"] and probe["dpt_abs_rel"] > 0
    assert results["groups"]["task3_f050"]["variants"]["plain"]["probe"] == []
    for unit in results["units"]:  # the curves are the runs' own validation rounds
        metrics = [json.loads(line) for line in (Path(unit["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        assert unit["l1_curve"] == [
            [row["step"], row["val_action_loss"]] for row in metrics if "val_action_loss" in row
        ]
    for name in ("learning_curves.png", "success.png", "probe_layers.png"):
        assert Image.open(out / "sf_mechanism_figures" / name).size[0] > 200
    report = (out / "sf_mechanism.md").read_text()
    assert "Not measured: skipped: synthetic data has no simulator task." in report
    assert (
        f"| 3 | 100% | plain | 1 | {results['groups']['task3_f100']['variants']['plain']['l1_mean'][-1]:.4f} |"
        in report
    )

    markers = {path: path.stat().st_mtime_ns for path in out.rglob(".done.json")}
    second = harness(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "[run ]" not in second.stdout and second.stdout.count("[skip]") == len(markers)
    assert {path: path.stat().st_mtime_ns for path in out.rglob(".done.json")} == markers
    assert json.loads((out / "results.json").read_text()) == results
