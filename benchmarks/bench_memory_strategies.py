"""Step time and memory per rank of DDP vs FSDP, each with and without gradient checkpointing (tiny model).

    python -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/bench_memory_strategies.py \\
        [--rounds 4] [--batch_size 2]

Runs on the CPU with gloo (or on GPUs with nccl). The four variants are built once and stepped in interleaved
rounds (A B C D, A B C D, ...); rank 0 prints, per variant, the median step time with its spread, the bytes this rank
holds between steps (its parameters, or shards of them, and AdamW states) and the peak a step allocates on top,
from the profiler's allocation records (CPU) or torch.cuda.max_memory_allocated (GPU).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from prismatic.models.configuration_prismatic import OpenVLAConfig
from prismatic.testing.tiny_checkpoints import write_tiny_base_checkpoints
from prismatic.testing.tiny_vla import tiny_training_batch
from prismatic.training.config import AlignFinetuneConfig
from prismatic.training.distributed import init_distributed, shutdown_distributed
from prismatic.training.memory_estimate import measure_peak_allocation
from prismatic.training.trainer import build_model, compute_losses
from prismatic.vla.constants import LIBERO

VARIANTS = {
    "ddp": {"strategy": "ddp"},
    "fsdp": {"strategy": "fsdp"},
    "ddp + checkpointing": {"strategy": "ddp", "gradient_checkpointing": True, "gradient_checkpointing_vision": True},
    "fsdp + checkpointing": {"strategy": "fsdp", "gradient_checkpointing": True, "gradient_checkpointing_vision": True},
}
MIB = 2**20


def _local_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def held_bytes(model, optimizer) -> int:
    """Parameters (local shards under FSDP) and optimizer states this rank keeps between steps."""
    parameters = {id(p): p for m in model.trainable_modules() for p in m.parameters()}
    states = [t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    return sum(_local_bytes(p) for p in parameters.values()) + sum(_local_bytes(t) for t in states)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=2)
    args = parser.parse_args()
    ctx = init_distributed()
    folder = [tempfile.mkdtemp(prefix="bench-memory-") if ctx.is_main else None]
    if ctx.is_distributed:
        dist.broadcast_object_list(folder)
    if ctx.is_main:
        write_tiny_base_checkpoints(folder[0])
    ctx.barrier()
    vla_dir, vggt_path = Path(folder[0]) / "tiny-openvla", Path(folder[0]) / "tiny-vggt-model.pt"

    runs = {}
    for name, overrides in VARIANTS.items():
        cfg = AlignFinetuneConfig(
            vla_path=str(vla_dir), vggt_path=str(vggt_path), dataset_name="libero_spatial_no_noops",
            num_images_in_input=2, use_proprio=True, batch_size=args.batch_size, lora_rank=4, vggt_image_size=112,
            vla_layers_align=1, use_vlm_norm=True, use_vggt_pe=True, **overrides,
        )  # fmt: skip
        torch.manual_seed(0)
        model = build_model(cfg, LIBERO, ctx)
        for module in model.trainable_modules():
            module.train()
        trainable = [p for m in model.trainable_modules() for p in m.parameters() if p.requires_grad]
        runs[name] = (cfg, model, torch.optim.AdamW(trainable, lr=1e-4), [], [])
    batch = tiny_training_batch(OpenVLAConfig.from_pretrained(vla_dir), [30] * args.batch_size)

    for _ in range(args.rounds):
        for cfg, model, optimizer, times, peaks in runs.values():

            def step(cfg=cfg, model=model, optimizer=optimizer):
                optimizer.zero_grad(set_to_none=True)
                compute_losses(cfg, model, batch, LIBERO, ctx.device)["loss"].backward()
                optimizer.step()

            ctx.barrier()
            start = time.perf_counter()
            step()
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            if ctx.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                step()
                peaks.append(torch.cuda.max_memory_allocated() - base)
            else:
                peaks.append(measure_peak_allocation(step))

    if ctx.is_main:
        print(f"{ctx.world_size} processes, {ctx.device.type}, batch {args.batch_size} per rank, {args.rounds} rounds")
        print(f"{'variant':<22} {'step s (median)':>16} {'spread s':>9} {'held MiB':>9} {'step peak MiB':>14}")
        for name, (_, model, optimizer, times, peaks) in runs.items():
            spread = max(times) - min(times)
            held = held_bytes(model, optimizer) / MIB
            print(f"{name:<22} {statistics.median(times):16.3f} {spread:9.3f} {held:9.1f} {max(peaks) / MIB:14.1f}")
    shutdown_distributed()


if __name__ == "__main__":
    main()
