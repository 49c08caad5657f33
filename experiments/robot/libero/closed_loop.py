"""``make closed-loop`` (scripts/closed_loop.py): demonstrations -> training -> LIBERO, on real simulator data, on CPU.

Stages, each skipped when its work is already in the cache (``--cache``, default
``~/.cache/spatial_forcing/closed_loop``), so a rerun resumes where an earlier one stopped:

1. ``demos``: ``generate_libero_demos.py`` (libero_spatial task 0, the scripted oracle) into ``data/``, as RLDS or
   (``--data_format lerobot``) LeRobot v3.0; both copies come from the same oracle attempts, so the second format
   only writes its dataset;
2. ``base``: ``make_tiny_checkpoints.py`` into ``base/`` (a randomly initialised tiny OpenVLA); with
   ``--model_family pi0``, a randomly initialised tiny pi0 of ``PI0_BASE_SIZES`` with the tiny SentencePiece
   tokenizer into ``base/tiny-pi0/``;
3. ``train``: ``finetune.py --preset closed_loop_cpu`` (``closed_loop_pi0_cpu`` for pi0; the whole model from
   scratch) into ``runs/closed-loop/`` (``runs/closed-loop-lerobot/`` from the LeRobot copy,
   ``runs/closed-loop-pi0/`` for pi0), resumed from its latest checkpoint;
4. ``eval``: ``run_libero_eval.py`` in process on the benchmark's initial states 0..N-1 (held out: the
   demonstrations come from seeded resets), resumed by its run id
   (``in-process-step<max_steps>``; ``in-process-lerobot-step<max_steps>`` from the LeRobot copy,
   ``in-process-pi0-step<max_steps>`` for pi0);
5. ``serve_eval``: the same episodes through ``serve_policy.py`` (a loopback server, ``--policy_server``);
6. ``report``: ``results.json`` (success per episode of both, their agreement, Wilson 95 % interval),
   ``loss.png`` (the training loss curve) and ``rollout.png`` (8 frames of the first successful in-process episode's
   video, else of the first episode's; only the first ``VIDEO_EPISODES`` episodes are recorded);
   ``results-lerobot.json``, ``loss-lerobot.png`` and ``rollout-lerobot.png`` from the LeRobot copy (``-pi0`` for
   pi0, ``-pi0-lerobot`` for both).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import imageio.v2 as imageio
import numpy as np
from matplotlib.figure import Figure

from experiments.robot.libero.demo_generation import DemoGenerationConfig
from experiments.robot.results import EpisodeResult, EpisodeStore, wilson_interval
from prismatic.testing.pi0_tiny import TINY_PI0_DIRNAME, write_tiny_pi0_checkpoint
from prismatic.testing.tiny_checkpoints import TINY_VLA_DIRNAME
from prismatic.training import checkpointing as ckpt
from prismatic.training.config import FinetuneConfig
from prismatic.training.metrics import read_metrics
from prismatic.training.presets import get_preset
from prismatic.util.cli import UserError
from prismatic.util.file_checks import check_writable_dir
from prismatic.util.io import atomic_output, write_json_atomic

REPO_ROOT = Path(__file__).resolve().parents[3]
STAGES = ("demos", "base", "train", "eval", "serve_eval", "report")
SUITE, TASK_ID = "libero_spatial", 0
DATA_FORMATS = ("rlds", "lerobot")
EVAL_MODES = {"eval": "in-process", "serve_eval": "server"}
MAX_TRIALS = 50  # the benchmark's initial states per task
# --model_family (run_libero_eval.py's names) -> the training preset and the base folder's name under base/
PRESETS = {"openvla": "closed_loop_cpu", "pi0": "closed_loop_pi0_cpu"}
BASE_DIRNAMES = {"openvla": TINY_VLA_DIRNAME, "pi0": TINY_PI0_DIRNAME}
# The tiny pi0 the base stage writes (the rest as prismatic.testing.pi0_tiny.tiny_pi0_config): the third-person
# camera only, 112 px images (64 tokens; a step of batch 16 took 0.05 s here against 0.3 s at 224 px), loss over
# the 7 real action dims
PI0_BASE_SIZES: dict[str, object] = {
    "image_keys": ["base_0_rgb"],
    "action_loss_dims": "real",
    "image_size": 112,
    "vision_hidden_size": 32,
    "vision_num_layers": 2,
    "vision_num_heads": 2,
    "vision_intermediate_size": 64,
    "vlm_width": 64,
    "vlm_mlp_dim": 128,
    "expert_width": 32,
    "expert_mlp_dim": 64,
    "num_heads": 4,
    "head_dim": 16,
}
SAVE_FREQ = int(get_preset(PRESETS["openvla"]).settings["save_freq"])
SEED = FinetuneConfig.seed  # the training scripts' default seed
ROLLOUT_STRIP_FRAMES = 8  # frames of the rollout strip the report writes
# In-process episodes with a video (0..N-1): a recorded episode renders at every step, the others at query steps only
VIDEO_EPISODES = 2
SERVER_LINE = re.compile(r"on ws://127\.0\.0\.1:(\d+) ")


@dataclass
class ClosedLoopConfig:
    """scripts/closed_loop.py (``make closed-loop``); the stages' defaults of the other flags are their scripts'."""

    cache: Path = Path.home() / ".cache" / "spatial_forcing" / "closed_loop"  # Everything is written here
    num_demos: int = 20  # Oracle demonstrations of libero_spatial task 0
    num_workers: int = 2  # Simulator processes of the demonstration and evaluation stages
    max_steps: int | None = None  # Last training step, a multiple of the preset's save_freq (default: the preset's)
    episodes: int = 10  # Held-out benchmark initial states evaluated (0..episodes-1)
    episode_steps: int | None = None  # Cap on the policy steps of an episode (default: the suite's limit)
    stages: list[str] = field(default_factory=lambda: list(STAGES))  # Stages to run, in the order of STAGES
    data_format: str = "rlds"  # rlds | lerobot: which copy of the demonstrations trains the policy
    model_family: str = "openvla"  # openvla (a tiny OpenVLA-OFT, L1 head) | pi0 (a tiny pi0, flow matching)
    seed: int = SEED  # Training seed (torch, data order); another seed gets its own run, evaluations and report
    # The LeRobot copy's AV1 quality: 12 keeps LIBERO's renders as close as the RLDS copy's JPEG 95 does (mean PSNR
    # 40.0 dB against 39.9; lerobot's default 30: 38.0 dB), so neither copy trains on blurrier frames than it is
    # evaluated on (docs/reference/demonstrations.md)
    video_crf: int = 12

    @property
    def data_dir(self) -> Path:
        return self.cache / "data"

    @property
    def suffix(self) -> str:
        """Tells pi0's, the LeRobot copy's and other seeds' runs, evaluations and reports apart from the OpenVLA-OFT
        on RLDS one's at the default seed ("" for that one)."""
        family = "" if self.model_family == "openvla" else f"-{self.model_family}"
        data_format = "" if self.data_format == "rlds" else f"-{self.data_format}"
        return family + data_format + ("" if self.seed == SEED else f"-seed{self.seed}")

    @property
    def preset(self) -> str:
        return PRESETS[self.model_family]

    @property
    def dataset_name(self) -> str:
        """The dataset folder ``generate_libero_demos.py`` writes under ``data_dir`` in this format."""
        return DemoGenerationConfig(task_suite_name=SUITE, format=self.data_format).dataset_name

    @property
    def vla_dir(self) -> Path:
        return self.cache / "base" / BASE_DIRNAMES[self.model_family]

    @property
    def run_dir(self) -> Path:
        return self.cache / "runs" / f"closed-loop{self.suffix}"

    @property
    def eval_dir(self) -> Path:
        return self.cache / "eval"


def check_config(cfg: ClosedLoopConfig) -> None:
    """Raises UserError for a bad flag (nothing written yet)."""
    unknown = [stage for stage in cfg.stages if stage not in STAGES]
    if unknown or not cfg.stages:
        raise UserError(f"--stages {cfg.stages}: expected a non-empty list of {list(STAGES)}")
    for name in ("num_demos", "num_workers"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name} {getattr(cfg, name)}: expected a positive integer")
    if cfg.model_family not in PRESETS:
        raise UserError(f"--model_family {cfg.model_family!r}: expected one of {list(PRESETS)}")
    save_freq = int(get_preset(cfg.preset).settings["save_freq"])
    if cfg.max_steps is not None and (cfg.max_steps < 1 or cfg.max_steps % save_freq):
        raise UserError(
            f"--max_steps {cfg.max_steps}: expected a positive multiple of {save_freq} (the {cfg.preset} preset's "
            "--save_freq, so that the last step is saved)"
        )
    if not 1 <= cfg.episodes <= MAX_TRIALS:
        raise UserError(f"--episodes {cfg.episodes}: expected 1..{MAX_TRIALS} (the benchmark's initial states)")
    if cfg.episode_steps is not None and cfg.episode_steps < 1:
        raise UserError(f"--episode_steps {cfg.episode_steps}: expected a positive integer")
    if cfg.data_format not in DATA_FORMATS:
        raise UserError(f"--data_format {cfg.data_format!r}: expected one of {list(DATA_FORMATS)}")
    check_writable_dir(cfg.cache, "--cache")


# --- what is finished ---------------------------------------------------------------------------------------------
def kept_demos(cfg: ClosedLoopConfig) -> int:
    """Demonstrations in the dataset of ``cfg.data_format`` (0 without one): the episodes a LeRobot copy's
    ``info.json`` counts; for RLDS, those the last finished generation kept (it writes the dataset last)."""
    dataset = cfg.data_dir / cfg.dataset_name
    if cfg.data_format == "lerobot":
        info = dataset / "meta" / "info.json"
        return int(json.loads(info.read_text())["total_episodes"]) if info.is_file() else 0
    outcomes = cfg.data_dir / f"{SUITE}_oracle_work" / "outcomes.json"
    if not outcomes.is_file() or not (dataset / "1.0.0" / "dataset_info.json").is_file():
        return 0
    return sum(len(task["kept"]) for task in json.loads(outcomes.read_text())["tasks"])


def trained_step(run_dir: Path) -> int | None:
    """The step of the run's latest-only checkpoint, or None without one."""
    ckpt.finish_pending_install(run_dir)
    if not ckpt.component_path(run_dir, ckpt.TRAINING_STATE, None).is_file():
        return None
    return ckpt.saved_training_step(run_dir, None)


def last_step(cfg: ClosedLoopConfig) -> int:
    return int(get_preset(cfg.preset).settings["max_steps"]) if cfg.max_steps is None else cfg.max_steps


def eval_run_id(cfg: ClosedLoopConfig, stage: str) -> str:
    """The evaluation's run id: its mode and the training step it evaluates (a longer training is evaluated anew)."""
    return f"{EVAL_MODES[stage]}{cfg.suffix}-step{last_step(cfg)}"


def eval_episodes(cfg: ClosedLoopConfig, stage: str) -> list[EpisodeResult]:
    return EpisodeStore(cfg.eval_dir / f"{eval_run_id(cfg, stage)}.jsonl").load()


def stage_done(cfg: ClosedLoopConfig, stage: str) -> bool:
    """Whether ``stage``'s work is already in the cache."""
    if stage == "demos":
        return kept_demos(cfg) >= cfg.num_demos
    if stage == "base":
        return (cfg.vla_dir / "config.json").is_file()
    if stage == "train":
        step = trained_step(cfg.run_dir) if cfg.run_dir.is_dir() else None
        return step is not None and step >= last_step(cfg)
    if stage in EVAL_MODES:
        return len(eval_episodes(cfg, stage)) >= cfg.episodes
    return report_path(cfg).is_file() and loss_plot_path(cfg).is_file()


def report_path(cfg: ClosedLoopConfig) -> Path:
    return cfg.cache / f"results{cfg.suffix}.json"


def loss_plot_path(cfg: ClosedLoopConfig) -> Path:
    return cfg.cache / f"loss{cfg.suffix}.png"


def rollout_strip_path(cfg: ClosedLoopConfig) -> Path:
    return cfg.cache / f"rollout{cfg.suffix}.png"


# --- the stages ---------------------------------------------------------------------------------------------------
def run(command: Sequence[object]) -> None:
    """Runs one stage's command with its output streaming to the terminal."""
    command = [str(part) for part in command]
    print(f"$ {' '.join(command)}", flush=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "WANDB_MODE": "offline"}
    subprocess.run(command, check=True, cwd=REPO_ROOT, env=env)


def script(name: str) -> list[object]:
    return [sys.executable, REPO_ROOT / "vla-scripts" / name]


def eval_command(cfg: ClosedLoopConfig, stage: str) -> list[object]:
    command = [sys.executable, REPO_ROOT / "experiments" / "robot" / "libero" / "run_libero_eval.py"]
    command += [f"--model_family={cfg.model_family}", f"--pretrained_checkpoint={cfg.run_dir}"]
    command += [f"--task_suite_name={SUITE}", f"--task_ids=[{TASK_ID}]"]
    command += [f"--num_trials_per_task={cfg.episodes}", f"--local_log_dir={cfg.eval_dir}"]
    command += [f"--run_id={eval_run_id(cfg, stage)}", f"--save_videos={stage == 'eval'}"]
    if stage == "eval":
        command.append(f"--video_episodes={VIDEO_EPISODES}")
    command.append(f"--num_workers={cfg.num_workers}")
    if cfg.episode_steps is not None:
        command.append(f"--max_steps={cfg.episode_steps}")
    return command


@contextmanager
def policy_server(checkpoint: Path) -> Iterator[str]:
    """``serve_policy.py`` on a free loopback port for the block; yields its ``ws://`` address. Keepalive pings are
    off: the client is a local process that a busy machine may starve past a ping's timeout. The server's output
    keeps being echoed, so a full pipe never stalls it."""
    command = [
        *script("serve_policy.py"),
        f"--pretrained_checkpoint={checkpoint}",
        "--port=0",
        "--keepalive_timeout_s=0",
    ]
    server = subprocess.Popen([str(part) for part in command], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        for line in server.stdout:
            print(line, end="", flush=True)
            if match := SERVER_LINE.search(line):
                threading.Thread(target=echo_lines, args=(server.stdout,), daemon=True).start()
                yield f"ws://127.0.0.1:{match.group(1)}"
                break
        else:
            raise RuntimeError(f"serve_policy.py exited with status {server.wait()} before serving")
    finally:
        server.terminate()
        server.wait()


def echo_lines(stream: IO[str]) -> None:
    for line in stream:
        print(line, end="", flush=True)


def run_stages(cfg: ClosedLoopConfig) -> None:
    """Checks the flags, then runs the selected stages whose work is not yet in the cache."""
    check_config(cfg)
    for stage in STAGES:
        if stage not in cfg.stages:
            continue
        if stage != "report" and stage_done(cfg, stage):
            print(f"=== {stage}: done (in {cfg.cache}), skipped", flush=True)
            continue
        print(f"=== {stage}", flush=True)
        started = time.monotonic()
        run_stage(cfg, stage)
        print(f"=== {stage}: finished in {(time.monotonic() - started) / 60:.1f} min", flush=True)
    if report_path(cfg).is_file():
        print(f"results: {report_path(cfg)}, loss curve: {loss_plot_path(cfg)}")


def run_stage(cfg: ClosedLoopConfig, stage: str) -> None:
    if stage == "demos":
        run(
            [
                *script("generate_libero_demos.py"),
                f"--task_suite_name={SUITE}",
                f"--task_ids=[{TASK_ID}]",
                f"--num_demos={cfg.num_demos}",
                f"--data_root_dir={cfg.data_dir}",
                f"--format={cfg.data_format}",
                f"--num_workers={cfg.num_workers}",
                f"--video_crf={cfg.video_crf}",
            ]
        )
    elif stage == "base" and cfg.model_family == "pi0":
        write_pi0_base(cfg.vla_dir)
    elif stage == "base":
        run([*script("make_tiny_checkpoints.py"), f"--out_dir={cfg.vla_dir.parent}"])
    elif stage == "train":
        resume = cfg.run_dir.is_dir() and trained_step(cfg.run_dir) is not None
        run(
            [
                *script("finetune.py"),
                f"--preset={cfg.preset}",
                f"--vla_path={cfg.vla_dir}",
                f"--data_root_dir={cfg.data_dir}",
                f"--dataset_name={cfg.dataset_name}",
                f"--run_root_dir={cfg.run_dir.parent}",
                f"--run_id_override={cfg.run_dir.name}",
                f"--max_steps={last_step(cfg)}",
                f"--seed={cfg.seed}",
                f"--resume={resume}",
                *(["--lerobot_gripper=libero"] if cfg.data_format == "lerobot" else []),
            ]
        )
    elif stage == "eval":
        run(eval_command(cfg, stage))
    elif stage == "serve_eval":
        with policy_server(cfg.run_dir) as address:
            run([*eval_command(cfg, stage), f"--policy_server={address}"])
    else:
        write_report(cfg)


def write_pi0_base(folder: Path) -> None:
    """A randomly initialised tiny pi0 of ``PI0_BASE_SIZES`` with the tiny tokenizer, as a pi0 folder, atomically."""
    print(f"tiny pi0 {PI0_BASE_SIZES} -> {folder}", flush=True)
    temporary = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    os.replace(write_tiny_pi0_checkpoint(temporary, **PI0_BASE_SIZES), folder)
    temporary.rmdir()


# --- the report ---------------------------------------------------------------------------------------------------
def episode_rows(results: list[EpisodeResult]) -> list[dict[str, object]]:
    return [
        {"episode": r.episode, "success": r.success, "steps": r.steps}
        for r in sorted(results, key=lambda result: result.key)
    ]


def write_report(cfg: ClosedLoopConfig) -> dict[str, object]:
    """``results.json`` and ``loss.png`` from the run's metrics and both evaluations (whichever exist)."""
    if not (cfg.run_dir / "metrics.jsonl").is_file():
        raise UserError(f"--stages report: {cfg.run_dir} holds no training metrics: expected the train stage first")
    metrics = read_metrics(cfg.run_dir)
    report: dict[str, object] = {
        "task": f"{SUITE} {TASK_ID}",
        "data_format": cfg.data_format,
        "model_family": cfg.model_family,
        "seed": cfg.seed,
        "demonstrations": kept_demos(cfg),
        **({"video_crf": cfg.video_crf} if cfg.data_format == "lerobot" else {}),
        "training": {
            "checkpoint_step": trained_step(cfg.run_dir),
            "last_logged_step": metrics[-1]["step"],
            "evaluated_step": last_step(cfg),
            "first_loss": metrics[0]["loss"],
            "last_loss": metrics[-1]["loss"],
        },
    }
    per_mode = {}
    for stage, mode in EVAL_MODES.items():
        results = [r for r in eval_episodes(cfg, stage) if r.episode < cfg.episodes]
        successes = sum(r.success for r in results)
        low, high = wilson_interval(successes, len(results))
        per_mode[mode] = episode_rows(results)
        report[mode] = {
            "episodes": len(results),
            "successes": successes,
            "success_rate": successes / len(results) if results else None,
            "wilson_95": [low, high],
            "per_episode": per_mode[mode],
        }
    report["same_per_episode"] = per_mode["in-process"] == per_mode["server"] and bool(per_mode["server"])
    in_process = sorted(eval_episodes(cfg, "eval"), key=lambda result: result.key)  # not the workers' finishing order
    shown = next((r for r in in_process if r.success and r.video), next((r for r in in_process if r.video), None))
    if shown is not None:
        write_rollout_strip(rollout_strip_path(cfg), Path(shown.video))
        report["rollout_strip"] = {"episode": shown.episode, "success": shown.success, "video": shown.video}
    write_json_atomic(report_path(cfg), report)
    plot_loss(loss_plot_path(cfg), metrics, cfg)
    return report


def write_rollout_strip(path: Path, video: Path, frames: int = ROLLOUT_STRIP_FRAMES) -> None:
    """``frames`` evenly spaced frames of an episode's video, side by side, as a PNG."""
    images = imageio.mimread(video, memtest=False)
    picked = [images[i] for i in np.linspace(0, len(images) - 1, frames).round().astype(int)]
    with atomic_output(path) as temporary:
        imageio.imwrite(temporary, np.concatenate(picked, axis=1), format="png")


# What each family's training loss is (the curve's label) and what the curve's title calls the model
LOSS_LABELS = {"openvla": "loss (L1, normalised actions)", "pi0": "loss (flow matching MSE, normalised actions)"}
MODEL_NAMES = {"openvla": "tiny VLA", "pi0": "tiny pi0"}


def plot_loss(path: Path, metrics: list[dict[str, float]], cfg: ClosedLoopConfig) -> None:
    figure = Figure(figsize=(6, 3.5))
    axes = figure.subplots()
    axes.plot([m["step"] for m in metrics], [m["loss"] for m in metrics], label=LOSS_LABELS[cfg.model_family])
    axes.set_xlabel("step")
    axes.set_yscale("log")
    model = MODEL_NAMES[cfg.model_family]
    axes.set_title(f"closed loop: {SUITE} {TASK_ID}, {model} from scratch, {cfg.data_format} data")
    axes.legend()
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=90)
