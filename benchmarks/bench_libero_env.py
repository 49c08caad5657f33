"""LIBERO evaluation costs: observation preprocessing, simulator step and reset, and parallel-worker throughput.

    python benchmarks/bench_libero_env.py [--suite libero_spatial] [--env_img_res 256] [--steps 20]
                                          [--episodes 4] [--num_workers 2] [--repeats 3] [--skip_throughput]

Prints (medians after a warm-up where it applies):
- the TF-free observation chain (rotate, JPEG, lanczos3 to 224) and the center crop, per frame;
- ``env.step`` with both cameras rendered, and ``env.reset`` (a hard reset rebuilds the MuJoCo model);
- episodes per hour with the cameras rendered at every step (the evaluation before query-step rendering) and only at
  the steps where the policy reads them (``CameraGate``), interleaved A B A B over ``--repeats`` rounds of one
  ``--steps``-step episode each (reset included), with the spread;
- the wall time of ``--episodes`` short episodes (``--steps`` policy steps, zero-motion policy) on one worker and on
  ``--num_workers`` workers, and their ratio, measured in one run.
Rendering runs in this process and in spawned workers, so this script never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np

from experiments.robot.libero.config import GenerateConfig
from experiments.robot.libero.env_worker import EpisodeSettings, run_episode
from experiments.robot.libero.evaluation import eval_libero, plan_tasks
from experiments.robot.libero.libero_utils import CameraGate, get_libero_env
from experiments.robot.libero.sim_setup import configure_rendering, prepare_libero
from experiments.robot.policy import Observation
from prismatic.vla.image_utils import center_crop_image, resize_image_for_policy, rotate_180


class ZeroMotionPolicy:
    """Arm still, gripper open: isolates simulator and runner costs from the model."""

    gripper = "libero"

    def predict_chunk(self, observation: Observation, instruction: str) -> np.ndarray:
        chunk = np.zeros((8, 7))
        chunk[:, -1] = 1.0
        return chunk


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def bench_env(args: argparse.Namespace) -> None:
    plan = plan_tasks(GenerateConfig(task_suite_name=args.suite, task_ids=[0], num_trials_per_task=1), print)[0]
    started = time.perf_counter()
    env = get_libero_env(plan.bddl_file, args.env_img_res)
    print(f"env construction: {time.perf_counter() - started:.2f} s")
    print(f"env.reset: {median_seconds(env.reset, 3):.2f} s")
    obs = env.set_init_state(plan.episodes[0].initial_state)
    step = lambda: env.step([0.0] * 6 + [-1.0])
    step()
    print(f"env.step at {args.env_img_res}x{args.env_img_res}, 2 cameras: {1000 * median_seconds(step, 10):.0f} ms")
    resized = resize_image_for_policy(rotate_180(obs["agentview_image"]))
    resize_seconds = median_seconds(lambda: resize_image_for_policy(rotate_180(obs["agentview_image"])), 10)
    print(f"rotate + JPEG + lanczos3 -> 224: {1000 * resize_seconds:.1f} ms")
    print(f"center crop: {1000 * median_seconds(lambda: center_crop_image(resized), 10):.1f} ms")
    env.close()


def bench_query_rendering(args: argparse.Namespace) -> None:
    plan = plan_tasks(GenerateConfig(task_suite_name=args.suite, task_ids=[0], num_trials_per_task=1), print)[0]
    env = get_libero_env(plan.bddl_file, args.env_img_res)
    settings = EpisodeSettings(args.suite, "openvla", 10, args.steps, 8, 7, args.env_img_res, None)
    policy = ZeroMotionPolicy()
    hours: dict[str, list[float]] = {"every step": [], "query steps": []}
    for _ in range(args.repeats):
        for mode in hours:
            started = time.perf_counter()
            env.reset()
            cameras = CameraGate() if mode == "query steps" else None
            if cameras is not None:
                cameras.install(env)
            obs = env.set_init_state(plan.episodes[0].initial_state)
            run_episode(env, obs, settings, lambda observation: policy.predict_chunk(observation, ""), False, cameras)
            hours[mode].append((time.perf_counter() - started) / 3600)
    for mode, values in hours.items():
        rates = [1 / value for value in values]
        print(
            f"episodes/hour, cameras rendered at {mode}: median {statistics.median(rates):.0f} "
            f"(spread {min(rates):.0f}-{max(rates):.0f}, {args.steps} policy steps + 10 wait steps, reset included)"
        )
    speedup = statistics.median(hours["every step"]) / statistics.median(hours["query steps"])
    print(f"query-step rendering speed-up: {speedup:.2f}x")
    env.close()


def bench_throughput(args: argparse.Namespace, log_dir: str) -> None:
    walls = {}
    for num_workers in (1, args.num_workers):
        cfg = GenerateConfig(
            task_suite_name=args.suite,
            task_ids=[0],
            num_trials_per_task=args.episodes,
            max_steps=args.steps,
            env_img_res=args.env_img_res,
            num_workers=num_workers,
            local_log_dir=log_dir,
            run_id=f"bench-{num_workers}-workers",
        )
        started = time.perf_counter()
        eval_libero(cfg, ZeroMotionPolicy(), ZeroMotionPolicy.gripper)
        walls[num_workers] = time.perf_counter() - started
        print(f"{args.episodes} episodes x {args.steps} steps on {num_workers} worker(s): {walls[num_workers]:.1f} s")
    print(f"speed-up with {args.num_workers} workers: {walls[1] / walls[args.num_workers]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--env_img_res", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip_throughput", action="store_true", help="only the env costs and query-step rendering")
    args = parser.parse_args()
    print(f"CPU cores: {os.cpu_count()}, rendering: {configure_rendering()}")
    prepare_libero()
    with tempfile.TemporaryDirectory() as log_dir:
        bench_env(args)
        bench_query_rendering(args)
        if not args.skip_throughput:
            bench_throughput(args, log_dir)


if __name__ == "__main__":
    main()
