"""Peak memory of VGGT feature extraction: every aggregator layer kept (upstream) vs only the last (Spatial Forcing).

1. Meta-device arithmetic at full size: the feature tensors each mode returns, measured from a forward pass on
   the ``meta`` device at Spatial Forcing's setting (518 px, S=2 cameras, batch 8).
2. A real CPU run at full size (random weights, 224 px, S=2): time of one forward and the forward's peak resident
   memory above the loaded model, each mode in a fresh subprocess (Linux, via /proc/self/{clear_refs,status}).

Usage: python benchmarks/bench_vggt_memory.py [--image_size 224] [--frames 2] [--cpu_run false]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import draccus
import torch

from vggt.models.vggt import VGGT
from vggt.presets import teacher_vggt_kwargs

MODES = {"all": None, "last": [-1]}
MIB = 2**20


@dataclass
class BenchConfig:
    meta_image_size: int = 518  # resolution Spatial Forcing feeds VGGT
    meta_batch_size: int = 8  # Spatial Forcing's per-GPU batch size
    image_size: int = 224  # CPU run resolution (multiple of 14)
    batch_size: int = 1  # CPU run batch size
    frames: int = 2  # S: cameras per sample
    cpu_run: bool = True  # also run the full-size model on the CPU (needs ~5 GB of RAM)
    child: str = ""  # internal: measure one mode ("all" or "last") in this process and print JSON


def _status_kib(field: str) -> int:
    """A ``VmRSS``/``VmHWM``-style field of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} field")


def meta_feature_bytes(config: BenchConfig) -> dict[str, object]:
    """Bytes of the returned feature tensors per mode, from a meta-device forward at full size."""
    with torch.device("meta"):
        model = VGGT(**teacher_vggt_kwargs()).eval()
        images = torch.empty(config.meta_batch_size, config.frames, 3, config.meta_image_size, config.meta_image_size)
    result: dict[str, object] = {}
    with torch.no_grad():
        for mode, output_layers in MODES.items():
            features, _ = model(images, output_layers=output_layers)
            result[mode] = sum(t.numel() * t.element_size() for t in features)
            result["layer_shape"] = list(features[-1].shape)
            result[f"{mode}_count"] = len(features)
    return result


def measure_cpu_forward(config: BenchConfig) -> dict[str, float]:
    """One full-size CPU forward in this process: seconds and peak RSS above the loaded model."""
    torch.manual_seed(0)
    model = VGGT(**teacher_vggt_kwargs()).eval()
    images = torch.rand(config.batch_size, config.frames, 3, config.image_size, config.image_size)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
    rss_before = _status_kib("VmRSS")
    start = time.perf_counter()
    with torch.no_grad():
        features, _ = model(images, output_layers=MODES[config.child])
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return {
        "seconds": seconds,
        "model_rss_mib": rss_before / 1024,
        "forward_peak_above_model_mib": (peak - rss_before) / 1024,
        "process_peak_rss_mib": peak / 1024,
        "returned_mib": sum(t.numel() * t.element_size() for t in features) / MIB,
    }


def run_child(mode: str, config: BenchConfig) -> dict[str, float]:
    command = [sys.executable, __file__, f"--child={mode}", f"--image_size={config.image_size}"]
    command += [f"--batch_size={config.batch_size}", f"--frames={config.frames}"]
    completed = subprocess.run(command, check=True, capture_output=True, text=True, env=os.environ)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(config: BenchConfig) -> None:
    if config.child:
        print(json.dumps(measure_cpu_forward(config)))
        return
    meta = meta_feature_bytes(config)
    print(
        f"[meta arithmetic] full-size VGGT aggregator, {config.meta_image_size} px, "
        f"B={config.meta_batch_size}, S={config.frames}; one layer {meta['layer_shape']} fp32 "
        f"(the residual stream stays fp32 under bf16 autocast)"
    )
    print(f"  all layers kept (upstream, {meta['all_count']} tensors): {meta['all'] / MIB:10.1f} MiB")
    print(f"  last layer only (output_layers=[-1], {meta['last_count']} tensor): {meta['last'] / MIB:10.1f} MiB")
    print(f"  saved: {(meta['all'] - meta['last']) / MIB:.1f} MiB ({meta['all'] / meta['last']:.0f}x less)")
    if not config.cpu_run:
        return
    print(
        f"[CPU run] full-size VGGT aggregator (random weights), {config.image_size} px, B={config.batch_size}, "
        f"S={config.frames}, {torch.get_num_threads()} threads, one forward per fresh process"
    )
    runs = {mode: run_child(mode, config) for mode in MODES}
    for mode, run in runs.items():
        print(
            f"  {mode:>4}: forward {run['seconds']:6.1f} s | returned {run['returned_mib']:7.1f} MiB | "
            f"forward peak above model {run['forward_peak_above_model_mib']:7.1f} MiB | "
            f"model RSS {run['model_rss_mib']:7.0f} MiB | process peak RSS {run['process_peak_rss_mib']:7.0f} MiB"
        )
    saved = runs["all"]["forward_peak_above_model_mib"] - runs["last"]["forward_peak_above_model_mib"]
    print(f"  peak saved by output_layers=[-1]: {saved:.1f} MiB")


if __name__ == "__main__":
    main(draccus.parse(config_class=BenchConfig))
