"""Reads a LeRobot dataset folder with the installed ``lerobot`` (run by check_lerobot_reads.sh in its venv).

lerobot opens the metadata (info, tasks, episodes, stats) and the frames' parquet rows; every row's indexes must match
the episode table. The venv's torchvision is a placeholder (see lerobot_venv.sh), so lerobot cannot decode videos
there: each camera's video is decoded with PyAV instead and its frame count checked against the episode table.
"""

from __future__ import annotations

import argparse
from importlib.metadata import version
from pathlib import Path

import av
import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True)
    args = parser.parse_args()
    print(f"lerobot {version('lerobot')}")
    dataset = LeRobotDataset(repo_id=f"local/{args.root.name}", root=args.root)
    meta = dataset.meta
    print(f"episodes {meta.total_episodes}, frames {meta.total_frames}, fps {meta.fps}, cameras {meta.video_keys}")
    print(f"tasks: {list(meta.tasks.index)}")
    table = dataset.hf_dataset.with_format("arrow")[:]  # the numpy formatter would import torchvision.io
    rows = {name: np.asarray(table.column(name).to_pylist()) for name in table.column_names}
    assert len(rows["index"]) == meta.total_frames == len(dataset)
    for episode in range(meta.total_episodes):
        record = meta.episodes[episode]
        start, stop = record["dataset_from_index"], record["dataset_to_index"]
        assert stop - start == record["length"]
        assert (rows["episode_index"][start:stop] == episode).all()
        assert (rows["frame_index"][start:stop] == np.arange(record["length"])).all()
    state, action = rows["observation.state"], rows["action"]
    print(f"observation.state {state.shape}, action {action.shape}; stats keys {sorted(meta.stats)}")
    np.testing.assert_allclose(np.asarray(meta.stats["action"]["mean"]), action.mean(axis=0), rtol=1e-5, atol=1e-6)
    for key in meta.video_keys:
        path = args.root / meta.get_video_file_path(0, key)
        with av.open(str(path)) as container:
            frames = sum(1 for _ in container.decode(video=0))
        assert frames == meta.total_frames, (key, frames, meta.total_frames)
        print(f"{key}: {frames} frames decoded from {path.relative_to(args.root)}")
    print("lerobot read the dataset: OK")


if __name__ == "__main__":
    main()
