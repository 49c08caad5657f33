"""Step time of finetune.py vs finetune_align.py at the tiny configuration: the per-step cost of Spatial Forcing.

    python benchmarks/bench_sf_overhead.py [--steps 10] [--batch_size 4] [--vggt_image_size 224]

Both runs use the same model, data and batches (one process, CPU or one GPU); the ratio is measured in one run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from prismatic.testing.tiny_checkpoints import write_tiny_base_checkpoints
from prismatic.training.config import AlignFinetuneConfig, FinetuneConfig
from prismatic.training.distributed import init_distributed
from prismatic.training.trainer import build_dataloader, build_model, compute_losses
from prismatic.vla.constants import LIBERO
from prismatic.vla.datasets.synthetic import SyntheticLiberoConfig, write_synthetic_libero


def time_steps(cfg: FinetuneConfig, batches: list[dict], warmup: int) -> list[float]:
    ctx = init_distributed()
    model = build_model(cfg, LIBERO, ctx)
    params = [p for m in model.trainable_modules() for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate)
    times = []
    for index, batch in enumerate(batches):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        compute_losses(cfg, model, batch, LIBERO, ctx.device)["loss"].backward()
        optimizer.step()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--vggt_image_size", type=int, default=224)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        vla_dir, vggt_path = write_tiny_base_checkpoints(Path(tmp) / "ckpts")
        data_root = Path(tmp) / "data"
        write_synthetic_libero(SyntheticLiberoConfig(data_root_dir=data_root, num_episodes=4, episode_length=24))
        common = dict(
            vla_path=str(vla_dir),
            data_root_dir=data_root,
            dataset_name="libero_spatial_no_noops",
            num_images_in_input=2,
            use_proprio=True,
            batch_size=args.batch_size,
            shuffle_buffer_size=64,
            image_aug=False,
            lora_rank=4,
        )
        plain = FinetuneConfig(**common)
        align = AlignFinetuneConfig(
            **common,
            vggt_path=str(vggt_path),
            vggt_image_size=args.vggt_image_size,
            vla_layers_align=1,
            use_vlm_norm=True,
            use_vggt_pe=True,
        )
        ctx = init_distributed()
        loader, _ = build_dataloader(plain, build_model(plain, LIBERO, ctx), ctx, train=True)
        batch_iter = iter(loader)
        batches = [next(batch_iter) for _ in range(args.steps + args.warmup)]
        plain_times = time_steps(plain, batches, args.warmup)
        align_times = time_steps(align, batches, args.warmup)

    plain_ms, align_ms = 1e3 * statistics.median(plain_times), 1e3 * statistics.median(align_times)
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {device}; batch {args.batch_size}; teacher images {args.vggt_image_size} px; {args.steps} steps")
    print(f"finetune.py        step time (median): {plain_ms:8.1f} ms")
    print(f"finetune_align.py  step time (median): {align_ms:8.1f} ms")
    print(
        f"ratio align / plain: {align_ms / plain_ms:.2f}x (Spatial Forcing adds {align_ms - plain_ms:.1f} ms per step)"
    )


if __name__ == "__main__":
    main()
