"""Predicts the peak GPU memory of a fine-tuning run before anything is downloaded (only the base config.json).

Takes finetune_align.py's flags (``--spatial_forcing False`` estimates finetune.py) plus ``--gpu_memory_gb`` and
``--num_gpus``; prints a table per GPU and, last, one JSON line ``{"peak_gb": ..., "fits": ...}``. E.g.:

    python vla-scripts/estimate_memory.py --vla_path ckpts/openvla-7b --dataset_name libero_spatial_no_noops \\
        --num_images_in_input 2 --use_proprio True --batch_size 8 --num_gpus 8 --gpu_memory_gb 80

Flags: ``prismatic.training.config.MemoryEstimateConfig``; the method: ``prismatic.training.memory_estimate``.
"""

from prismatic.training.config import MemoryEstimateConfig
from prismatic.training.presets import resolve_config
from prismatic.util.cli import run_cli


def main() -> None:
    cfg = resolve_config(MemoryEstimateConfig)  # --preset as in training
    # Imported after parsing: the estimator builds the models (transformers, TensorFlow), which --help does not need.
    from prismatic.training.memory_estimate import estimate_memory

    estimate = estimate_memory(cfg)
    print(estimate.table(cfg.gpu_memory_gb))
    print(estimate.summary(cfg.gpu_memory_gb))


if __name__ == "__main__":
    run_cli(main)
