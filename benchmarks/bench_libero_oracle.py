"""The scripted LIBERO oracle: success rate on fresh seeded resets, and where a demonstration's time goes.

    python benchmarks/bench_libero_oracle.py [--suite libero_spatial] [--task_id 0] [--attempts 20] [--render_steps 10]

Runs the oracle without cameras on ``--attempts`` seeded resets (the seeds ``generate_libero_demos.py`` uses with
``--seed 0``) and prints, per attempt, LIBERO's success predicate after the script, the number of steps and the
seconds of reset + search; then the success rate, and the cost of rendering one kept step (both cameras with depth,
from a stored MuJoCo state: median over ``--render_steps`` steps of the last successful attempt).
Rendering runs in this process: it never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from experiments.robot.libero.demo_generation import (
    DemoGenerationConfig,
    oracle_env,
    render_state,
    reset_seed,
    resolve_tasks,
    run_oracle,
)
from experiments.robot.libero.sim_setup import configure_rendering


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--task_id", type=int, default=0)
    parser.add_argument("--attempts", type=int, default=20)
    parser.add_argument("--render_steps", type=int, default=10)
    parser.add_argument("--image_size", type=int, default=256)
    args = parser.parse_args()
    print(f"CPU cores: {os.cpu_count()}, rendering: {configure_rendering()}, load average: {os.getloadavg()}")
    cfg = DemoGenerationConfig(task_suite_name=args.suite, task_ids=[args.task_id], image_size=args.image_size)
    (task,) = resolve_tasks(cfg)
    env = oracle_env(task.bddl_file, args.image_size)
    successes, search_seconds, last_success = 0, [], None
    for attempt in range(args.attempts):
        started = time.perf_counter()
        run = run_oracle(env, reset_seed(cfg.seed, args.suite, args.task_id, attempt))
        search_seconds.append(time.perf_counter() - started)
        successes += run.success
        last_success = run if run.success else last_success
        print(f"attempt {attempt}: success {run.success}, {len(run.actions)} steps, {search_seconds[-1]:.1f} s")
    print(f"oracle success: {successes}/{args.attempts} ({100 * successes / args.attempts:.0f}%)")
    print(f"reset + camera-free search: median {statistics.median(search_seconds):.1f} s per attempt")
    if last_success is not None:
        render_seconds = []
        for state in last_success.mujoco_states[-args.render_steps :]:
            started = time.perf_counter()
            render_state(env, state, args.image_size)
            render_seconds.append(time.perf_counter() - started)
        median = statistics.median(render_seconds)
        print(f"rendering one kept step (2 cameras + depth, {args.image_size} px): median {1000 * median:.0f} ms")
    print(f"load average at the end: {os.getloadavg()}")
    env.close()


if __name__ == "__main__":
    main()
