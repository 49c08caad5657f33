"""Depth probing: how 3D-aware are the frozen visual tokens of one or more checkpoints?

    python vla-scripts/probe_depth.py --checkpoint '[ckpts/sf-libero-spatial,ckpts/oft-libero-spatial]' \
        --data data/depth_probe/libero_spatial --out_dir runs/depth_probe

Trains, per checkpoint and per suite of the data, a DPT probe on four layers' tokens (default 6/12/18/24, the
paper's) and a linear probe per layer, with the same budget and seed for every checkpoint; reports AbsRel, RMSE and
δ<1.25 on the test scenes (in-suite and cross-suite). Writes metrics.json, layers.png and predictions.png.
"""

import os

os.environ.setdefault("USE_TF", "0")  # keep transformers from importing TensorFlow on its own

import draccus  # noqa: E402

from prismatic.probing.depth_probe import ProbeDepthConfig, run_probe_depth  # noqa: E402
from prismatic.util.cli import run_cli  # noqa: E402


@draccus.wrap()
def main(cfg: ProbeDepthConfig) -> None:
    metrics = run_probe_depth(cfg)
    for name, result in metrics["checkpoints"].items():
        for train_suite, scores in result["dpt"].items():
            in_suite = scores[train_suite]["all"]
            print(
                f"{name} DPT probe (layers {result['layers']}) on {train_suite} test scenes: "
                f"AbsRel {in_suite['abs_rel']:.4f}  RMSE {in_suite['rmse']:.4f} m  δ<1.25 {in_suite['delta1']:.3f}"
            )
    print(f"metrics and figures in {cfg.out_dir}")


if __name__ == "__main__":
    run_cli(main)
