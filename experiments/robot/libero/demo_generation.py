"""Scripted LIBERO demonstrations: the pick-and-place oracle (prismatic/oracle/libero_pick_place.py) on fresh scenes.

Each attempt of a task is one of LIBERO's own seeded resets (``env.seed(s)``; ``env.reset()`` draws the placements),
never a benchmark initial state, followed by ``SETTLE_STEPS`` no-op steps. The oracle is run without cameras
(``use_camera_obs=False``: physics only); an attempt is kept when LIBERO's success predicate holds after the whole
script, release and retreat included. Its no-op actions are dropped (``libero_hdf5.noop_mask``, upstream's rule) and
only the kept steps are rendered, from their stored MuJoCo states (rendering does not change the simulation).

Per attempt, ``<work_dir>/task<T>/attempt<A>.npz`` (written atomically, so a rerun skips finished attempts):
    images, wrist_images    [T, S, S, 3] uint8, rotated 180 degrees (as the RLDS data and the policy see them)
    depth                   [T, 2, S, S] uint16 millimetres along the optical axis (agentview, wrist), rotated alike
    intrinsics              [2, 3, 3] pinhole matrices of the upright camera images (OpenCV axes, pixel centres)
    extrinsics              [T, 2, 4, 4] camera-to-world poses (OpenCV axes), per step (the wrist camera moves)
    mujoco_states           [T, N] flattened ``sim.get_state()`` before each kept action (exact re-rendering)
    phases                  [T] int8 oracle phase (``Phase``) that chose each kept action
    states, joint_states, actions, success, seconds, instruction
A rotated frame is the upright image mirrored left-right: pixel (r, c) of a stored frame is (r, S - 1 - c) of the
upright image that ``intrinsics`` describe. A failed attempt stores only its outcome.

``--with_depth True`` (RLDS only) also stores each camera's depth in metres (float32) and the intrinsics of the stored
(mirrored) frame as ``observation/{image,wrist_image}_{depth,intrinsics}`` (``prismatic.vla.datasets.geometry``):
``stored_frame_intrinsics`` negates fx and mirrors cx, so back-projected points stay in the camera's own OpenCV frame
(x right in the upright view, y down, z forward), the frame of ``extrinsics``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from experiments.robot.libero.depth_render import (
    LIBERO_CAMERAS,
    camera_intrinsics,
    camera_to_world,
    clip_planes,
    depth_buffer_to_metric,
)
from experiments.robot.libero.libero_utils import LIBERO_DUMMY_ACTION, robot_state
from experiments.robot.libero.sim_setup import init_simulator_worker, prepare_libero, simulator_worker_context
from prismatic.oracle.libero_pick_place import SUPPORTED_TASKS, Phase, PickPlaceOracle, supported_task_names
from prismatic.util.cli import UserError
from prismatic.util.io import atomic_output, write_json_atomic
from prismatic.vla.datasets.lerobot_writer import DEFAULT_VIDEO_CRF, MAX_VIDEO_CRF, write_lerobot_v30
from prismatic.vla.datasets.libero_hdf5 import noop_mask
from prismatic.vla.datasets.writer import LiberoEpisode
from prismatic.vla.image_utils import rotate_180

SETTLE_STEPS = 10  # no-op steps after a reset while objects settle (the evaluation's num_steps_wait)
MAX_ORACLE_STEPS = 400
MANIFEST = "manifest.json"
PREVIEW = "preview.png"
FORMATS = ("rlds", "lerobot")
MAX_ATTEMPTS_PER_DEMO = 3  # a task stops after this many attempts per requested demonstration
BYTES_PER_DEMO = 16 << 20  # disk needed per demonstration (attempt file, RLDS/LeRobot copy), with margin
SUITE_CODES = {"libero_spatial": 0, "libero_object": 1, "libero_goal": 2, "libero_10": 3, "libero_90": 4}
CAMERA_ORDER = tuple(LIBERO_CAMERAS.values())  # agentview, robot0_eye_in_hand


@dataclass
class DemoGenerationConfig:
    """vla-scripts/generate_libero_demos.py."""

    task_suite_name: str = "libero_spatial"  # LIBERO suite
    task_ids: list[int] = field(default_factory=lambda: [0])  # Tasks of the suite (the oracle's supported ones)
    num_demos: int = 50  # Successful demonstrations per task
    data_root_dir: Path = Path("datasets/oracle")  # Output: <root>/<suite>_no_noops (RLDS), <root>/<suite>_oracle_work
    format: str = "rlds"  # rlds (the trainer's LIBERO layout) | lerobot (LeRobot v3.0)
    num_workers: int = 1  # Simulator processes
    seed: int = 0  # Seeds the resets: attempt a of task t resets with seed (seed, suite, t, a)
    image_size: int = 256  # Camera resolution (upstream's RLDS data: 256)
    with_depth: bool = False  # RLDS: also store metric depth and intrinsics per camera (the geometry teacher's input)
    video_crf: int = DEFAULT_VIDEO_CRF  # LeRobot: AV1 quality of the videos, 0-63 (lower: closer to the renders)

    @property
    def dataset_name(self) -> str:
        return f"{self.task_suite_name}_no_noops" if self.format == "rlds" else f"{self.task_suite_name}_oracle_lerobot"

    @property
    def work_dir(self) -> Path:
        return self.data_root_dir / f"{self.task_suite_name}_oracle_work"

    def manifest(self) -> dict[str, Any]:
        """What fixes the demonstrations in ``work_dir``; a rerun must match it."""
        return {
            "task_suite_name": self.task_suite_name,
            "task_ids": sorted(self.task_ids),
            "seed": self.seed,
            "image_size": self.image_size,
        }


@dataclass(frozen=True)
class Attempt:
    task_id: int
    attempt: int
    bddl_file: str
    instruction: str
    reset_seed: int
    result_path: str
    image_size: int


@dataclass(frozen=True)
class TaskInfo:
    task_id: int
    instruction: str
    bddl_file: str


def reset_seed(seed: int, suite: str, task_id: int, attempt: int) -> int:
    return int(np.random.SeedSequence([seed, SUITE_CODES.get(suite, 99), task_id, attempt]).generate_state(1)[0])


def attempt_path(work_dir: Path, task_id: int, attempt: int) -> Path:
    return work_dir / f"task{task_id:02d}" / f"attempt{attempt:05d}.npz"


# --- input checks (nothing written) -------------------------------------------------------------------------------
def resolve_tasks(cfg: DemoGenerationConfig) -> list[TaskInfo]:
    """The requested tasks from LIBERO's benchmark; raises UserError for a bad suite, id or unsupported task."""
    if cfg.format not in FORMATS:
        raise UserError(f"--format {cfg.format!r}: expected one of {FORMATS}")
    if cfg.with_depth and cfg.format != "rlds":
        raise UserError(f"--with_depth True: expected --format rlds (depth is not written as {cfg.format})")
    if not 0 <= cfg.video_crf <= MAX_VIDEO_CRF:
        raise UserError(f"--video_crf {cfg.video_crf}: expected an AV1 quality in [0, {MAX_VIDEO_CRF}]")
    if cfg.num_demos < 1 or cfg.num_workers < 1:
        raise UserError(f"--num_demos {cfg.num_demos} / --num_workers {cfg.num_workers}: expected positive integers")
    prepare_libero()
    from libero.libero import benchmark, get_libero_path  # importable only after prepare_libero()

    suites = benchmark.get_benchmark_dict()
    if cfg.task_suite_name not in suites:
        raise UserError(f"--task_suite_name {cfg.task_suite_name!r}: expected one of {sorted(suites)}")
    suite = suites[cfg.task_suite_name]()
    if not cfg.task_ids or len(set(cfg.task_ids)) != len(cfg.task_ids):
        raise UserError(f"--task_ids {cfg.task_ids}: expected distinct task ids")
    tasks = []
    for task_id in cfg.task_ids:
        if not 0 <= task_id < suite.n_tasks:
            raise UserError(f"--task_ids {task_id}: expected ids in [0, {suite.n_tasks}) for {cfg.task_suite_name}")
        if (cfg.task_suite_name, task_id) not in SUPPORTED_TASKS:
            raise UserError(
                f"--task_ids {task_id}: the oracle does not support {cfg.task_suite_name} task {task_id}; "
                f"supported: {supported_task_names()}"
            )
        task = suite.get_task(task_id)
        bddl_file = str(Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file)
        tasks.append(TaskInfo(task_id, task.language, bddl_file))
    return tasks


def check_output(cfg: DemoGenerationConfig) -> None:
    """Refuses a work folder of other settings, a dataset folder this tool did not write, or too little disk."""
    manifest_path = cfg.work_dir / MANIFEST
    if manifest_path.is_file():
        saved = json.loads(manifest_path.read_text())
        if saved != cfg.manifest():
            raise UserError(
                f"--data_root_dir: {cfg.work_dir} holds demonstrations of other settings ({saved}); expected "
                f"{cfg.manifest()}, or another --data_root_dir"
            )
    elif cfg.work_dir.exists() and any(cfg.work_dir.iterdir()):
        raise UserError(f"--data_root_dir: {cfg.work_dir} exists without {MANIFEST}: expected a folder of this tool")
    dataset_dir = cfg.data_root_dir / cfg.dataset_name
    if dataset_dir.exists() and not manifest_path.is_file():
        raise UserError(
            f"--data_root_dir: {dataset_dir} exists and was not written from {cfg.work_dir}; expected another "
            "--data_root_dir (it is not overwritten)"
        )
    existing = cfg.data_root_dir
    while not existing.exists():
        existing = existing.parent
    needed = BYTES_PER_DEMO * cfg.num_demos * len(cfg.task_ids)
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise UserError(
            f"--data_root_dir: {free / 2**20:.0f} MiB free on {existing}; expected at least {needed / 2**20:.0f} MiB "
            f"for {cfg.num_demos * len(cfg.task_ids)} demonstrations"
        )


# --- one attempt (worker process) ---------------------------------------------------------------------------------
_ENVS: dict[str, Any] = {}


def oracle_env(bddl_file: str, image_size: int) -> Any:
    """This worker's env of a task: cameras off in the observations, an off-screen renderer for the kept steps."""
    if bddl_file not in _ENVS:
        from libero.libero.envs import OffScreenRenderEnv  # needs prepare_libero()

        for env in _ENVS.values():
            env.close()
        _ENVS.clear()
        _ENVS[bddl_file] = OffScreenRenderEnv(
            bddl_file_name=bddl_file, camera_heights=image_size, camera_widths=image_size, use_camera_obs=False
        )
    return _ENVS[bddl_file]


@dataclass
class OracleRun:
    """What the camera-free search of one attempt recorded, for every executed step."""

    success: bool
    mujoco_states: list[np.ndarray]
    observations: list[dict[str, np.ndarray]]
    actions: list[np.ndarray]
    phases: list[int]


def run_oracle(env: Any, seed: int) -> OracleRun:
    """Reset with ``seed``, settle, run the oracle to its end; success is LIBERO's predicate after the last step."""
    env.seed(seed)
    obs = env.reset()
    run = OracleRun(False, [], [], [], [])

    def record(action: np.ndarray, phase: int) -> dict[str, np.ndarray]:
        run.mujoco_states.append(env.get_sim_state().copy())
        run.observations.append(obs)
        run.actions.append(np.asarray(action, np.float32))
        run.phases.append(phase)
        return env.step(list(map(float, action)))[0]

    for _ in range(SETTLE_STEPS):
        obs = record(np.asarray(LIBERO_DUMMY_ACTION), int(Phase.APPROACH))
    oracle = PickPlaceOracle(env, obs)
    for _ in range(MAX_ORACLE_STEPS):
        action, phase = oracle.act(obs)
        if phase == Phase.DONE:
            break
        obs = record(action, int(phase))
    run.success = bool(env.check_success())
    return run


def render_state(env: Any, state: np.ndarray, image_size: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Both cameras at a stored MuJoCo state: raw RGB frames, metric depth maps (OpenGL rows, bottom first) and
    camera-to-world poses [2, 4, 4]."""
    sim = env.sim
    sim.set_state_from_flattened(state)
    sim.forward()
    near, far = clip_planes(sim.model)
    rgb, depth, poses = [], [], []
    for camera in CAMERA_ORDER:
        frame, buffer = sim.render(camera_name=camera, width=image_size, height=image_size, depth=True)
        rgb.append(frame)
        depth.append(depth_buffer_to_metric(buffer, near, far))
        poses.append(camera_to_world(sim.data, sim.model.camera_name2id(camera)))
    return rgb, depth, np.stack(poses)


def depth_to_millimetres(depth: np.ndarray) -> np.ndarray:
    return np.clip(np.round(depth * 1000.0), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def run_attempt(job: Attempt) -> None:
    """Search one attempt without cameras; if it succeeds, render its kept steps; save the result atomically."""
    started = time.perf_counter()
    env = oracle_env(job.bddl_file, job.image_size)
    run = run_oracle(env, job.reset_seed)
    payload: dict[str, Any] = {"success": np.array(run.success), "oracle_steps": np.array(len(run.actions))}
    if run.success:
        actions = np.stack(run.actions)
        keep = np.flatnonzero(~noop_mask(actions))
        frames: dict[str, list[np.ndarray]] = {key: [] for key in ("images", "wrist_images", "depth", "extrinsics")}
        for index in keep:
            rgb, depth, poses = render_state(env, run.mujoco_states[index], job.image_size)
            frames["images"].append(rotate_180(rgb[0]))
            frames["wrist_images"].append(rotate_180(rgb[1]))
            frames["depth"].append(np.stack([depth_to_millimetres(rotate_180(d)) for d in depth]))
            frames["extrinsics"].append(poses)
        model = env.sim.model
        payload.update(
            {key: np.stack(values) for key, values in frames.items()},
            intrinsics=np.stack(
                [
                    camera_intrinsics(float(model.cam_fovy[model.camera_name2id(c)]), job.image_size, job.image_size)
                    for c in CAMERA_ORDER
                ]
            ),
            mujoco_states=np.stack([run.mujoco_states[i] for i in keep]),
            phases=np.asarray([run.phases[i] for i in keep], np.int8),
            states=np.stack([robot_state(run.observations[i]) for i in keep]).astype(np.float32),
            joint_states=np.stack([run.observations[i]["robot0_joint_pos"] for i in keep]).astype(np.float32),
            actions=actions[keep],
            num_noops=np.array(len(actions) - len(keep)),
            instruction=np.array(job.instruction),
            file_path=np.array(f"task{job.task_id:02d}/attempt{job.attempt:05d}"),
        )
    payload["seconds"] = np.array(time.perf_counter() - started)
    payload["reset_seed"] = np.array(job.reset_seed)
    with atomic_output(job.result_path) as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(handle, **payload)


# --- the run (main process) ---------------------------------------------------------------------------------------
@dataclass
class TaskOutcome:
    task_id: int
    attempts: int
    successes: int
    kept: list[Path]  # the first num_demos successful attempts, in attempt order
    seconds: list[float]  # per finished attempt

    @property
    def success_rate(self) -> float:
        return self.successes / max(self.attempts, 1)


def read_outcome(path: Path) -> tuple[bool, float]:
    with np.load(path) as saved:
        return bool(saved["success"]), float(saved["seconds"])


def _task_outcome(cfg: DemoGenerationConfig, task: TaskInfo) -> TaskOutcome:
    outcome = TaskOutcome(task.task_id, 0, 0, [], [])
    for attempt in range(cfg.num_demos * MAX_ATTEMPTS_PER_DEMO):
        path = attempt_path(cfg.work_dir, task.task_id, attempt)
        if not path.is_file():
            break
        success, seconds = read_outcome(path)
        outcome.attempts += 1
        outcome.successes += success
        outcome.seconds.append(seconds)
        if success and len(outcome.kept) < cfg.num_demos:
            outcome.kept.append(path)
    return outcome


def _pending_attempts(cfg: DemoGenerationConfig, tasks: list[TaskInfo]) -> list[Attempt]:
    """The next attempts each task needs: as many as demonstrations are missing (bounded per task)."""
    jobs = []
    for task in tasks:
        outcome = _task_outcome(cfg, task)
        missing = cfg.num_demos - len(outcome.kept)
        limit = cfg.num_demos * MAX_ATTEMPTS_PER_DEMO
        for attempt in range(outcome.attempts, min(outcome.attempts + missing, limit)):
            jobs.append(
                Attempt(
                    task.task_id,
                    attempt,
                    task.bddl_file,
                    task.instruction,
                    reset_seed(cfg.seed, cfg.task_suite_name, task.task_id, attempt),
                    str(attempt_path(cfg.work_dir, task.task_id, attempt)),
                    cfg.image_size,
                )
            )
    return jobs


def run_attempts(cfg: DemoGenerationConfig, tasks: list[TaskInfo]) -> None:
    """Runs attempts in ``num_workers`` spawned processes until every task has its demonstrations (or its limit)."""
    if not _pending_attempts(cfg, tasks):
        return
    total = cfg.num_demos * len(tasks)
    have = sum(len(_task_outcome(cfg, task).kept) for task in tasks)
    progress = tqdm(total=total, initial=have, desc="demonstrations", unit="demo")
    context = simulator_worker_context()
    with context.Pool(cfg.num_workers, initializer=init_simulator_worker) as pool:
        while jobs := _pending_attempts(cfg, tasks):
            # Successes of the first (lowest) attempts are kept, so whichever worker finishes first does not matter.
            for _ in pool.imap_unordered(run_attempt, jobs):
                kept = sum(len(_task_outcome(cfg, task).kept) for task in tasks)
                progress.update(kept - progress.n)
    progress.close()


def stored_frame_intrinsics(intrinsics: np.ndarray, width: int) -> np.ndarray:
    """Intrinsics of the stored frame (the upright image mirrored left-right) in the same camera frame: column c of
    the stored frame is column ``width - 1 - c`` of the upright one, so fx changes sign and cx mirrors."""
    mirrored = np.array(intrinsics, np.float32)
    mirrored[..., 0, 0] *= -1
    mirrored[..., 0, 2] = width - 1 - mirrored[..., 0, 2]
    return mirrored


def load_episode(path: Path, with_depth: bool) -> LiberoEpisode:
    """A kept attempt as an episode; ``with_depth``: with metric depth [T, S, S] float32 and per-step intrinsics."""
    episode = LiberoEpisode.from_npz(path)
    if not with_depth:
        return episode
    with np.load(path) as saved:
        depth, intrinsics = saved["depth"], saved["intrinsics"]
    metres = depth.astype(np.float32) / np.float32(1000.0)
    per_step = np.broadcast_to(stored_frame_intrinsics(intrinsics, depth.shape[-1]), (len(depth), 2, 3, 3))
    return replace(
        episode,
        depths=metres[:, 0],
        wrist_depths=metres[:, 1],
        intrinsics=np.ascontiguousarray(per_step[:, 0]),
        wrist_intrinsics=np.ascontiguousarray(per_step[:, 1]),
    )


def kept_episodes(outcomes: list[TaskOutcome], with_depth: bool = False) -> Iterator[LiberoEpisode]:
    for outcome in outcomes:
        for path in outcome.kept:
            yield load_episode(path, with_depth)


def save_preview(outcomes: list[TaskOutcome], path: Path, rows: int = 4) -> Path:
    """Rows: kept demonstrations; columns: agentview at start, middle and end, wrist and depth at the middle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = [(o.task_id, p) for o in outcomes for p in o.kept][:rows]
    figure, axes = plt.subplots(len(picks), 5, figsize=(12, 2.6 * len(picks)), squeeze=False)
    for row, (task_id, demo_path) in enumerate(picks):
        with np.load(demo_path) as saved:
            images, wrist, depth, phases = saved["images"], saved["wrist_images"], saved["depth"], saved["phases"]
        middle = len(images) // 2
        panels = [
            (images[0], "agentview t=0"),
            (images[middle], f"agentview t={middle} ({Phase(int(phases[middle])).name.lower()})"),
            (images[-1], f"agentview t={len(images) - 1}"),
            (wrist[middle], f"wrist t={middle}"),
            (depth[middle, 0] / 1000.0, "agentview depth [m]"),
        ]
        for column, (image, title) in enumerate(panels):
            axes[row, column].imshow(image, cmap="viridis" if image.ndim == 2 else None)
            axes[row, column].set_title(
                f"task {task_id} {demo_path.stem}\n{title}" if column == 0 else title, fontsize=8
            )
            axes[row, column].axis("off")
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=70, format="png")
    plt.close(figure)
    return path


@dataclass
class GenerationSummary:
    outcomes: list[TaskOutcome]
    dataset_dir: Path | None
    preview: Path | None

    def lines(self) -> list[str]:
        lines = []
        for outcome in self.outcomes:
            seconds = np.mean(outcome.seconds) if outcome.seconds else float("nan")
            lines.append(
                f"task {outcome.task_id}: oracle success {outcome.successes}/{outcome.attempts} "
                f"({100 * outcome.success_rate:.0f}%), {len(outcome.kept)} demonstrations kept, "
                f"{seconds:.1f} s per attempt"
            )
        attempts = sum(o.attempts for o in self.outcomes)
        kept = sum(len(o.kept) for o in self.outcomes)
        seconds = sum(sum(o.seconds) for o in self.outcomes)
        lines.append(
            f"total: {sum(o.successes for o in self.outcomes)}/{attempts} attempts succeeded; "
            f"{seconds / max(kept, 1):.1f} s of worker time per kept demonstration; dataset: {self.dataset_dir}"
        )
        return lines


def write_dataset(cfg: DemoGenerationConfig, outcomes: list[TaskOutcome]) -> Path:
    """Writes the kept demonstrations as RLDS or LeRobot v3.0 in a temporary folder, then swaps it into place."""
    staging = cfg.data_root_dir / f".staging-{cfg.dataset_name}"
    shutil.rmtree(staging, ignore_errors=True)
    if cfg.format == "rlds":
        from prismatic.vla.datasets.writer import write_libero_rlds  # loads TensorFlow: after the workers are gone

        write_libero_rlds(
            kept_episodes(outcomes, cfg.with_depth),
            staging,
            cfg.dataset_name,
            image_size=cfg.image_size,
            with_depth=cfg.with_depth,
        )
    else:
        write_lerobot_v30(kept_episodes(outcomes), staging / cfg.dataset_name, fps=20, video_crf=cfg.video_crf)
    final = cfg.data_root_dir / cfg.dataset_name
    previous = cfg.data_root_dir / f".previous-{cfg.dataset_name}"
    shutil.rmtree(previous, ignore_errors=True)
    if final.exists():
        final.rename(previous)
    (staging / cfg.dataset_name).rename(final)
    shutil.rmtree(previous, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    return final


def generate_demos(cfg: DemoGenerationConfig) -> GenerationSummary:
    """Checks the input, runs the missing attempts, writes the dataset and the preview."""
    tasks = resolve_tasks(cfg)
    check_output(cfg)
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cfg.work_dir / MANIFEST, cfg.manifest())
    run_attempts(cfg, tasks)
    outcomes = [_task_outcome(cfg, task) for task in tasks]
    write_json_atomic(
        cfg.work_dir / "outcomes.json",
        {
            "config": {k: str(v) for k, v in asdict(cfg).items()},
            "tasks": [asdict(o) | {"kept": [str(p) for p in o.kept]} for o in outcomes],
        },
    )
    if not any(o.kept for o in outcomes):
        return GenerationSummary(outcomes, None, None)
    preview = save_preview(outcomes, cfg.work_dir / PREVIEW)
    return GenerationSummary(outcomes, write_dataset(cfg, outcomes), preview)
