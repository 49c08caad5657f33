"""Regenerating LIBERO's HDF5 demonstrations in the simulator, as upstream's ``regenerate_libero_dataset.py`` made
``modified_libero_rlds``.

As upstream, the demos of one file (one task) are replayed in order on one env seeded once (``env.seed(0)``), so demo
i starts after the i-th ``env.reset()`` of that env's reset stream; each demo is set to its recorded initial state
(``data/demo_N/states[0]``) and settles for ``NUM_SETTLE_STEPS`` dummy actions (arm still, gripper open) before the
replay. No-op actions are skipped (the rule of ``libero_hdf5.noop_mask``), both cameras are re-rendered at
``image_size`` before every kept step, and the demo is kept only if the task is done after its last action. Files are
replayed in worker processes (``spawn``; they render and never import TensorFlow); each finished demo is saved as
``<work_dir>/<file>--<demo>.npz``, so an interrupted run resumes where it stopped (the resets of the demos already
saved are replayed, so a resumed demo sees the same reset as in one pass). The main process then writes the kept demos
as RLDS through ``write_libero_rlds`` (the only step that loads TensorFlow, after the workers are gone).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from experiments.robot.libero.libero_utils import LIBERO_DUMMY_ACTION, TaskEnv, robot_state
from experiments.robot.libero.sim_setup import init_simulator_worker, simulator_worker_context
from prismatic.util.cli import UserError
from prismatic.util.io import atomic_output
from prismatic.vla.datasets.libero_hdf5 import language_instruction_of, noop_mask
from prismatic.vla.datasets.writer import LiberoEpisode, write_libero_rlds
from prismatic.vla.image_utils import rotate_180

# Dummy steps after setting a demo's initial state, before its replay (upstream's regeneration: 10).
NUM_SETTLE_STEPS = 10


@dataclass(frozen=True)
class DemoJob:
    hdf5_path: str
    demo_name: str
    reset_index: int  # the demo's place in its file's order: its replay starts after reset_index + 1 env resets
    result_path: str  # the .npz this demo's replay is saved to


@dataclass
class RegenerationSummary:
    num_demos: int
    num_kept: int
    failed_demos: list[str]
    num_noops_dropped: int
    builder_dir: Path | None


def list_jobs(hdf5_paths: list[Path], work_dir: Path) -> list[DemoJob]:
    """One job per ``data/demo_N`` of every file (in ``N`` order), checking each file's layout first (nothing is
    written)."""
    jobs = []
    for path in hdf5_paths:
        try:
            with h5py.File(path, "r") as hdf5_file:
                language_instruction_of(hdf5_file, path)
                if "bddl_file_name" not in hdf5_file["data"].attrs:
                    raise UserError(f"{path}: missing attribute data.attrs['bddl_file_name'] (the task's BDDL file).")
                demos = sorted(hdf5_file["data"].keys(), key=lambda name: int(name.rsplit("_", 1)[-1]))
                for index, demo in enumerate(demos):
                    for key in ("actions", "states"):
                        if key not in hdf5_file["data"][demo]:
                            raise UserError(f"{path}: demo 'data/{demo}' lacks dataset '{key}'.")
                    jobs.append(DemoJob(str(path), demo, index, str(work_dir / f"{path.stem}--{demo}.npz")))
        except (OSError, KeyError) as error:
            raise UserError(f"{path}: not a LIBERO HDF5 demonstration file ({error}).") from None
    return jobs


def resolve_bddl_file(recorded: str) -> str:
    """The recorded BDDL path if it exists, else the installed LIBERO file with the same suite folder and name."""
    if Path(recorded).is_file():
        return recorded
    from libero.libero import get_libero_path  # needs prepare_libero()

    recorded_path = Path(recorded)
    candidate = Path(get_libero_path("bddl_files")) / recorded_path.parent.name / recorded_path.name
    if not candidate.is_file():
        raise UserError(
            f"BDDL file {recorded!r} (data.attrs['bddl_file_name']) is not installed; expected {candidate}."
        )
    return str(candidate)


def replay_file(jobs: list[DemoJob], image_size: int) -> int:
    """Replays ``jobs`` (demos of one file, ascending ``reset_index``) on one env, saving each re-rendered episode to
    its ``result_path``; returns the number of demos replayed."""
    with h5py.File(jobs[0].hdf5_path, "r") as hdf5_file:
        instruction = language_instruction_of(hdf5_file, Path(jobs[0].hdf5_path))
        bddl_file = resolve_bddl_file(hdf5_file["data"].attrs["bddl_file_name"])
    task_env = TaskEnv(0, bddl_file, image_size)
    try:
        for job in jobs:
            replay_demo(task_env, job, image_size, instruction)
    finally:
        task_env.close()
    return len(jobs)


def replay_demo(task_env: TaskEnv, job: DemoJob, image_size: int, instruction: str) -> None:
    """Replays one demo at its place in ``task_env``'s reset stream and saves its episode to ``job.result_path``."""
    with h5py.File(job.hdf5_path, "r") as hdf5_file:
        demo = hdf5_file["data"][job.demo_name]
        actions = np.asarray(demo["actions"], np.float32)
        initial_state = np.asarray(demo["states"][0])
    obs = task_env.start_episode(job.reset_index, initial_state)
    for _ in range(NUM_SETTLE_STEPS):
        obs, _, _, _ = task_env.env.step(list(LIBERO_DUMMY_ACTION))
    keep = ~noop_mask(actions)
    frames: dict[str, list[np.ndarray]] = {"images": [], "wrist_images": [], "states": [], "joint_states": []}
    done = False
    for action in actions[keep]:
        frames["images"].append(rotate_180(obs["agentview_image"]))
        frames["wrist_images"].append(rotate_180(obs["robot0_eye_in_hand_image"]))
        frames["states"].append(robot_state(obs).astype(np.float32))
        frames["joint_states"].append(np.asarray(obs["robot0_joint_pos"], np.float32))
        obs, _, done, _ = task_env.env.step(action.tolist())
    with atomic_output(job.result_path) as temporary, open(temporary, "wb") as handle:
        np.savez(
            handle,
            **{name: np.stack(values) for name, values in frames.items()},
            actions=actions[keep],
            success=np.array(bool(done)),
            num_noops=np.array(int((~keep).sum())),
            instruction=np.array(instruction),
            file_path=np.array(f"{job.hdf5_path}/data/{job.demo_name}"),
        )


def _replay(arguments: tuple[list[DemoJob], int]) -> int:
    return replay_file(*arguments)


def run_replays(jobs: list[DemoJob], image_size: int, num_workers: int) -> None:
    """Replays the jobs without a saved result, one file per task in ``num_workers`` spawned rendering processes."""
    pending = [job for job in jobs if not Path(job.result_path).is_file()]
    if not pending:
        return
    by_file: dict[str, list[DemoJob]] = {}
    for job in pending:
        by_file.setdefault(job.hdf5_path, []).append(job)
    context = simulator_worker_context()
    with (
        context.Pool(min(num_workers, len(by_file)), initializer=init_simulator_worker) as pool,
        tqdm(total=len(jobs), initial=len(jobs) - len(pending), desc="replaying demos") as progress,
    ):
        for replayed in pool.imap_unordered(_replay, [(file_jobs, image_size) for file_jobs in by_file.values()]):
            progress.update(replayed)


def replay_outcome(job: DemoJob) -> tuple[bool, int]:
    """(task done after the last action, no-ops dropped) of a saved replay; reads no images."""
    with np.load(job.result_path) as saved:
        return bool(saved["success"]), int(saved["num_noops"])


def regenerate_libero(
    hdf5_paths: list[Path],
    data_root_dir: Path,
    dataset_name: str,
    work_dir: Path,
    image_size: int = 256,
    num_workers: int = 1,
    keep_failed: bool = False,
    overwrite: bool = False,
) -> RegenerationSummary:
    """Replays every demo of ``hdf5_paths`` (resuming from ``work_dir``) and writes the kept ones as RLDS."""
    builder_dir = Path(data_root_dir) / dataset_name / "1.0.0"
    if builder_dir.exists() and not overwrite:
        raise UserError(f"{builder_dir} already exists; pass --overwrite True to replace it.")
    jobs = list_jobs(hdf5_paths, Path(work_dir))
    if not jobs:
        raise UserError(f"No demonstrations in {[str(path) for path in hdf5_paths]}; expected data/demo_N groups.")
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    run_replays(jobs, image_size, num_workers)

    outcomes = [replay_outcome(job) for job in jobs]
    kept = [job for job, (success, _) in zip(jobs, outcomes, strict=True) if success or keep_failed]
    failed = [
        f"{job.hdf5_path}/data/{job.demo_name}" for job, (success, _) in zip(jobs, outcomes, strict=True) if not success
    ]
    summary = RegenerationSummary(len(jobs), len(kept), failed, sum(n for _, n in outcomes), None)
    if kept:  # episodes are loaded one at a time while the writer consumes them
        summary.builder_dir = write_libero_rlds(
            (LiberoEpisode.from_npz(job.result_path) for job in kept),
            data_root_dir,
            dataset_name,
            image_size=image_size,
            overwrite=overwrite,
        )
    return summary
