"""The Spatial Forcing mechanism experiment (``make experiment``): does aligning to true geometry speed up learning?

    python experiments/sf_mechanism/run.py --out runs/sf_mechanism            # the full run (design.FULL)
    python experiments/sf_mechanism/run.py --out runs/sf_quick --quick        # one task, one seed, every artefact
    python experiments/sf_mechanism/run.py --out /tmp/sf --data_source synthetic --quick   # harness check, no sim
    python experiments/sf_mechanism/run.py --out runs/sf_reduced --scale reduced --tasks 0 --seeds 0 --variants plain \
        --learning_rate 1e-3                                                   # one point of a baseline LR sweep
    python experiments/sf_mechanism/run.py --out runs/sf_medium --scale medium   # the third run (task 3, 1000 steps)
    python experiments/sf_mechanism/run.py --out runs/sf_t0 --tasks 0           # one task of the full run (a session)
    python experiments/sf_mechanism/run.py --out runs/sf_all --combine a/results.json b/results.json   # join parts

Stages, each skipping the work it finished before (a unit's output is written atomically, a rerun resumes;
``--parallel N`` runs N trainings, evaluations or probes at a time and N simulator workers for the demonstrations):
base checkpoints -> demonstrations with depth (per task: 100 % and each fraction) -> training of every (task,
variant, fraction, seed) -> held-out action L1 curves (the runs' validation) -> closed-loop evaluation on the
benchmark's init states (Wilson 95 % intervals) -> depth probe of every 100 % checkpoint -> results.json, figures and
the report page. The metrics are declared in ``experiments/sf_mechanism/design.py``. Runs of disjoint parts of one
design (``--tasks``/``--seeds`` subsets, e.g. in sessions on different machines) join with ``--combine``, which
trains nothing and checks that the parts share the design, the rate and the base checkpoints' weights. With
``--data_source synthetic`` the demonstrations are the synthetic reach task and the closed-loop stage is skipped
(recorded as skipped).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from experiments.robot.libero.demo_generation import DemoGenerationConfig
from experiments.robot.results import difference_interval, wilson_interval
from experiments.sf_mechanism.design import (
    DATASET_NAME,
    HEIGHT_TASK,
    OFFLINE_PRIMARY_METRIC,
    PRIMARY_METRIC,
    SCALES,
    SECONDARY_METRIC,
    SUITE,
    VARIANTS,
    Scale,
    steps_to_reach,
)
from experiments.sf_mechanism.report import write_figures, write_report
from prismatic.oracle.libero_pick_place import SUPPORTED_TASKS, supported_task_names
from prismatic.probing.data import FORMAT_VERSION, ScenePlan, write_meta, write_scene
from prismatic.training.config import FinetuneConfig
from prismatic.training.metrics import read_metrics
from prismatic.training.presets import get_preset
from prismatic.util.cli import UserError, run_cli
from prismatic.util.io import file_sha256, write_json_atomic
from prismatic.vla.datasets.synthetic import ReachScene
from vggt.loading import read_state_dict

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = REPO_ROOT / "vla-scripts"
DATA_SOURCES = ("oracle", "synthetic")
DONE_NAME = ".done.json"
FULL_REPORT = REPO_ROOT / "docs" / "experiments" / "sf_mechanism_full" / "sf_mechanism.md"
T = TypeVar("T")
# What the parts joined by --combine must share (besides their sizes, tasks and seeds aside).
SHARED_KEYS = ("scale", "data_source", "learning_rate", "closed_loop", "depth_probe", "aligned_layer", "base_sha256")
TOOL_ENV = {"USE_TF": "0", "WANDB_MODE": "offline", "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "sf_mechanism", help="experiment folder")
    parser.add_argument("--quick", action="store_true", help="one task, one seed, every artefact (--scale quick)")
    parser.add_argument("--scale", default="full", help=f"one of {list(SCALES)} (design.py); --quick sets quick")
    parser.add_argument("--data_source", default="oracle", help=f"one of {DATA_SOURCES}")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
    parser.add_argument("--tasks", default=None, help="comma-separated subset of the scale's tasks (default: all)")
    parser.add_argument("--seeds", default=None, help="comma-separated subset of the scale's seeds (default: all)")
    parser.add_argument(
        "--learning_rate",
        type=float,
        default=None,
        help="one rate for every variant (default: the scale's preset's, chosen on the baseline)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=2,  # this project's CPU machines have 2 cores
        help="training runs, evaluations and probes at a time, and simulator workers of the demonstrations "
        "(a training run of plain or rgb: ~2 GB of memory; geometry: ~6 GB)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help=f"report page (default: {FULL_REPORT} for the whole full oracle run, else <out>/sf_mechanism.md)",
    )
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        default=None,
        help="results.json files of runs of disjoint parts of one design: joined into <out>, nothing trained",
    )
    args = parser.parse_args(argv)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Every flag checked before anything is written or loaded."""
    if args.quick:
        args.scale = "quick"
    if args.combine is not None:
        narrowing = {
            "--quick": args.quick,
            "--tasks": args.tasks,
            "--seeds": args.seeds,
            "--learning_rate": args.learning_rate,
        }
        given = [flag for flag, value in narrowing.items() if value not in (None, False)]
        if given:
            raise UserError(f"--combine with {' '.join(given)}: expected only --out and --report (the parts' own)")
        args.parts = read_parts(args.combine)
        if args.out.exists() and not args.out.is_dir():
            raise UserError(f"--out {args.out}: not a folder; expected the folder of the combined results")
        if (args.out / "experiment.json").exists():  # its results.json is a run's own: never overwritten by a join
            raise UserError(f"--out {args.out} holds a run (experiment.json); expected a folder for the joined results")
        return
    if args.scale not in SCALES:
        raise UserError(f"--scale {args.scale!r}: expected one of {list(SCALES)}")
    if args.data_source not in DATA_SOURCES:
        raise UserError(f"--data_source {args.data_source!r}: expected one of {list(DATA_SOURCES)}")
    variants = [name for name in args.variants.split(",") if name]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown or not variants:
        raise UserError(f"--variants {args.variants!r}: expected a comma-separated subset of {list(VARIANTS)}")
    if "plain" not in variants:
        raise UserError(f"--variants {args.variants!r}: expected 'plain' among them (the baseline of every ratio)")
    args.variants = variants
    if args.parallel < 1:
        raise UserError(f"--parallel {args.parallel}: expected a whole number >= 1")
    scale = SCALES[args.scale]
    if args.learning_rate is None:
        args.learning_rate = float(get_preset(scale.preset).settings["learning_rate"])
    if not args.learning_rate > 0:
        raise UserError(f"--learning_rate {args.learning_rate}: expected a value > 0")
    args.sizes = dataclasses.replace(
        scale, tasks=subset("--tasks", args.tasks, scale.tasks), seeds=subset("--seeds", args.seeds, scale.seeds)
    )
    if args.data_source == "oracle":
        check_oracle(args.sizes)
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out}: not a folder; expected the experiment folder (created if missing)")
    manifest = args.out / "experiment.json"
    if manifest.exists():
        earlier = json.loads(manifest.read_text())
        now = {"scale": args.scale, "data_source": args.data_source, "learning_rate": args.learning_rate}
        if {key: earlier.get(key) for key in now} != now:
            raise UserError(
                f"--out {args.out} holds a run with {earlier}; expected the same "
                "--scale/--data_source/--learning_rate to resume it, or a new --out"
            )


def subset(flag: str, value: str | None, allowed: tuple[int, ...]) -> tuple[int, ...]:
    """A comma-separated subset of ``allowed`` (all of it when ``value`` is None)."""
    if value is None:
        return allowed
    try:
        chosen = tuple(int(item) for item in value.split(",") if item)
    except ValueError:
        chosen = ()
    if not chosen or not set(chosen) <= set(allowed):
        raise UserError(f"{flag} {value!r}: expected a comma-separated subset of the scale's {list(allowed)}")
    return chosen


def check_oracle(scale: Scale) -> None:
    """The oracle demonstrates every task of the scale and writes the depth the geometry teacher reads."""
    unsupported = [task for task in scale.tasks if (SUITE, task) not in SUPPORTED_TASKS]
    if unsupported:
        raise UserError(
            f"--data_source oracle: {SUITE} tasks {unsupported} have no oracle; expected among {supported_task_names()}"
        )
    if "with_depth" not in {field.name for field in dataclasses.fields(DemoGenerationConfig)}:
        raise UserError(
            "--data_source oracle: vla-scripts/generate_libero_demos.py has no --with_depth; expected a generator "
            "that writes the depth features the geometry teacher reads (or --data_source synthetic)"
        )


def read_parts(paths: list[Path]) -> list[dict]:
    """The results.json of each part; refused unless they share one design, rate and base and no run."""
    parts = []
    for path in paths:
        try:
            part = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise UserError(f"--combine {path}: expected a results.json written by this harness ({error})") from None
        if not isinstance(part, dict) or not {"units", "sizes", "scale", "base_sha256"} <= set(part):
            raise UserError(
                f"--combine {path}: expected a results.json written by this harness (units, sizes, scale, base_sha256)"
            )
        parts.append(part)
    first, first_path = parts[0], paths[0]
    seen: dict[str, Path] = {}
    for part, path in zip(parts, paths, strict=True):
        for key in SHARED_KEYS:
            if part.get(key) != first.get(key):
                raise UserError(
                    f"--combine {path}: {key} {part.get(key)!r} differs from {first.get(key)!r} in {first_path}; "
                    "expected parts of one design"
                )
        for key in sorted((set(part["sizes"]) | set(first["sizes"])) - {"tasks", "seeds"}):
            if part["sizes"].get(key) != first["sizes"].get(key):
                raise UserError(
                    f"--combine {path}: sizes.{key} {part['sizes'].get(key)!r} differs from "
                    f"{first['sizes'].get(key)!r} in {first_path}; expected parts of one design"
                )
        for entry in part["units"]:
            if entry["run_id"] in seen:
                raise UserError(
                    f"--combine {path}: run {entry['run_id']!r} is also in {seen[entry['run_id']]}; expected "
                    "disjoint parts"
                )
            seen[entry["run_id"]] = path
    return parts


def combined_scale(parts: list[dict]) -> Scale:
    """The parts' common sizes with the union of their tasks (in the declared scale's order) and seeds."""
    sizes = parts[0]["sizes"]
    declared = SCALES[parts[0]["scale"]]
    tasks = {task for part in parts for task in part["sizes"]["tasks"]}
    seeds = {seed for part in parts for seed in part["sizes"]["seeds"]}
    order = [task for task in declared.tasks if task in tasks] + sorted(tasks - set(declared.tasks))
    fields = {**sizes, "tasks": tuple(order), "seeds": tuple(sorted(seeds)), "fractions": tuple(sizes["fractions"])}
    return Scale(**fields)


def combine(args: argparse.Namespace) -> None:
    """Joins the parts into one results.json, its figures and its report page (nothing is trained)."""
    parts: list[dict] = args.parts
    scale = combined_scale(parts)
    units = [entry for part in parts for entry in part["units"]]
    variants = [variant for variant in VARIANTS if any(entry["variant"] == variant for entry in units)]
    present = {(entry["task"], entry["fraction"], entry["variant"], entry["seed"]) for entry in units}
    missing = [
        f"task{task}_{fraction_tag(fraction)}_{variant}_s{seed}"
        for task in scale.tasks
        for fraction in scale.fractions
        for seed in scale.seeds
        for variant in variants
        if (task, fraction, variant, seed) not in present
    ]
    if missing:
        raise UserError(f"--combine: the parts lack runs {missing}; expected every (task, fraction, variant, seed)")
    first = parts[0]
    results = {
        **{key: first[key] for key in ("primary_metric", "secondary_metric", "height_task", *SHARED_KEYS)},
        "sizes": vars(scale),
        "groups": summarise(units, scale, variants),
        "combined_from": [
            {
                "results": str(path),
                "tasks": part["sizes"]["tasks"],
                "seeds": part["sizes"]["seeds"],
                "code_commit": part.get("code_commit"),
            }
            for path, part in zip(args.combine, parts, strict=True)
        ],
        "units": units,
    }
    publish(results, args.out.resolve(), args.report, whole_full_run(results, SCALES[first["scale"]]))


def run_tool(command: list[str], log: Path) -> None:
    """Runs one tool with its output in ``log``; a failure names the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {' '.join(command)}", flush=True)
    with open(log, "w") as handle:
        completed = subprocess.run(
            command, cwd=REPO_ROOT, env={**os.environ, **TOOL_ENV}, stdout=handle, stderr=subprocess.STDOUT
        )
    if completed.returncode != 0:
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"{command[1]} failed (exit {completed.returncode}); log {log}:\n{tail}")


def unit(folder: Path, title: str, work: Callable[[], dict]) -> dict:
    """Runs ``work`` unless ``folder`` holds its finished marker; returns what the marker records."""
    marker = folder / DONE_NAME
    if marker.exists():
        print(f"[skip] {title} (done)", flush=True)
        return json.loads(marker.read_text())
    print(f"[run ] {title}", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    record = work()
    write_json_atomic(marker, record)
    return record


def fraction_tag(fraction: float) -> str:
    return f"f{round(fraction * 100):03d}"


def num_demos(scale: Scale, fraction: float) -> int:
    """Demonstrations at ``fraction``: the first ones of the same seeded generation (at least 2, one held out)."""
    return max(2, round(scale.num_demos * fraction))


def make_checkpoints(out: Path, image_size: int) -> dict:
    folder = out / "ckpts"
    command = [sys.executable, str(SCRIPTS / "make_tiny_checkpoints.py"), f"--out_dir={folder}"]
    run_tool([*command, f"--image_size={image_size}"], folder / "log.txt")
    return {"vla_path": str(folder / "tiny-openvla"), "vggt_path": str(folder / "tiny-vggt-model.pt")}


def make_demos(out: Path, data_source: str, task: int, count: int, workers: int) -> dict:
    root = out / "data" / f"task{task}_n{count:03d}"
    if data_source == "synthetic":
        command = [
            str(SCRIPTS / "make_synthetic_libero.py"),
            f"--data_root_dir={root}",
            f"--dataset_name={DATASET_NAME}",
            f"--num_episodes={count}",
            "--episode_length=16",
            "--image_size=64",
            f"--seed={task}",
            "--with_depth=True",
        ]
    else:
        command = [
            str(SCRIPTS / "generate_libero_demos.py"),
            f"--task_suite_name={SUITE}",
            f"--task_ids=[{task}]",
            f"--num_demos={count}",
            f"--data_root_dir={root}",
            "--with_depth=True",
            f"--num_workers={workers}",
        ]
    run_tool([sys.executable, *command], root / "log.txt")
    return {"data_root_dir": str(root)}


def train(
    out: Path, scale: Scale, base: dict, data_root: str, variant: str, seed: int, run_id: str, learning_rate: float
) -> dict:
    script, teacher = VARIANTS[variant]
    run_root = out / "runs"
    flags = [
        f"--preset={scale.preset}",
        f"--vla_path={base['vla_path']}",
        f"--data_root_dir={data_root}",
        f"--dataset_name={DATASET_NAME}",
        f"--run_root_dir={run_root}",
        f"--run_id_override={run_id}",
        f"--seed={seed}",
        f"--learning_rate={learning_rate}",
        f"--max_steps={scale.max_steps}",
        f"--num_steps_before_decay={scale.decay_step or scale.max_steps}",
        f"--save_freq={scale.max_steps}",
        f"--val_freq={scale.val_freq}",
        "--overwrite_run=True",  # an unfinished unit restarts from step 0 (its marker is written only at the end)
    ]
    if teacher is not None:
        flags += [f"--teacher={teacher}", f"--vggt_path={base['vggt_path']}"]
    run_tool([sys.executable, str(SCRIPTS / script), *flags], out / "logs" / f"train_{run_id}.txt")
    return {"run_dir": str(run_root / run_id), "checkpoint": str(run_root / run_id)}


def val_curve(run_dir: str, name: str) -> list[tuple[int, float]]:
    """(step, held-out value of metric ``name``) of a run's validation rounds (empty if the run logs no such value)."""
    return [(int(row["step"]), float(row[name])) for row in read_metrics(Path(run_dir)) if name in row]


def evaluate(out: Path, scale: Scale, checkpoint: str, task: int, run_id: str) -> dict:
    log_dir = out / "eval"
    command = [
        sys.executable,
        str(REPO_ROOT / "experiments" / "robot" / "libero" / "run_libero_eval.py"),
        f"--pretrained_checkpoint={checkpoint}",
        f"--task_suite_name={SUITE}",
        f"--task_ids=[{task}]",
        f"--num_trials_per_task={scale.eval_episodes}",
        f"--max_steps={scale.eval_max_steps}",
        f"--local_log_dir={log_dir}",
        f"--run_id={run_id}",
    ]
    run_tool(command, out / "logs" / f"eval_{run_id}.txt")
    episodes = [json.loads(line) for line in (log_dir / f"{run_id}.jsonl").read_text().splitlines() if line.strip()]
    successes = sum(bool(episode["success"]) for episode in episodes)
    low, high = wilson_interval(successes, len(episodes))
    return {
        "successes": successes,
        "episodes": len(episodes),
        "rate": successes / len(episodes),
        "wilson95": [low, high],
    }


def make_probe_data(out: Path, scale: Scale, data_source: str, task: int) -> dict:
    root = out / "probe_data" / f"task{task}"
    if data_source == "synthetic":
        write_synthetic_probe_data(root, scenes=2 * scale.probe_init_states, seed=task, center_crop=center_crop(scale))
    else:
        command = [
            sys.executable,
            str(SCRIPTS / "make_depth_probe_data.py"),
            f"--out_dir={root}",
            f"--suites=[{SUITE}]",
            f"--task_ids=[{task}]",
            f"--num_init_states={scale.probe_init_states}",
            "--num_perturbations=1",
            f"--center_crop={center_crop(scale)}",
        ]
        run_tool(command, out / "logs" / f"probe_data_task{task}.txt")
    return {"data": str(root)}


def write_synthetic_probe_data(root: Path, scenes: int, seed: int, center_crop: bool) -> None:
    """Depth-probe scenes of the synthetic reach task in make_depth_probe_data.py's format (224 px, both cameras,
    the policies' centre crop recorded); the second half are test scenes."""
    rng = np.random.default_rng(seed)
    plans = []
    for index in range(scenes):
        split = "train" if index < scenes // 2 else "test"
        plan = ScenePlan(f"{SUITE}_t00_i{index:03d}_v00", SUITE, 0, index, 0, split, "reach the block")
        scene = ReachScene(rng, image_size=224)
        rgb = np.stack([scene.render_agentview(), scene.render_wrist()])
        depth = np.stack([scene.render_agentview_depth(), scene.render_wrist_depth()])
        write_scene(root, plan.name, rgb=rgb, depth=depth, state=np.zeros(8))
        plans.append(plan)
    scenes_meta = [vars(plan) for plan in plans]
    meta = {
        "format_version": FORMAT_VERSION,
        "settings": {
            "source": "synthetic reach task (prismatic.vla.datasets.synthetic)",
            "seed": seed,
            "scenes": scenes,
        },
        "cameras": ["agentview", "wrist"],
        "preprocessing": {"image_size": 224, "center_crop": center_crop, "crop_area": 0.9},
        "depth_units": "metres along the optical axis",
        "scenes": scenes_meta,
    }
    write_meta(root, meta)


def probe(out: Path, scale: Scale, checkpoints: dict[str, str], data: str, task: int) -> dict:
    probe_dir = out / "probe" / f"task{task}"
    command = [
        sys.executable,
        str(SCRIPTS / "probe_depth.py"),
        f"--checkpoint=[{','.join(checkpoints.values())}]",
        f"--data={data}",
        f"--out_dir={probe_dir}",
        "--overwrite=True",
        f"--probe.dpt_steps={scale.probe_dpt_steps}",
        "--probe.batch_size=2",
        "--probe.token_dim=8",
        "--probe.dpt_features=4",
        "--probe.target_size=32",
        "--figure_scenes=2",
    ]
    run_tool(command, out / "logs" / f"probe_task{task}.txt")
    metrics = json.loads((probe_dir / "metrics.json").read_text())
    per_run = {}
    for run_id, checkpoint in checkpoints.items():
        result = metrics["checkpoints"][Path(checkpoint).name]
        per_layer = {
            layer: scores[SUITE][SUITE]["all"]["abs_rel"]
            for layer, scores in sorted(result["linear"].items(), key=lambda item: int(item[0]))
        }
        per_run[run_id] = {
            "linear_abs_rel_by_layer": per_layer,
            "dpt_abs_rel": result["dpt"][SUITE][SUITE]["all"]["abs_rel"],
        }
    return {"metrics": str(probe_dir / "metrics.json"), "runs": per_run}


def summarise(units: list[dict], scale: Scale, variants: list[str]) -> dict:
    """Per (task, fraction, variant): mean/min/max curves over seeds, success, probe, and the secondary ratio."""
    groups: dict[str, dict] = {}
    for task in scale.tasks:
        for fraction in scale.fractions:
            key = f"task{task}_{fraction_tag(fraction)}"
            rows = {}
            for variant in variants:
                mine = [u for u in units if (u["task"], u["fraction"], u["variant"]) == (task, fraction, variant)]
                curves = [u["l1_curve"] for u in mine]
                steps = [step for step, _ in curves[0]] if curves and curves[0] else []
                values = np.array([[value for _, value in curve] for curve in curves]) if steps else np.zeros((0, 0))
                evals = [u["eval"] for u in mine if u.get("eval")]
                successes, episodes = sum(e["successes"] for e in evals), sum(e["episodes"] for e in evals)
                rows[variant] = {
                    "seeds": [u["seed"] for u in mine],
                    "steps": steps,
                    "l1_mean": values.mean(axis=0).tolist() if steps else [],
                    "l1_min": values.min(axis=0).tolist() if steps else [],
                    "l1_max": values.max(axis=0).tolist() if steps else [],
                    "success": None
                    if not evals
                    else {
                        "successes": successes,
                        "episodes": episodes,
                        "rate": successes / episodes,
                        "wilson95": list(wilson_interval(successes, episodes)),
                        "per_seed": [e["successes"] for e in evals],
                    },
                    "probe": [u["probe"] for u in mine if u.get("probe")],
                }
            baseline = rows["plain"]
            target = baseline["l1_mean"][-1] if baseline["l1_mean"] else None
            base_steps = (
                steps_to_reach(list(zip(baseline["steps"], baseline["l1_mean"], strict=True)), target)
                if target is not None
                else None
            )
            for row in rows.values():
                reached = (
                    steps_to_reach(list(zip(row["steps"], row["l1_mean"], strict=True)), target)
                    if target is not None
                    else None
                )
                row["steps_to_baseline_final_l1"] = reached
                row["speedup_vs_plain"] = base_steps / reached if reached and base_steps else None
                if row["success"] and baseline["success"]:
                    own, base = row["success"], baseline["success"]
                    own["difference_vs_plain"] = list(
                        difference_interval(own["successes"], own["episodes"], base["successes"], base["episodes"])
                    )
            groups[key] = {"task": task, "fraction": fraction, "baseline_final_l1": target, "variants": rows}
    return groups


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.combine is not None:
        combine(args)
        return
    scale: Scale = args.sizes
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        out / "experiment.json",
        {
            "scale": args.scale,
            "data_source": args.data_source,
            "learning_rate": args.learning_rate,
            "sizes": vars(scale),
        },
    )
    synthetic = args.data_source == "synthetic"

    base = unit(out / "ckpts", "base checkpoints", lambda: make_checkpoints(out, scale.image_size))
    data_roots = {}
    for task in scale.tasks:
        for fraction in scale.fractions:
            count = num_demos(scale, fraction)
            folder = out / "data" / f"task{task}_n{count:03d}"
            record = unit(
                folder,
                f"demos task {task} x{count}",
                lambda t=task, c=count: make_demos(out, args.data_source, t, c, args.parallel),
            )
            data_roots[task, fraction] = record["data_root_dir"]

    units = [
        {
            "run_id": f"task{task}_{fraction_tag(fraction)}_{variant}_s{seed}",
            "task": task,
            "fraction": fraction,
            "variant": variant,
            "seed": seed,
        }
        for task in scale.tasks
        for fraction in scale.fractions
        for seed in scale.seeds  # seed-major: a run stopped early holds every variant of its first seeds
        for variant in args.variants
    ]

    def train_unit(entry: dict) -> dict:
        return unit(
            out / "stages" / "train" / entry["run_id"],
            f"train {entry['run_id']}",
            lambda: train(
                out,
                scale,
                base,
                data_roots[entry["task"], entry["fraction"]],
                entry["variant"],
                entry["seed"],
                entry["run_id"],
                args.learning_rate,
            ),
        )

    for entry, record in zip(units, run_parallel(train_unit, units, args.parallel), strict=True):
        entry.update(record)

    for entry in units:
        curves = unit(
            out / "stages" / "l1" / entry["run_id"],
            f"held-out L1 {entry['run_id']}",
            lambda e=entry: {
                "curve": val_curve(e["run_dir"], "val_action_loss"),
                "align_curve": val_curve(e["run_dir"], "val_align_loss"),
            },
        )
        entry["l1_curve"], entry["align_curve"] = curves["curve"], curves.get("align_curve", [])

    if synthetic:
        closed_loop = "skipped: synthetic data has no simulator task"
    elif scale.eval_episodes == 0:
        closed_loop = f"skipped: the {args.scale} scale runs no episodes"
    else:
        closed_loop = "run"
    if closed_loop != "run":
        print(f"[not run] closed-loop evaluation: {closed_loop}", flush=True)
    else:

        def evaluate_unit(entry: dict) -> dict:
            return unit(
                out / "stages" / "eval" / entry["run_id"],
                f"closed-loop {entry['run_id']}",
                lambda: evaluate(out, scale, entry["checkpoint"], entry["task"], entry["run_id"]),
            )

        for entry, record in zip(units, run_parallel(evaluate_unit, units, args.parallel), strict=True):
            entry["eval"] = record

    depth_probe = "run" if scale.probe_init_states else f"skipped: the {args.scale} scale probes no scenes"
    if depth_probe != "run":
        print(f"[not run] depth probe: {depth_probe}", flush=True)

    def probe_task(task: int) -> dict:
        data = unit(
            out / "stages" / "probe_data" / f"task{task}",
            f"probe data task {task}",
            lambda: make_probe_data(out, scale, args.data_source, task),
        )
        full = {u["run_id"]: u["checkpoint"] for u in units if u["task"] == task and u["fraction"] == 1.0}
        return unit(
            out / "stages" / "probe" / f"task{task}",
            f"depth probe task {task}",
            lambda: probe(out, scale, full, data["data"], task),
        )

    probed_tasks = list(scale.tasks) if depth_probe == "run" else []
    for probed in run_parallel(probe_task, probed_tasks, args.parallel):
        for entry in units:
            if entry["run_id"] in probed["runs"]:
                entry["probe"] = probed["runs"][entry["run_id"]]

    results = {
        "primary_metric": PRIMARY_METRIC if closed_loop == "run" else OFFLINE_PRIMARY_METRIC,
        "secondary_metric": SECONDARY_METRIC,
        "height_task": HEIGHT_TASK,
        "data_source": args.data_source,
        "scale": args.scale,
        "sizes": vars(scale),
        "learning_rate": args.learning_rate,
        "closed_loop": closed_loop,
        "depth_probe": depth_probe,
        "aligned_layer": aligned_layer(scale),
        "base_sha256": base_digest(base),
        "code_commit": code_commit(),
        "groups": summarise(units, scale, args.variants),
        "units": units,
    }
    publish(results, out, args.report, whole_full_run(results, SCALES[args.scale]))


def publish(results: dict, out: Path, report: Path | None, full_page: bool) -> None:
    """results.json in ``out``, the figures beside the report page (committed with it) and the page itself."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", results)
    report = report or (FULL_REPORT if full_page else out / "sf_mechanism.md")
    figures = write_figures(results, report.parent / f"{report.stem}_figures")
    write_report(results, figures, report)
    print(f"results: {out / 'results.json'}\nreport: {report}", flush=True)


def whole_full_run(results: dict, declared: Scale) -> bool:
    """Whether ``results`` hold every task and seed of the full design on the oracle's demonstrations (the run whose
    page is committed at FULL_REPORT by default)."""
    sizes = results["sizes"]
    complete = set(sizes["tasks"]) == set(declared.tasks) and set(sizes["seeds"]) == set(declared.seeds)
    return results["scale"] == "full" and results["data_source"] == "oracle" and complete


def base_digest(base: dict) -> str:
    """SHA-256 over the base checkpoints, so parts of one design trained on different machines can be checked to
    start from the same weights: the tiny VLA folder's files, and the teacher file's tensors (names, dtypes, shapes,
    bytes; a torch.save file's bytes also hold the name of the path it was first written to)."""
    digest = hashlib.sha256()
    folder = Path(base["vla_path"])
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}:{file_sha256(path)}\n".encode())
    for name, tensor in sorted(read_state_dict(base["vggt_path"]).items()):
        digest.update(f"teacher/{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def code_commit() -> str | None:
    """The repository's HEAD commit (None outside a git checkout), recorded with the results."""
    completed = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    return completed.stdout.strip() if completed.returncode == 0 else None


def run_parallel(work: Callable[[T], dict], items: list[T], parallel: int) -> list[dict]:
    """``work`` on every item, ``parallel`` at a time (each item runs its own processes); the records in item order.
    After a failure no new item starts, the running ones finish (and keep their markers), and the failure is raised."""
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [pool.submit(work, item) for item in items]
        for done in as_completed(futures):
            if done.exception() is not None:
                for future in futures:
                    future.cancel()
                raise done.exception()
    return [future.result() for future in futures]


def center_crop(scale: Scale) -> bool:
    """Whether the scale's checkpoints centre-crop their images (they do when trained with image augmentation); the
    probe scenes are rendered to match, as probe_depth.py requires."""
    return bool(get_preset(scale.preset).settings.get("image_aug", FinetuneConfig.image_aug))


def aligned_layer(scale: Scale) -> int:
    """The hidden-states index the SF variants align (the scale's preset's ``vla_layers_align``)."""
    return int(get_preset(scale.preset).settings["vla_layers_align"])


if __name__ == "__main__":
    run_cli(main)
