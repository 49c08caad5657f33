"""Decoding single frames of LeRobot videos with PyAV.

PyAV's wheels bundle FFmpeg with an AV1 decoder (LeRobot's default codec); torchcodec would need the system's FFmpeg
libraries, which a plain pip install does not bring. Only the frames a sample needs are decoded: seek to the key frame
before the timestamp, decode forward to the frame nearest to it. Open containers are kept in a small LRU cache.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import av
import numpy as np

from prismatic.util.cli import UserError


def check_video_file(path: Path) -> None:
    """Raises :class:`UserError` unless ``path`` opens as a container with a video stream."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserError(f"{path}: no video stream; expected an MP4 with one video stream per camera.")
    except (OSError, av.error.FFmpegError) as error:
        raise UserError(f"{path}: unreadable video file ({error}); re-encode or re-download it.") from None


class VideoFrameReader:
    """``read(path, timestamp)`` -> the [H, W, 3] uint8 RGB frame of ``path`` nearest to ``timestamp`` seconds."""

    def __init__(self, max_open_files: int = 16) -> None:
        self.max_open_files = max_open_files
        self._containers: OrderedDict[Path, av.container.InputContainer] = OrderedDict()

    def _container(self, path: Path) -> av.container.InputContainer:
        if path in self._containers:
            self._containers.move_to_end(path)
            return self._containers[path]
        container = av.open(str(path))
        self._containers[path] = container
        if len(self._containers) > self.max_open_files:
            self._containers.popitem(last=False)[1].close()
        return container

    def read(self, path: Path, timestamp: float, tolerance: float) -> np.ndarray:
        """The frame within ``tolerance`` seconds of ``timestamp``; raises :class:`UserError` if there is none."""
        try:
            container = self._container(path)
            stream = container.streams.video[0]
            container.seek(max(int(timestamp / stream.time_base), 0), stream=stream, backward=True, any_frame=False)
            best, best_distance = None, float("inf")
            for frame in container.decode(stream):
                distance = abs(float(frame.pts * stream.time_base) - timestamp)
                if distance < best_distance:
                    best, best_distance = frame, distance
                if float(frame.pts * stream.time_base) > timestamp + tolerance:
                    break
        except (OSError, av.error.FFmpegError) as error:
            raise UserError(f"{path}: cannot decode the frame at {timestamp:.3f} s ({error}).") from None
        if best is None or best_distance > tolerance:
            raise UserError(
                f"{path}: no frame within {tolerance:.3f} s of {timestamp:.3f} s; the video is shorter than its "
                f"episode's data."
            )
        return best.to_ndarray(format="rgb24")

    def close(self) -> None:
        for container in self._containers.values():
            container.close()
        self._containers.clear()
