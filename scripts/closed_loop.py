"""The whole chain on real simulator data, on CPU (``make closed-loop``): oracle demonstrations of libero_spatial
task 0 -> a tiny VLA trained from scratch with finetune.py -> LIBERO evaluation in process and through
serve_policy.py -> results.json and loss.png (``--data_format lerobot``: trained from the LeRobot copy of the same
demonstrations -> results-lerobot.json; ``--model_family pi0``: a tiny pi0 -> results-pi0.json). Stage-resumable;
see ``experiments.robot.libero.closed_loop``.

    python scripts/closed_loop.py [--num_demos 20] [--max_steps 1000] [--episodes 10] [--stages '[demos,train]'] \
        [--data_format lerobot] [--model_family pi0]
"""

import draccus

from experiments.robot.libero.closed_loop import ClosedLoopConfig, run_stages
from prismatic.util.cli import run_cli


@draccus.wrap()
def main(cfg: ClosedLoopConfig) -> None:
    run_stages(cfg)


if __name__ == "__main__":
    run_cli(main)
