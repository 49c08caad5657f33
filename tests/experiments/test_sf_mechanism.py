"""The mechanism experiment's harness: every stage on tiny synthetic data with depth (no simulator: the closed-loop
stage is recorded as skipped), its outputs, resumption, and its own flag checks."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from experiments.robot.results import difference_interval, wilson_interval
from experiments.sf_mechanism import run
from experiments.sf_mechanism.design import MEDIUM, REDUCED, steps_to_reach
from experiments.sf_mechanism.report import verdict, write_figures, write_report
from experiments.sf_mechanism.run import parse_args
from prismatic.training.presets import PRESETS
from prismatic.util.cli import UserError

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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scale", "reduced", "--tasks", "3,5"], "--tasks '3,5': expected a comma-separated subset of the scale's"),
        (["--seeds", "x"], "--seeds 'x': expected a comma-separated subset of the scale's [0, 1, 2]"),
        (["--learning_rate", "0"], "--learning_rate 0.0: expected a value > 0"),
    ],
)
def test_subsets_and_the_learning_rate_are_checked(tmp_path, args, message):
    with pytest.raises(UserError) as error:
        parse_args(["--out", str(tmp_path / "exp"), *args])
    assert str(error.value).startswith(message)


def test_subsets_narrow_the_scale_and_the_rate_defaults_to_the_preset(tmp_path):
    args = parse_args(["--out", str(tmp_path / "exp"), "--scale", "reduced", "--tasks", "0", "--seeds", "1"])
    assert args.sizes == dataclasses.replace(REDUCED, tasks=(0,), seeds=(1,))
    assert args.learning_rate == PRESETS["sf_mechanism_cpu"].settings["learning_rate"]
    medium = parse_args(["--out", str(tmp_path / "medium"), "--scale", "medium"])
    assert medium.sizes == MEDIUM and medium.learning_rate == PRESETS[MEDIUM.preset].settings["learning_rate"] == 5e-4


def test_a_folder_of_another_scale_is_refused(tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "experiment.json").write_text(json.dumps({"scale": "quick", "data_source": "oracle"}))
    completed = harness("--out", str(out), "--scale", "smoke", "--data_source", "synthetic")
    assert completed.returncode == 2 and "expected the same --scale/--data_source/--learning_rate" in completed.stderr
    assert sorted(path.name for path in out.iterdir()) == ["experiment.json"]


@pytest.mark.slow
def test_the_stage_graph_on_synthetic_data_writes_every_artefact_and_resumes(tmp_path):
    out = tmp_path / "exp"
    args = ["--out", str(out), "--data_source", "synthetic", "--scale", "smoke", "--variants", "plain,sf_geometry"]
    args += ["--parallel", "2"]
    first = harness(*args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    assert results["primary_metric"].startswith("held-out action L1 at equal steps")  # no closed loop here
    assert results["closed_loop"] == "skipped: synthetic data has no simulator task"
    assert results["depth_probe"] == "run" and results["learning_rate"] == 5e-4
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
        align = [[row["step"], row["val_align_loss"]] for row in metrics if "val_align_loss" in row]
        assert unit["align_curve"] == align and (len(align) == 2) == (unit["variant"] == "sf_geometry")
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


def test_a_scale_without_episodes_or_probe_scenes_reports_both_as_not_measured(tmp_path):
    row = {"seeds": [0, 1], "steps": [10, 20], "l1_mean": [0.3, 0.2], "l1_min": [0.25, 0.15], "l1_max": [0.35, 0.25]}
    row |= {"success": None, "probe": [], "steps_to_baseline_final_l1": 20, "speedup_vs_plain": 1.0}
    results = {
        "primary_metric": "held-out L1",
        "secondary_metric": "ratio",
        "height_task": 3,
        "data_source": "oracle",
        "scale": "reduced",
        "sizes": {},
        "learning_rate": 1e-3,
        "closed_loop": "skipped: the reduced scale runs no episodes",
        "depth_probe": "skipped: the reduced scale probes no scenes",
        "aligned_layer": 1,
        "groups": {"task3_f100": {"task": 3, "fraction": 1.0, "baseline_final_l1": 0.2, "variants": {"plain": row}}},
    }
    figures = write_figures(results, tmp_path / "figures")
    report = write_report(results, figures, tmp_path / "page.md").read_text()
    assert sorted(path.name for path in (tmp_path / "figures").iterdir()) == ["learning_curves.png", "success.png"]
    assert "Learning rate (every variant): 0.001." in report
    assert "| 3 | 100% | plain | 2 | 0.2000 | 20 | 1.00 |" in report
    assert "Not measured: skipped: the reduced scale runs no episodes." in report
    assert "Not measured: skipped: the reduced scale probes no scenes." in report and "![probe]" not in report


@pytest.mark.parametrize("scale, expected", [(MEDIUM, False), (REDUCED, True)])
def test_probe_scenes_are_rendered_with_the_checkpoints_centre_crop(tmp_path, monkeypatch, scale, expected):
    commands: list[list[str]] = []
    monkeypatch.setattr(run, "run_tool", lambda command, log: commands.append(command))
    run.make_probe_data(tmp_path, scale, "oracle", 3)
    assert f"--center_crop={expected}" in commands[0]
    assert PRESETS[scale.preset].settings.get("image_aug", True) is expected
    run.make_probe_data(tmp_path, scale, "synthetic", 3)
    meta = json.loads((tmp_path / "probe_data" / "task3" / "meta.json").read_text())
    assert meta["preprocessing"]["center_crop"] is expected


def fake_part(path: Path, tasks: list[int], *, learning_rate: float = 5e-4, base: str = "ab" * 32) -> Path:
    """A results.json of a FULL run over ``tasks`` as the harness writes it (units with curves, episodes, probes)."""
    sizes = {**dataclasses.asdict(run.SCALES["full"]), "tasks": tasks, "seeds": [0, 1, 2], "fractions": [1.0, 0.2]}
    units = []
    for task in tasks:
        for fraction in (1.0, 0.2):
            for seed in (0, 1, 2):
                for index, variant in enumerate(("plain", "sf_geometry", "sf_rgb")):
                    final = 0.1 + 0.01 * index + 0.001 * seed
                    entry = {
                        "run_id": f"task{task}_{run.fraction_tag(fraction)}_{variant}_s{seed}",
                        "task": task,
                        "fraction": fraction,
                        "variant": variant,
                        "seed": seed,
                        "l1_curve": [[1000, 0.3], [2000, final]],
                        "align_curve": [],
                        "eval": {"successes": seed + index, "episodes": 10},
                    }
                    if fraction == 1.0:
                        entry["probe"] = {"linear_abs_rel_by_layer": {"0": 0.2, "1": 0.1}, "dpt_abs_rel": 0.15}
                    units.append(entry)
    part = {
        "primary_metric": run.PRIMARY_METRIC,
        "secondary_metric": run.SECONDARY_METRIC,
        "height_task": 3,
        "data_source": "oracle",
        "scale": "full",
        "sizes": sizes,
        "learning_rate": learning_rate,
        "closed_loop": "run",
        "depth_probe": "run",
        "aligned_layer": 1,
        "base_sha256": base,
        "code_commit": "c0ffee",
        "units": units,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(part))
    return path


def test_combine_joins_disjoint_tasks_into_one_results_file_and_page(tmp_path):
    task3 = fake_part(tmp_path / "a" / "results.json", [3])
    task0 = fake_part(tmp_path / "b" / "results.json", [0])
    report = tmp_path / "page" / "sf_mechanism.md"
    run.main(["--out", str(tmp_path / "all"), "--combine", str(task0), str(task3), "--report", str(report)])

    results = json.loads((tmp_path / "all" / "results.json").read_text())
    assert results["sizes"]["tasks"] == [3, 0] and results["sizes"]["seeds"] == [0, 1, 2]  # the declared order
    assert list(results["groups"]) == ["task3_f100", "task3_f020", "task0_f100", "task0_f020"]
    assert len(results["units"]) == 36 and results["learning_rate"] == 5e-4
    geometry = results["groups"]["task3_f100"]["variants"]["sf_geometry"]
    assert geometry["success"]["per_seed"] == [1, 2, 3] and geometry["success"]["successes"] == 6
    assert geometry["success"]["wilson95"] == pytest.approx(list(wilson_interval(6, 30)))
    assert geometry["l1_mean"] == pytest.approx([0.3, 0.111])
    assert [part["tasks"] for part in results["combined_from"]] == [[0], [3]]
    page = report.read_text()
    assert "Joined from runs of disjoint parts (same base checkpoints, sha256 abababababababab)" in page
    assert "| 3 | 100% | sf_geometry | 6 / 30 | 1, 2, 3 | 0.20 |" in page
    assert sorted(path.name for path in (report.parent / "sf_mechanism_figures").iterdir()) == [
        "learning_curves.png",
        "probe_layers.png",
        "success.png",
    ]
    assert run.whole_full_run(results, run.SCALES["full"])
    assert not run.whole_full_run(json.loads(task3.read_text()), run.SCALES["full"])


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"tasks": [0], "learning_rate": 1e-3}, "learning_rate 0.001 differs from 0.0005 in"),
        ({"tasks": [0], "base": "cd" * 32}, "base_sha256 'cdcd"),
        ({"tasks": [3]}, "run 'task3_f100_plain_s0' is also in"),
    ],
)
def test_combine_refuses_parts_of_different_designs_or_overlapping_runs(tmp_path, second, message):
    first = fake_part(tmp_path / "a" / "results.json", [3])
    other = fake_part(tmp_path / "b" / "results.json", **second)
    with pytest.raises(UserError) as error:
        parse_args(["--out", str(tmp_path / "all"), "--combine", str(first), str(other)])
    assert str(error.value).startswith(f"--combine {other}: ") and message in str(error.value)


def test_combine_refuses_missing_runs_and_narrowing_flags_in_one_line(tmp_path):
    part = fake_part(tmp_path / "a" / "results.json", [3])
    data = json.loads(part.read_text())
    data["units"] = [entry for entry in data["units"] if entry["run_id"] != "task3_f020_sf_rgb_s2"]
    part.write_text(json.dumps(data))
    out = tmp_path / "all"
    completed = harness("--out", str(out), "--combine", str(part))
    assert completed.returncode == 2 and completed.stderr.count("\n") == 1
    assert "the parts lack runs ['task3_f020_sf_rgb_s2']" in completed.stderr and not out.exists()
    completed = harness("--out", str(out), "--combine", str(part), "--tasks", "3")
    assert completed.returncode == 2 and "--combine with --tasks: expected only --out and --report" in completed.stderr
    (tmp_path / "a" / "experiment.json").write_text("{}")  # the part's own folder: its results.json is kept
    completed = harness("--out", str(tmp_path / "a"), "--combine", str(part))
    assert completed.returncode == 2 and f"--out {tmp_path / 'a'} holds a run (experiment.json)" in completed.stderr
    assert json.loads(part.read_text()) == data
    completed = harness("--out", str(out), "--combine", str(tmp_path / "missing.json"))
    assert completed.returncode == 2 and f"--combine {tmp_path / 'missing.json'}: expected a results.json" in (
        completed.stderr
    )


def test_the_base_digest_follows_the_tensors_not_the_teacher_files_bytes(tmp_path):
    (tmp_path / "vla").mkdir()
    (tmp_path / "vla" / "config.json").write_text("{}")
    teacher = {"aggregator.w": torch.arange(6.0).reshape(2, 3)}
    torch.save(teacher, tmp_path / "first.pt")  # a path names the archive's folder after the file
    torch.save(teacher, tmp_path / "second.pt")
    assert (tmp_path / "first.pt").read_bytes() != (tmp_path / "second.pt").read_bytes()
    digests = [
        run.base_digest({"vla_path": str(tmp_path / "vla"), "vggt_path": str(tmp_path / name)})
        for name in ("first.pt", "second.pt")
    ]
    assert digests[0] == digests[1]
    torch.save({"aggregator.w": torch.arange(6.0).reshape(3, 2)}, tmp_path / "reshaped.pt")
    (tmp_path / "vla" / "config.json").write_text('{"a": 1}')
    changed = run.base_digest({"vla_path": str(tmp_path / "vla"), "vggt_path": str(tmp_path / "first.pt")})
    reshaped = run.base_digest({"vla_path": str(tmp_path / "vla"), "vggt_path": str(tmp_path / "reshaped.pt")})
    assert len({digests[0], changed, reshaped}) == 3


def test_the_difference_interval_matches_newcombes_worked_example():
    # Newcombe (1998), Statistics in Medicine 17:873, example (a): 56/70 against 48/80, method 10: 0.0524 to 0.3339.
    difference, low, high = difference_interval(56, 70, 48, 80)
    assert difference == pytest.approx(0.2) and (low, high) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    assert verdict(low, high) == "higher than plain"
    assert verdict(-high, -low) == "lower than plain (harm)"
    _, low, high = difference_interval(23, 30, 16, 30)  # rates 0.77 and 0.53: Wilson intervals apart from the
    assert low < 0 < high and verdict(low, high).startswith("no difference")  # other's rate, yet not resolved
