"""Throughput and host memory of the RLDS pipeline for several shuffle-buffer sizes, on synthetic LIBERO data.

    python benchmarks/bench_rlds.py                       # writes a synthetic dataset to a temp folder
    python benchmarks/bench_rlds.py --data_root_dir data/libero --dataset_name libero_spatial_no_noops

Each buffer size runs in a fresh process (peak RSS is per process) with the training settings (train split,
image augmentation, both cameras, proprio) and reports: time to the first sample (the buffer fills first), frames/s
of the tf.data pipeline alone, samples/s through ``RLDSBatchTransform`` (tiny tokenizer + openvla-7b image
preprocessing), the RSS once the data is opened, the RSS with a full shuffle buffer and the peak RSS. The shuffle
buffer holds JPEG bytes, so its cost per frame is about the size of the two encoded images (printed as well).
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("USE_TF", "0")

import draccus  # noqa: E402
import psutil  # noqa: E402


@dataclass
class BenchConfig:
    data_root_dir: Path | None = None  # None: write a synthetic dataset into a temporary folder
    dataset_name: str = "libero_spatial_no_noops"
    shuffle_buffer_sizes: list[int] = field(default_factory=lambda: [1_000, 10_000])
    num_samples: int = 300  # samples timed per rate, after the first one
    num_episodes: int = 50  # synthetic data size
    episode_length: int = 60
    tf_num_threads: int = 0
    worker_shuffle_buffer_size: int = 0  # internal: >0 runs one measurement in this process


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def measure(cfg: BenchConfig) -> dict[str, float]:
    """One measurement with ``cfg.worker_shuffle_buffer_size``; returns the figures."""
    from prismatic.models.presets import openvla_7b_config
    from prismatic.models.processing_prismatic import PrismaticImageProcessor
    from prismatic.testing.tokenizer import build_tiny_tokenizer
    from prismatic.vla.action_tokenizer import ActionTokenizer
    from prismatic.vla.datasets import RLDSBatchTransform, RLDSConfig, RLDSDataset

    tokenizer = build_tiny_tokenizer()
    image_processor = PrismaticImageProcessor.from_vla_config(openvla_7b_config())
    transform = RLDSBatchTransform(
        ActionTokenizer(tokenizer), tokenizer, image_processor.apply_transform, use_wrist_image=True, use_proprio=True
    )
    data_config = RLDSConfig(
        data_root_dir=cfg.data_root_dir,
        data_mix=cfg.dataset_name,
        shuffle_buffer_size=cfg.worker_shuffle_buffer_size,
        image_aug=True,
        tf_num_threads=cfg.tf_num_threads,
    )
    dataset = RLDSDataset(data_config, transform)
    rss_open = rss_mib()

    frames = dataset.iter_frames()
    start = time.perf_counter()
    next(frames)
    first_sample_s = time.perf_counter() - start
    frames_per_s = timed_rate(frames, cfg.num_samples)
    rss_filled = rss_mib()
    frames.close()  # release this pipeline's shuffle buffer before building the next one

    samples = iter(dataset)
    next(samples)
    samples_per_s = timed_rate(samples, cfg.num_samples)
    return {
        "shuffle_buffer_size": cfg.worker_shuffle_buffer_size,
        "first_sample_s": first_sample_s,
        "frames_per_s": frames_per_s,
        "samples_per_s": samples_per_s,
        "rss_open_mib": rss_open,
        "rss_filled_mib": rss_filled,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "jpeg_kib_per_frame": mean_jpeg_bytes_per_frame(dataset.sources[0].builder) / 1024,
        "load_average": os.getloadavg()[0],
    }


def timed_rate(iterator, count: int) -> float:
    """Items per second drawn from ``iterator`` over ``count`` items."""
    start = time.perf_counter()
    for _ in range(count):
        next(iterator)
    return count / (time.perf_counter() - start)


def mean_jpeg_bytes_per_frame(builder) -> float:
    """Bytes of both encoded camera images per step, averaged over the first episode."""
    from prismatic.vla.datasets.tf_runtime import import_tensorflow_datasets

    skip = import_tensorflow_datasets().decode.SkipDecoding()
    episode = next(builder.as_dataset(split="train[:1]", decoders={"steps": skip}).as_numpy_iterator())
    observation = episode["steps"]["observation"]
    total = sum(len(image) for key in ("image", "wrist_image") for image in observation[key])
    return total / len(observation["image"])


def run_worker(cfg: BenchConfig, shuffle_buffer_size: int) -> dict[str, float]:
    args = [sys.executable, __file__, "--data_root_dir", str(cfg.data_root_dir), "--dataset_name", cfg.dataset_name]
    args += ["--num_samples", str(cfg.num_samples), "--tf_num_threads", str(cfg.tf_num_threads)]
    args += ["--worker_shuffle_buffer_size", str(shuffle_buffer_size)]
    output = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


@draccus.wrap()
def main(cfg: BenchConfig) -> None:
    if cfg.worker_shuffle_buffer_size > 0:
        print(json.dumps(measure(cfg)))
        return
    with tempfile.TemporaryDirectory() as temp_dir:
        if cfg.data_root_dir is None:
            from prismatic.vla.datasets.synthetic import SyntheticLiberoConfig, write_synthetic_libero

            cfg.data_root_dir = Path(temp_dir)
            synthetic = SyntheticLiberoConfig(
                Path(temp_dir), cfg.dataset_name, cfg.num_episodes, cfg.episode_length, overwrite=True
            )
            write_synthetic_libero(synthetic)
            print(f"synthetic data: {cfg.num_episodes} episodes x {cfg.episode_length} steps, 256x256 JPEG cameras")
        results = [run_worker(cfg, size) for size in cfg.shuffle_buffer_sizes]
    print(f"cpu cores: {os.cpu_count()}, samples timed per rate: {cfg.num_samples}")
    header = "buffer  first sample  tf.data frames/s  samples/s  RSS open  RSS full buffer  peak RSS  JPEG/frame  load"
    print(header)
    for r in results:
        print(
            f"{r['shuffle_buffer_size']:>6d}  {r['first_sample_s']:>10.2f} s  {r['frames_per_s']:>16.1f}  "
            f"{r['samples_per_s']:>9.1f}  {r['rss_open_mib']:>5.0f} MiB  {r['rss_filled_mib']:>11.0f} MiB  "
            f"{r['peak_rss_mib']:>5.0f} MiB  "
            f"{r['jpeg_kib_per_frame']:>6.1f} KiB  {r['load_average']:>8.1f}"
        )
    if len(results) > 1:
        low, high = results[0], results[-1]
        extra_frames = high["shuffle_buffer_size"] - low["shuffle_buffer_size"]
        per_frame_kib = (high["rss_filled_mib"] - low["rss_filled_mib"]) * 1024 / extra_frames
        print(f"RSS with a full buffer grows by {per_frame_kib:.1f} KiB per extra buffered frame")


if __name__ == "__main__":
    main()
