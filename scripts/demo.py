"""The main job on an embedded tiny default, on CPU (``make demo``).

1. tiny base checkpoints: an OpenVLA folder in openvla-7b's released layout and a VGGT ``model.pt``;
2. a synthetic dataset in the LIBERO RLDS format (a learnable "move the gripper to the <colour> block" task);
3. ``finetune_align.py`` under ``torchrun`` with 2 processes (Spatial Forcing, the paper's flags, tiny sizes);
4. ``merge_lora_weights_and_save.py`` (merge + check);
5. ``run_libero_eval.py`` in the real LIBERO simulator, a couple of short episodes of one suite;
then where every artifact is and a one-line summary. Everything goes under ``runs/demo/`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from prismatic.testing.tiny_checkpoints import tiny_finetune_flags

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET_NAME = "libero_spatial_no_noops"
RUN_ID = "tiny-sf-demo"
EVAL_RUN_ID = "demo"


def run(title: str, command: list[str], env: dict[str, str]) -> float:
    """Runs one stage with its output streaming to the terminal; returns its duration in seconds."""
    print(f"\n=== {title} ===\n$ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO_ROOT, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "demo")
    parser.add_argument("--max_steps", type=int, default=60, help="training steps (optimizer steps)")
    parser.add_argument("--episodes", type=int, default=2, help="LIBERO episodes to evaluate")
    parser.add_argument("--episode_steps", type=int, default=40, help="policy steps per LIBERO episode")
    args = parser.parse_args()

    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    ckpt_dir, data_dir, run_root, eval_dir = out / "ckpts", out / "data", out / "runs", out / "eval"
    env = {**os.environ, "USE_TF": "0", "WANDB_MODE": "offline", "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"}
    python, scripts = sys.executable, REPO_ROOT / "vla-scripts"
    durations: dict[str, float] = {}

    durations["checkpoints"] = run(
        "1/5 tiny base checkpoints",
        [python, str(scripts / "make_tiny_checkpoints.py"), f"--out_dir={ckpt_dir}"],
        env,
    )
    vla_dir, vggt_path = ckpt_dir / "tiny-openvla", ckpt_dir / "tiny-vggt-model.pt"
    durations["dataset"] = run(
        "2/5 synthetic LIBERO-format dataset",
        [
            python,
            str(scripts / "make_synthetic_libero.py"),
            f"--data_root_dir={data_dir}",
            f"--dataset_name={DATASET_NAME}",
            "--num_episodes=16",
            "--episode_length=32",
        ],
        env,
    )
    train_flags = tiny_finetune_flags(
        vla_dir,
        vggt_path,
        data_dir,
        run_root,
        DATASET_NAME,
        run_id_override=RUN_ID,
        batch_size=4,
        learning_rate=1e-3,
        num_steps_before_decay=args.max_steps,
        max_steps=args.max_steps,
        save_freq=args.max_steps,
        save_latest_checkpoint_only=True,
        lora_rank=8,
        shuffle_buffer_size=256,
        use_wandb=True,
        wandb_log_freq=5,
    )
    durations["training"] = run(
        "3/5 finetune_align.py under torchrun (2 CPU processes)",
        [
            python,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            str(scripts / "finetune_align.py"),
            *train_flags,
        ],
        env,
    )
    checkpoint = run_root / RUN_ID  # latest-only checkpoints live in the run folder itself, as upstream
    durations["merge"] = run(
        "4/5 merge the LoRA adapter into the base model (and check it)",
        [
            python,
            str(scripts / "merge_lora_weights_and_save.py"),
            f"--base_checkpoint={vla_dir}",
            f"--lora_finetuned_checkpoint_dir={checkpoint}",
            "--dtype=float32",
        ],
        env,
    )
    durations["evaluation"] = run(
        "5/5 LIBERO evaluation (real simulator, off-screen rendering)",
        [
            python,
            str(REPO_ROOT / "experiments" / "robot" / "libero" / "run_libero_eval.py"),
            f"--pretrained_checkpoint={checkpoint}",
            "--task_suite_name=libero_spatial",
            "--task_ids=[0]",
            f"--num_trials_per_task={args.episodes}",
            f"--max_steps={args.episode_steps}",
            "--save_videos=True",
            f"--local_log_dir={eval_dir}",
            f"--run_id={EVAL_RUN_ID}",
        ],
        env,
    )
    summarize(out, checkpoint, run_root / RUN_ID, eval_dir, durations)


def summarize(out: Path, checkpoint: Path, run_dir: Path, eval_dir: Path, durations: dict[str, float]) -> None:
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    episodes_path = eval_dir / f"{EVAL_RUN_ID}.jsonl"
    episodes = [json.loads(line) for line in episodes_path.read_text().splitlines()]
    successes = sum(bool(e["success"]) for e in episodes)
    videos = sorted(eval_dir.rglob("*.mp4"))

    def show(path: Path) -> str:
        return str(path.relative_to(out))

    print(f"\n=== artifacts (under {out}) ===")
    print(f"base checkpoints:  {show(out / 'ckpts')}")
    print(f"dataset:           {show(out / 'data' / DATASET_NAME)}")
    print(f"checkpoint:        {show(checkpoint)} (merged model, lora_adapter/, heads, statistics)")
    print(f"training metrics:  {show(run_dir / 'metrics.jsonl')}")
    print(f"evaluation log:    {show(eval_dir / f'{EVAL_RUN_ID}.txt')}")
    print(f"episode results:   {show(episodes_path)}")
    print(f"success chart:     {', '.join(show(p) for p in sorted(eval_dir.rglob('*.png')))}")
    print(f"rollout videos:    {', '.join(show(p) for p in videos)}")
    first, last = metrics[0], metrics[-1]
    print(
        f"\nSUMMARY: trained {last['step']} steps on 2 processes (action L1 {first['action_loss']:.3f} -> "
        f"{last['action_loss']:.3f}, align loss {first['align_loss']:.3f} -> {last['align_loss']:.3f}), merged "
        f"and checked the LoRA weights, ran {len(episodes)} LIBERO episodes ({successes} successes, "
        f"{len(videos)} videos) in {sum(durations.values()) / 60:.1f} min."
    )


if __name__ == "__main__":
    main()
