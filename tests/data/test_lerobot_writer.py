"""LIBERO episodes written as LeRobot v3.0 read back through the project's LeRobot reader, values and frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from prismatic.vla.datasets.lerobot import LeRobotMapping, open_lerobot
from prismatic.vla.datasets.lerobot_writer import write_lerobot_v30
from prismatic.vla.datasets.video import VideoFrameReader
from prismatic.vla.datasets.writer import LiberoEpisode

SIZE, FPS = 32, 20


def _episode(length: int, seed: int, instruction: str) -> LiberoEpisode:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    # Flat colour blocks that change per frame: survive AV1 compression well enough to be told apart.
    images = np.stack([np.full((SIZE, SIZE, 3), (20 * t + 40 * seed) % 200 + 30, np.uint8) for t in range(length)])
    images[:, rows < SIZE // 2] = 0  # top half black: the orientation is kept
    wrist = 255 - images
    return LiberoEpisode(
        images=images,
        wrist_images=wrist,
        states=rng.normal(size=(length, 8)).astype(np.float32),
        joint_states=rng.normal(size=(length, 7)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(length, 7)).astype(np.float32),
        language_instruction=instruction,
        file_path=f"demo_{seed}",
    )


def test_written_v30_dataset_reads_back_with_states_actions_tasks_and_frames(tmp_path: Path) -> None:
    episodes = [_episode(5, 0, "put the bowl on the plate"), _episode(7, 1, "put the bowl on the plate")]
    write_lerobot_v30(iter(episodes), tmp_path / "oracle", fps=FPS)
    source = open_lerobot(tmp_path, "oracle", LeRobotMapping())

    assert source.version == "v3.0" and source.fps == FPS
    assert source.mapping.camera_keys == ("observation.images.image", "observation.images.wrist_image")
    assert [episode.length for episode in source.episodes] == [5, 7]
    np.testing.assert_array_equal(source.actions, np.concatenate([e.actions for e in episodes]))
    np.testing.assert_array_equal(source.states, np.concatenate([e.states for e in episodes]))
    assert set(source.instructions) == {"put the bowl on the plate"}

    reader = VideoFrameReader()
    second = source.episodes[1]
    for key, field_name in (("observation.images.image", "images"), ("observation.images.wrist_image", "wrist_images")):
        video_file, offset = second.videos[key]
        assert offset == pytest.approx(5 / FPS)
        frame = reader.read(video_file, offset + 3 / FPS, 0.5 / FPS)
        expected = getattr(episodes[1], field_name)[3].astype(int)
        assert np.abs(frame.astype(int) - expected).mean() < 6  # lossy AV1, same frame, same orientation


def test_a_lower_video_crf_keeps_the_frames_closer(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    episode = _episode(6, 0, "put the bowl on the plate")
    grey_noise = rng.integers(-40, 40, (*episode.images.shape[:3], 1))  # luma only: yuv420p halves the chroma
    textured = np.clip(episode.images.astype(int) + grey_noise, 0, 255)
    episode = LiberoEpisode(**{**episode.__dict__, "images": textured.astype(np.uint8)})
    errors = {}
    for crf in (45, 5):
        write_lerobot_v30(iter([episode]), tmp_path / f"crf{crf}", fps=FPS, video_crf=crf)
        (written,) = open_lerobot(tmp_path, f"crf{crf}", LeRobotMapping()).episodes
        video_file, offset = written.videos["observation.images.image"]
        frames = [VideoFrameReader().read(video_file, offset + t / FPS, 0.5 / FPS) for t in range(6)]
        errors[crf] = np.abs(np.stack(frames).astype(int) - episode.images.astype(int)).mean()
    assert errors[5] < 0.5 * errors[45], errors
