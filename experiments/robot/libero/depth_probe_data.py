"""Writing a depth-probing data set from the LIBERO simulator (see prismatic/probing/data.py for the format).

Scenes are the suites' initial states (variant 0) plus ``num_perturbations`` seeded random perturbations of each
(objects moved and turned, arm joints offset; variants 1..k). Each scene's randomness comes from its own seed
(``seed``, suite, task, initial state, variant), so a resumed run renders the same scenes as an uninterrupted one.
The train/test split is drawn per initial state: all variants of one initial state fall on the same side.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from experiments.robot.libero.depth_render import (
    LIBERO_CAMERAS,
    Perturbation,
    perturb_state,
    policy_intrinsics,
    render_scene,
    robot_qpos_indexes,
)
from experiments.robot.libero.libero_utils import get_libero_env
from experiments.robot.libero.sim_setup import (
    assert_tensorflow_absent,
    configure_rendering,
    prepare_libero,
    task_init_states,
)
from prismatic.probing.data import (
    FORMAT_VERSION,
    META_NAME,
    PREVIEW_NAME,
    ScenePlan,
    read_meta,
    scene_name,
    scene_path,
    write_meta,
    write_scene,
)
from prismatic.probing.figures import save_preview_grid
from prismatic.util.cli import UserError

SUITE_CODES = {"libero_spatial": 0, "libero_object": 1, "libero_goal": 2, "libero_10": 3, "libero_90": 4}


@dataclass
class DepthProbeDataConfig:
    out_dir: Path = Path("data/depth_probe")  # Output folder (resumed when it holds a run with the same settings)
    suites: list[str] = field(default_factory=lambda: ["libero_spatial"])  # LIBERO suites to render
    task_ids: list[int] | None = None  # Tasks of every suite (None: all)
    num_init_states: int = 10  # Initial states per task (the suite's first k)
    num_perturbations: int = 2  # Random perturbations per initial state, besides the state itself
    seed: int = 7  # Seed of the perturbations and of the split
    test_fraction: float = 0.2  # Share of each suite's initial states (with their perturbations) in the test split
    env_img_res: int = 256  # Render resolution (the evaluation's default)
    center_crop: bool = True  # The policy's center crop (True for checkpoints trained with image_aug, as the paper's)
    crop_area: float = 0.9
    settle_steps: int = 10  # No-op steps before rendering (the evaluation's num_steps_wait)
    object_shift_m: float = 0.03
    object_yaw_rad: float = 0.5
    robot_joint_rad: float = 0.1
    preview_scenes: int = 6  # Scenes in preview.png

    def check(self) -> None:
        unknown = [suite for suite in self.suites if suite not in SUITE_CODES]
        if not self.suites or unknown:
            raise UserError(f"--suites {self.suites}: expected LIBERO suites among {sorted(SUITE_CODES)}")
        if self.num_init_states < 1 or self.num_perturbations < 0:
            raise UserError("--num_init_states must be >= 1 and --num_perturbations >= 0")
        if not 0 < self.test_fraction < 1:
            raise UserError(f"--test_fraction {self.test_fraction}: expected a value in (0, 1)")
        if self.env_img_res < 16 or self.settle_steps < 0:
            raise UserError("--env_img_res must be >= 16 and --settle_steps >= 0")
        if not 0 < self.crop_area <= 1:
            raise UserError(f"--crop_area {self.crop_area}: expected a value in (0, 1]")

    def settings(self) -> dict:
        """Everything that determines the rendered scenes (compared on resume)."""
        return {key: value for key, value in asdict(self).items() if key not in ("out_dir", "preview_scenes")}


def _test_init_states(cfg: DepthProbeDataConfig, suite: str, groups: list[tuple[int, int]]) -> set[tuple[int, int]]:
    rng = np.random.default_rng([cfg.seed, SUITE_CODES[suite]])
    num_test = min(max(1, round(cfg.test_fraction * len(groups))), len(groups) - 1) if len(groups) > 1 else 0
    order = rng.permutation(len(groups))
    return {groups[i] for i in order[:num_test]}


def plan_scenes(cfg: DepthProbeDataConfig, task_suites: dict) -> list[ScenePlan]:
    """Every scene of the run, in rendering order, with its split."""
    scenes = []
    for suite in cfg.suites:
        task_suite = task_suites[suite]
        task_ids = list(range(task_suite.n_tasks)) if cfg.task_ids is None else cfg.task_ids
        bad = [task_id for task_id in task_ids if not 0 <= task_id < task_suite.n_tasks]
        if bad:
            raise UserError(f"--task_ids {bad}: {suite} has tasks 0..{task_suite.n_tasks - 1}")
        for task_id in task_ids:
            available = len(task_init_states(task_suite, task_id))
            if available < cfg.num_init_states:
                raise UserError(
                    f"--num_init_states {cfg.num_init_states}: {suite} task {task_id} has {available} initial states"
                )
        groups = [(task_id, init) for task_id in task_ids for init in range(cfg.num_init_states)]
        test_groups = _test_init_states(cfg, suite, groups)
        for task_id, init in groups:
            instruction = task_suite.get_task(task_id).language
            for variant in range(cfg.num_perturbations + 1):
                split = "test" if (task_id, init) in test_groups else "train"
                name = scene_name(suite, task_id, init, variant)
                scenes.append(ScenePlan(name, suite, task_id, init, variant, split, instruction))
    return scenes


def _check_resume(cfg: DepthProbeDataConfig) -> None:
    if not (cfg.out_dir / META_NAME).exists():
        return
    previous = read_meta(cfg.out_dir)["settings"]
    changed = sorted(key for key, value in cfg.settings().items() if previous.get(key) != _jsonable(value))
    if changed:
        raise UserError(
            f"--out_dir {cfg.out_dir} holds data rendered with other settings ({', '.join(changed)}); "
            "choose a new --out_dir or repeat the earlier flags to resume"
        )


def _jsonable(value: object) -> object:
    return str(value) if isinstance(value, Path) else value


def write_depth_probe_data(cfg: DepthProbeDataConfig) -> Path:
    """Render every planned scene not on disk yet, then write the preview grid; returns the folder."""
    cfg.check()
    _check_resume(cfg)
    configure_rendering()
    prepare_libero()
    assert_tensorflow_absent()
    from libero.libero import benchmark, get_libero_path  # needs prepare_libero()

    benchmark_dict = benchmark.get_benchmark_dict()
    task_suites = {suite: benchmark_dict[suite]() for suite in cfg.suites}
    scenes = plan_scenes(cfg, task_suites)
    meta = {
        "format_version": FORMAT_VERSION,
        "settings": {key: _jsonable(value) for key, value in cfg.settings().items()},
        "cameras": LIBERO_CAMERAS,
        "preprocessing": {"image_size": 224, "center_crop": cfg.center_crop, "crop_area": cfg.crop_area},
        "depth_units": "metres along the optical axis",
        "scenes": [asdict(scene) for scene in scenes],
    }
    perturbation = Perturbation(cfg.object_shift_m, cfg.object_yaw_rad, cfg.robot_joint_rad)
    todo = [scene for scene in scenes if not scene_path(cfg.out_dir, scene.name).exists()]
    env, env_task = None, None
    try:
        for scene in tqdm(todo, desc="rendering scenes", unit="scene", disable=not todo):
            task_suite = task_suites[scene.suite]
            if env_task != (scene.suite, scene.task_id):
                if env is not None:
                    env.close()
                task = task_suite.get_task(scene.task_id)
                bddl_file = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
                env = get_libero_env(bddl_file, cfg.env_img_res, camera_depths=True)
                env.reset()
                env_task = (scene.suite, scene.task_id)
                if "intrinsics" not in meta:
                    intrinsics = policy_intrinsics(env, cfg.env_img_res, cfg.center_crop, cfg.crop_area)
                    meta["intrinsics"] = {view: matrix.tolist() for view, matrix in intrinsics.items()}
                    write_meta(cfg.out_dir, meta)
            initial_states = task_init_states(task_suite, scene.task_id)
            state = np.asarray(initial_states[scene.init_index], dtype=np.float64)
            if scene.variant > 0:
                rng = np.random.default_rng(
                    [cfg.seed, SUITE_CODES[scene.suite], scene.task_id, scene.init_index, scene.variant]
                )
                state = perturb_state(state, env.sim.model, robot_qpos_indexes(env), rng, perturbation)
            rendered = render_scene(env, state, cfg.settle_steps, cfg.center_crop, cfg.crop_area)
            write_scene(
                cfg.out_dir,
                scene.name,
                rgb=rendered.rgb,
                depth=rendered.depth,
                state=rendered.state,
                camera_poses=rendered.camera_poses,
            )
    finally:
        if env is not None:
            env.close()
    if "intrinsics" not in meta:  # everything was on disk already
        meta["intrinsics"] = read_meta(cfg.out_dir)["intrinsics"]
    write_meta(cfg.out_dir, meta)
    save_preview_grid(cfg.out_dir, cfg.preview_scenes, cfg.out_dir / PREVIEW_NAME)
    return cfg.out_dir
