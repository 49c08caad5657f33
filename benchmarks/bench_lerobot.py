"""Samples/s and peak RSS of the LeRobot path beside the RLDS path, on the same episodes.

    python benchmarks/bench_lerobot.py                          # the committed v3.0 LIBERO-like fixture
    python benchmarks/bench_lerobot.py --lerobot_root data/lerobot --lerobot_name my_libero_like_set

The LeRobot dataset (two square cameras, 8-D state, 7-D action) is read once with the LeRobot reader and its decoded
frames, states and actions are written as an RLDS dataset (JPEG, as LIBERO's) in a temporary folder. Each measurement
runs in a fresh process (peak RSS is per process), with the training settings (train split, image augmentation, both
cameras, proprio, ``RLDSBatchTransform`` with the tiny tokenizer and openvla-7b image preprocessing), and the two
paths alternate (L R L R ...) so a busy machine affects both alike; the spread over repeats is printed.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("USE_TF", "0")

import draccus  # noqa: E402
import numpy as np  # noqa: E402
from bench_rlds import rss_mib, timed_rate  # noqa: E402

RLDS_NAME = "libero_spatial_no_noops"  # the registry name the RLDS copy is written under
FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "data" / "lerobot_fixtures"


@dataclass
class BenchConfig:
    lerobot_root: Path = FIXTURES
    lerobot_name: str = "libero_like_v30"
    num_samples: int = 200  # samples timed per measurement, after the first one
    repeats: int = 2  # measurements per path, interleaved
    worker: str = ""  # internal: "lerobot" or "rlds" runs one measurement in this process
    rlds_root: Path | None = None  # internal: the RLDS copy


def build_transform():
    from prismatic.models.presets import openvla_7b_config
    from prismatic.models.processing_prismatic import PrismaticImageProcessor
    from prismatic.testing.tokenizer import build_tiny_tokenizer
    from prismatic.vla.action_tokenizer import ActionTokenizer
    from prismatic.vla.datasets import RLDSBatchTransform

    tokenizer = build_tiny_tokenizer()
    image_processor = PrismaticImageProcessor.from_vla_config(openvla_7b_config())
    return RLDSBatchTransform(
        ActionTokenizer(tokenizer), tokenizer, image_processor.apply_transform, use_wrist_image=True, use_proprio=True
    )


def measure(cfg: BenchConfig) -> dict[str, float]:
    from prismatic.vla.datasets import RLDSConfig, RLDSDataset
    from prismatic.vla.datasets.lerobot_dataset import LeRobotConfig, LeRobotDataset

    transform = build_transform()
    start = time.perf_counter()
    if cfg.worker == "lerobot":
        dataset = LeRobotDataset(LeRobotConfig(cfg.lerobot_root, cfg.lerobot_name, image_aug=True), transform)
    else:
        dataset = RLDSDataset(
            RLDSConfig(data_root_dir=cfg.rlds_root, data_mix=RLDS_NAME, shuffle_buffer_size=1_000, image_aug=True),
            transform,
        )
    samples = iter(dataset)
    next(samples)
    first_sample_s = time.perf_counter() - start
    samples_per_s = timed_rate(samples, cfg.num_samples)
    return {
        "first_sample_s": first_sample_s,
        "samples_per_s": samples_per_s,
        "rss_mib": rss_mib(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tensorflow_loaded": "tensorflow" in sys.modules,
    }


def write_rlds_copy(cfg: BenchConfig, out_dir: Path) -> tuple[int, int, int]:
    """The LeRobot episodes as a LIBERO-format RLDS dataset; returns (episodes, frames, image side)."""
    from prismatic.vla.datasets.lerobot_dataset import LeRobotConfig, LeRobotDataset
    from prismatic.vla.datasets.writer import LiberoEpisode, write_libero_rlds

    dataset = LeRobotDataset(LeRobotConfig(cfg.lerobot_root, cfg.lerobot_name), batch_transform=lambda frame: frame)
    source, (primary, wrist) = dataset.source, dataset.cameras
    episodes = []
    for episode in source.episodes:
        rows = range(episode.row_start, episode.row_start + episode.length)
        episodes.append(
            LiberoEpisode(
                images=np.stack([dataset.decode_image(primary, row) for row in rows]),
                wrist_images=np.stack([dataset.decode_image(wrist, row) for row in rows]),
                states=source.states[rows.start : rows.stop],
                joint_states=np.zeros((episode.length, 7), np.float32),
                actions=source.actions[rows.start : rows.stop],
                language_instruction=source.instructions[rows.start],
                file_path=f"{source.root}/episode_{episode.index}",
            )
        )
    side = episodes[0].images.shape[1]
    write_libero_rlds(episodes, out_dir, RLDS_NAME, image_size=side)
    return len(episodes), len(source.actions), side


def run_worker(cfg: BenchConfig, path: str, rlds_root: Path) -> dict[str, float]:
    args = [sys.executable, __file__, "--lerobot_root", str(cfg.lerobot_root), "--lerobot_name", cfg.lerobot_name]
    args += ["--num_samples", str(cfg.num_samples), "--worker", path, "--rlds_root", str(rlds_root)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), *sys.path])}
    output = subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(output.strip().splitlines()[-1])


@draccus.wrap()
def main(cfg: BenchConfig) -> None:
    if cfg.worker:
        print(json.dumps(measure(cfg)))
        return
    with tempfile.TemporaryDirectory() as temp_dir:
        num_episodes, num_frames, side = write_rlds_copy(cfg, Path(temp_dir))
        results: dict[str, list[dict[str, float]]] = {"lerobot": [], "rlds": []}
        for _ in range(cfg.repeats):
            for path in results:
                results[path].append(run_worker(cfg, path, Path(temp_dir)))
    print(f"{cfg.lerobot_name}: {num_episodes} episodes, {num_frames} frames, {side}x{side} cameras; ")
    print(f"cpu cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, samples timed: {cfg.num_samples}")
    print("path     samples/s (min..max)     first sample  peak RSS (min..max)  TensorFlow loaded")
    for path, runs in results.items():
        rates = [r["samples_per_s"] for r in runs]
        peaks = [r["peak_rss_mib"] for r in runs]
        print(
            f"{path:<7s}  {np.mean(rates):7.1f} ({min(rates):.1f}..{max(rates):.1f})  "
            f"{np.mean([r['first_sample_s'] for r in runs]):9.2f} s  "
            f"{np.mean(peaks):6.0f} MiB ({min(peaks):.0f}..{max(peaks):.0f})  {runs[0]['tensorflow_loaded']}"
        )


if __name__ == "__main__":
    main()
