"""Replay identical action sequences from LIBERO's benchmark initial states and compare two simulator stacks.

Three steps, each a separate process (``scripts/compare_simulators.sh`` runs them):

    cases    (main venv: needs torch to read the init-state files) writes the replay cases: for a few tasks and
             initial states of every suite, the BDDL file, the initial state and an action sequence
             (``num_noops`` no-ops, then pseudo-random actions drawn from ``--seed``, each held for a few steps).
    record   (any venv with LIBERO; no torch, no rendering) replays every case in that installation's simulator
             and writes the MuJoCo state after ``set_init_state`` and after every step: qpos, qvel, eef pose.
    compare  reports, per suite, the largest absolute difference between two recordings, and the first step
             where a qpos differs by more than ``DIVERGENCE_THRESHOLD``.

Everything a case needs is stored in the cases file, so both stacks replay exactly the same inputs.
"""

from __future__ import annotations

import argparse
import json
from importlib import metadata
from pathlib import Path

import numpy as np

from experiments.robot.libero.sim_setup import prepare_libero, task_init_states
from prismatic.util.cli import UserError, run_cli
from prismatic.util.io import atomic_output, write_json_atomic

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
DUMMY_ACTION = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])  # arm still, gripper open (upstream's no-op)
ACTION_HOLD_STEPS = 5  # each random action is held this many steps, so the arm travels and makes contact
DIVERGENCE_THRESHOLD = 1e-6  # qpos difference (m or rad) counted as a divergence
RECORDED = ("qpos", "qvel", "eef_pos", "eef_quat")


def random_actions(rng: np.random.Generator, num_steps: int) -> np.ndarray:
    """``[num_steps, 7]`` OSC_POSE actions: uniform deltas in [-1, 1], gripper -1 or +1, held ``ACTION_HOLD_STEPS``."""
    num_draws = -(-num_steps // ACTION_HOLD_STEPS)
    arm = rng.uniform(-1.0, 1.0, size=(num_draws, 6))
    gripper = rng.choice([-1.0, 1.0], size=(num_draws, 1))
    return np.repeat(np.concatenate([arm, gripper], axis=1), ACTION_HOLD_STEPS, axis=0)[:num_steps]


def make_cases(
    path: Path, suites: list[str], task_ids: list[int], init_ids: list[int], num_noops: int, num_steps: int, seed: int
) -> None:
    """Write the replay cases (one entry per suite, task and initial state) to ``path`` (``.npz``)."""
    prepare_libero()
    from libero.libero import benchmark

    benchmark_dict = benchmark.get_benchmark_dict()
    arrays: dict[str, np.ndarray] = {}
    index = []
    for suite_number, suite in enumerate(suites):
        task_suite = benchmark_dict[suite]()
        for task_id in task_ids:
            if not 0 <= task_id < task_suite.n_tasks:
                raise UserError(
                    f"--task_ids: {task_id} is not a task of {suite} (expected 0..{task_suite.n_tasks - 1})"
                )
            task = task_suite.get_task(task_id)
            init_states = task_init_states(task_suite, task_id)
            for init_id in init_ids:
                if not 0 <= init_id < len(init_states):
                    raise UserError(
                        f"--init_ids: {init_id} is not an initial state of {suite} (expected 0..{len(init_states) - 1})"
                    )
                name = f"{suite}/task{task_id}/init{init_id}"
                rng = np.random.default_rng([seed, suite_number, task_id, init_id])
                actions = np.concatenate([np.tile(DUMMY_ACTION, (num_noops, 1)), random_actions(rng, num_steps)])
                arrays[f"{name}/init_state"] = np.asarray(init_states[init_id], dtype=np.float64)
                arrays[f"{name}/actions"] = actions
                bddl = f"{task.problem_folder}/{task.bddl_file}"
                index.append({"name": name, "suite": suite, "bddl": bddl, "num_noops": num_noops})
    arrays["index"] = np.array(json.dumps(index))
    with atomic_output(path) as temporary:
        np.savez_compressed(temporary, **arrays)


def _state(env, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    data = env.sim.data
    return {
        "qpos": np.array(data.qpos, dtype=np.float64),
        "qvel": np.array(data.qvel, dtype=np.float64),
        "eef_pos": np.array(obs["robot0_eef_pos"], dtype=np.float64),
        "eef_quat": np.array(obs["robot0_eef_quat"], dtype=np.float64),
    }


def replay(bddl_file: str, init_state: np.ndarray, actions: np.ndarray) -> dict[str, np.ndarray]:
    """The state after ``set_init_state`` and after each action, each key stacked to ``[1 + steps, ...]``.

    The env is built and seeded as the evaluation's (``get_libero_env``: seed 0, one reset, then the initial
    state), without cameras: rendering does not touch the physics.
    """
    from libero.libero.envs.env_wrapper import ControlEnv

    env = ControlEnv(bddl_file_name=bddl_file, use_camera_obs=False, has_offscreen_renderer=False)
    try:
        env.seed(0)
        env.reset()
        states = [_state(env.env, env.set_init_state(init_state))]
        for action in actions:
            obs, _, _, _ = env.step(action.tolist())
            states.append(_state(env.env, obs))
    finally:
        env.close()
    return {key: np.stack([state[key] for state in states]) for key in RECORDED}


def record(cases_path: Path, out_path: Path) -> None:
    """Replay every case of ``cases_path`` in this installation's simulator; write the states to ``out_path``."""
    prepare_libero()
    from libero.libero import get_libero_path

    cases = np.load(cases_path)
    bddl_root = Path(get_libero_path("bddl_files"))
    arrays: dict[str, np.ndarray] = {}
    for case in json.loads(str(cases["index"])):
        name = case["name"]
        states = replay(str(bddl_root / case["bddl"]), cases[f"{name}/init_state"], cases[f"{name}/actions"])
        arrays.update({f"{name}/{key}": value for key, value in states.items()})
        print(f"recorded {name}: {len(states['qpos'])} states", flush=True)
    versions = {package: metadata.version(package) for package in ("mujoco", "robosuite", "libero", "numpy")}
    arrays["versions"] = np.array(json.dumps(versions))
    arrays["index"] = cases["index"]
    with atomic_output(out_path) as temporary:
        np.savez_compressed(temporary, **arrays)


def _quat_angle(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Rotation angle (rad) between unit quaternions, per row (q and -q are the same rotation); the atan2 form
    stays exact for nearly equal rotations, where ``arccos`` of the dot product is ill-conditioned."""
    signs = np.where(np.sum(first * second, axis=-1, keepdims=True) < 0, -1.0, 1.0)
    difference = np.linalg.norm(first - signs * second, axis=-1)
    total = np.linalg.norm(first + signs * second, axis=-1)
    return 4.0 * np.arctan2(difference, total)


def compare(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> dict[str, dict[str, float | int | None]]:
    """Per suite: the largest |difference| of qpos, qvel, eef position (m) and eef orientation (rad) over all
    cases and steps, the largest qpos difference by the end of the no-op steps (objects settling, arm still), and
    the earliest step at which some qpos differs by more than ``DIVERGENCE_THRESHOLD`` (``None`` if none does)."""
    report: dict[str, dict[str, float | int | None]] = {}
    for case in json.loads(str(first["index"])):
        name, suite = case["name"], case["suite"]
        a = {key: first[f"{name}/{key}"] for key in RECORDED}
        b = {key: second[f"{name}/{key}"] for key in RECORDED}
        if a["qpos"].shape != b["qpos"].shape:
            raise ValueError(f"{name}: qpos shapes differ ({a['qpos'].shape} vs {b['qpos'].shape})")
        qpos_diff = np.abs(a["qpos"] - b["qpos"]).max(axis=1)
        diverged = np.flatnonzero(qpos_diff > DIVERGENCE_THRESHOLD)
        entry = report.setdefault(
            suite,
            {
                "cases": 0,
                "steps": len(qpos_diff) - 1,
                "qpos_after_noops": 0.0,
                "qpos": 0.0,
                "qvel": 0.0,
                "eef_pos_m": 0.0,
                "eef_rot_rad": 0.0,
                "first_divergent_step": None,
            },
        )
        entry["cases"] += 1
        entry["qpos_after_noops"] = max(entry["qpos_after_noops"], float(qpos_diff[: case["num_noops"] + 1].max()))
        entry["qpos"] = max(entry["qpos"], float(qpos_diff.max()))
        entry["qvel"] = max(entry["qvel"], float(np.abs(a["qvel"] - b["qvel"]).max()))
        eef_pos_diff = float(np.linalg.norm(a["eef_pos"] - b["eef_pos"], axis=1).max())
        entry["eef_pos_m"] = max(entry["eef_pos_m"], eef_pos_diff)
        entry["eef_rot_rad"] = max(entry["eef_rot_rad"], float(_quat_angle(a["eef_quat"], b["eef_quat"]).max()))
        if diverged.size:
            earlier = entry["first_divergent_step"]
            entry["first_divergent_step"] = int(diverged[0]) if earlier is None else min(earlier, int(diverged[0]))
    return report


def format_report(report: dict[str, dict], first_label: str, second_label: str) -> str:
    """A Markdown table of :func:`compare`'s report."""
    lines = [
        f"Largest state difference, {first_label} vs {second_label}:",
        "",
        "| suite | cases x steps | qpos after no-ops | qpos | qvel | eef position (m) | eef rotation (rad) "
        "| first step qpos > 1e-6 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for suite, entry in report.items():
        first_step = entry["first_divergent_step"]
        figures = [entry[key] for key in ("qpos_after_noops", "qpos", "qvel", "eef_pos_m", "eef_rot_rad")]
        cells = [suite, f"{entry['cases']} x {entry['steps']}", *(f"{value:.3g}" for value in figures)]
        cells.append("-" if first_step is None else str(first_step))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _label(recording: dict[str, np.ndarray]) -> str:
    versions = json.loads(str(recording["versions"]))
    return f"mujoco {versions['mujoco']} + robosuite {versions['robosuite']}"


def main(argv: list[str] | None = None) -> None:
    """The command line: ``cases``, ``record`` or ``compare``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    cases_parser = commands.add_parser("cases", help="write the replay cases (run in the main venv)")
    cases_parser.add_argument("out", type=Path)
    cases_parser.add_argument("--suites", nargs="+", default=list(SUITES), choices=SUITES)
    cases_parser.add_argument("--task_ids", nargs="+", type=int, default=[0, 9])
    cases_parser.add_argument("--init_ids", nargs="+", type=int, default=[0, 1])
    cases_parser.add_argument("--num_noops", type=int, default=10)
    cases_parser.add_argument("--num_steps", type=int, default=100)
    cases_parser.add_argument("--seed", type=int, default=0)
    record_parser = commands.add_parser("record", help="replay the cases in this venv's simulator")
    record_parser.add_argument("cases", type=Path)
    record_parser.add_argument("out", type=Path)
    compare_parser = commands.add_parser("compare", help="report the largest state differences of two recordings")
    compare_parser.add_argument("first", type=Path)
    compare_parser.add_argument("second", type=Path)
    compare_parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)

    if args.command == "cases":
        make_cases(args.out, args.suites, args.task_ids, args.init_ids, args.num_noops, args.num_steps, args.seed)
    elif args.command == "record":
        record(args.cases, args.out)
    else:
        first, second = np.load(args.first), np.load(args.second)
        report = compare(first, second)
        print(format_report(report, _label(first), _label(second)))
        if args.json:
            write_json_atomic(args.json, report)


if __name__ == "__main__":
    run_cli(main)
