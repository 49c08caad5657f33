"""Cost of the base-model record: a SHA-256 of every tensor of the base, read from its safetensors shards.

Writes a synthetic base of ``--size_gb`` GB of bf16 tensors in ``--shards`` shards (the openvla-7b layout: an index
plus shards) into a temporary folder, then times, interleaved A B A B:

- A: ``base_model_record`` of that folder (the shards hashed in parallel threads), page cache warm;
- B: ``hashlib.sha256`` of one in-memory buffer of the same size on one core (the hash's own speed).

Prints each round, the median and spread in GB/s, and the time for OpenVLA-7B's 7.5 B bf16 parameters (15.1 GB)
extrapolated from A's median (a cold read from disk adds the disk's own read time).

Usage: python benchmarks/bench_base_model_record.py [--size_gb 1.0] [--shards 4] [--rounds 3]
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import draccus
import torch
from safetensors.torch import save_file

from prismatic.policy.base_model_record import base_model_record
from prismatic.util.checkpoint_files import WEIGHTS_INDEX_NAME

OPENVLA_7B_PARAMETERS = 7.541e9  # openvla-7b's parameter count (bf16: 2 bytes each)
TENSOR_ELEMENTS = 4096 * 4096  # one q_proj of Llama-2-7B


@dataclass
class BenchConfig:
    size_gb: float = 1.0  # size of the synthetic base
    shards: int = 4  # safetensors shards (openvla-7b has 3)
    rounds: int = 3  # rounds of A and B each


def write_synthetic_base(folder: Path, size_gb: float, shards: int) -> int:
    """A base folder of random bf16 tensors (``config.json``, shards, index); returns its tensor bytes."""
    num_tensors = max(shards, round(size_gb * 1e9 / (2 * TENSOR_ELEMENTS)))
    generator = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for shard in range(shards):
        file_name = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {
            f"model.layers.{index}.self_attn.q_proj.weight": torch.randn(
                4096, 4096, generator=generator, dtype=torch.float32
            ).to(torch.bfloat16)
            for index in range(shard, num_tensors, shards)
        }
        save_file(tensors, folder / file_name, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(tensors, file_name)
        total += sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
    (folder / WEIGHTS_INDEX_NAME).write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "synthetic"}))
    return total


def main(config: BenchConfig) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        total = write_synthetic_base(folder, config.size_gb, config.shards)
        buffer = os.urandom(total)
        base_model_record(folder)  # warms the page cache
        print(f"synthetic base: {total / 1e9:.2f} GB bf16 in {config.shards} shards; {os.cpu_count()} CPU cores")
        variants = {
            "A record (threads over shards)": lambda: base_model_record(folder),
            "B sha256 in memory (one core)": lambda: hashlib.sha256(buffer),
        }
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for round_index in range(config.rounds):
            for name, run in variants.items():
                started = time.perf_counter()
                run()
                seconds = time.perf_counter() - started
                rates[name].append(total / 1e9 / seconds)
                print(f"round {round_index + 1} {name}: {seconds:.2f} s, {rates[name][-1]:.2f} GB/s")
    for name, values in rates.items():
        print(f"{name}: median {statistics.median(values):.2f} GB/s (min {min(values):.2f}, max {max(values):.2f})")
    record_rate = statistics.median(next(iter(rates.values())))
    openvla_bytes = 2 * OPENVLA_7B_PARAMETERS
    print(
        f"extrapolated: the record of OpenVLA-7B ({openvla_bytes / 1e9:.1f} GB bf16) takes about "
        f"{openvla_bytes / 1e9 / record_rate:.0f} s on this machine with the page cache warm"
    )


if __name__ == "__main__":
    main(draccus.parse(BenchConfig))
