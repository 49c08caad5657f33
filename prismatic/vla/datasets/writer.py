"""Writing LIBERO-format RLDS datasets (the ``openvla/modified_libero_rlds`` schema) from numpy arrays.

Output: ``<data_root_dir>/<dataset_name>/<version>/`` with ``<dataset_name>-train.tfrecord-*``,
``dataset_info.json`` and ``features.json``, written by a tensorflow-datasets builder (into a temporary folder
that is renamed into place when complete), so the result reads exactly like the downloaded data.
Images are JPEG-encoded by tensorflow-datasets (``tf.image.encode_jpeg``, quality 95).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prismatic.util.cli import UserError
from prismatic.vla.datasets.geometry import DEPTH_SUFFIX, INTRINSICS_SUFFIX
from prismatic.vla.datasets.tf_runtime import import_tensorflow_datasets

LIBERO_STATE_DIM = 8  # EEF position 3, axis-angle 3, gripper joint positions 2
LIBERO_JOINT_STATE_DIM = 7
LIBERO_ACTION_DIM = 7  # EEF delta position 3, delta rotation 3, gripper (-1 open, +1 close)


@dataclass
class LiberoEpisode:
    """One demonstration, T steps. Images are [T, S, S, 3] uint8 as the robot sees them (already upright)."""

    images: np.ndarray  # agentview camera
    wrist_images: np.ndarray  # eye-in-hand camera
    states: np.ndarray  # [T, 8] float32
    joint_states: np.ndarray  # [T, 7] float32
    actions: np.ndarray  # [T, 7] float32
    language_instruction: str
    file_path: str  # provenance, stored as episode_metadata/file_path
    # Optional camera geometry (datasets.geometry), all four or none: metric z-depth [T, S, S] float32 and pinhole
    # intrinsics [T, 3, 3] float32 of each camera, stored as observation/{image,wrist_image}_{depth,intrinsics}.
    depths: np.ndarray | None = None
    wrist_depths: np.ndarray | None = None
    intrinsics: np.ndarray | None = None
    wrist_intrinsics: np.ndarray | None = None

    @classmethod
    def from_npz(cls, path: str | Path) -> LiberoEpisode:
        """An episode saved by ``np.savez`` with these fields' names (``instruction`` for the language)."""
        with np.load(path) as saved:
            return cls(
                images=saved["images"],
                wrist_images=saved["wrist_images"],
                states=saved["states"],
                joint_states=saved["joint_states"],
                actions=saved["actions"],
                language_instruction=str(saved["instruction"]),
                file_path=str(saved["file_path"]),
            )

    def validate(self, image_size: int, with_depth: bool = False) -> None:
        """Raises ``ValueError`` naming the episode and field whose shape or dtype is wrong."""
        num_steps = len(self.actions)
        expected = {
            "images": ((num_steps, image_size, image_size, 3), np.uint8),
            "wrist_images": ((num_steps, image_size, image_size, 3), np.uint8),
            "states": ((num_steps, LIBERO_STATE_DIM), None),
            "joint_states": ((num_steps, LIBERO_JOINT_STATE_DIM), None),
            "actions": ((num_steps, LIBERO_ACTION_DIM), None),
        }
        if with_depth:
            expected.update(
                depths=((num_steps, image_size, image_size), np.float32),
                wrist_depths=((num_steps, image_size, image_size), np.float32),
                intrinsics=((num_steps, 3, 3), np.float32),
                wrist_intrinsics=((num_steps, 3, 3), np.float32),
            )
        for name, (shape, dtype) in expected.items():
            value = np.asarray(getattr(self, name))
            if value.shape != shape or (dtype is not None and value.dtype != dtype):
                raise ValueError(
                    f"Episode {self.file_path!r}: {name} has shape {value.shape} and dtype {value.dtype}; "
                    f"expected shape {shape}" + (f" and dtype {np.dtype(dtype)}" if dtype is not None else "") + "."
                )
        if num_steps == 0:
            raise ValueError(f"Episode {self.file_path!r} has no steps.")

    def to_example(self, with_depth: bool = False) -> dict[str, Any]:
        """The nested dict tensorflow-datasets encodes as one RLDS episode (``with_depth``: with its geometry)."""
        num_steps = len(self.actions)
        geometry = {
            "image" + DEPTH_SUFFIX: self.depths,
            "wrist_image" + DEPTH_SUFFIX: self.wrist_depths,
            "image" + INTRINSICS_SUFFIX: self.intrinsics,
            "wrist_image" + INTRINSICS_SUFFIX: self.wrist_intrinsics,
        }
        steps = [
            {
                "observation": {
                    "image": self.images[t],
                    "wrist_image": self.wrist_images[t],
                    "state": np.asarray(self.states[t], np.float32),
                    "joint_state": np.asarray(self.joint_states[t], np.float32),
                    **({key: value[t] for key, value in geometry.items()} if with_depth else {}),
                },
                "action": np.asarray(self.actions[t], np.float32),
                "discount": 1.0,
                "reward": float(t == num_steps - 1),
                "is_first": t == 0,
                "is_last": t == num_steps - 1,
                "is_terminal": t == num_steps - 1,
                "language_instruction": self.language_instruction,
            }
            for t in range(num_steps)
        ]
        return {"steps": steps, "episode_metadata": {"file_path": self.file_path}}


def libero_features(image_size: int = 256, with_depth: bool = False) -> Any:
    """The ``tfds.features.FeaturesDict`` of ``openvla/modified_libero_rlds`` (``with_depth``: plus each camera's
    depth and intrinsics, ``datasets.geometry``)."""
    tfds = import_tensorflow_datasets()
    features = tfds.features

    def camera() -> Any:
        return features.Image(shape=(image_size, image_size, 3), dtype=np.uint8, encoding_format="jpeg")

    observation = {
        "image": camera(),
        "wrist_image": camera(),
        "state": features.Tensor(shape=(LIBERO_STATE_DIM,), dtype=np.float32),
        "joint_state": features.Tensor(shape=(LIBERO_JOINT_STATE_DIM,), dtype=np.float32),
    }
    if with_depth:
        for key in ("image", "wrist_image"):
            observation[key + DEPTH_SUFFIX] = features.Tensor(shape=(image_size, image_size), dtype=np.float32)
            observation[key + INTRINSICS_SUFFIX] = features.Tensor(shape=(3, 3), dtype=np.float32)
    step = {
        "observation": features.FeaturesDict(observation),
        "action": features.Tensor(shape=(LIBERO_ACTION_DIM,), dtype=np.float32),
        "discount": features.Scalar(dtype=np.float32),
        "reward": features.Scalar(dtype=np.float32),
        "is_first": features.Scalar(dtype=np.bool_),
        "is_last": features.Scalar(dtype=np.bool_),
        "is_terminal": features.Scalar(dtype=np.bool_),
        "language_instruction": features.Text(),
    }
    return features.FeaturesDict(
        {
            "steps": features.Dataset(step),
            "episode_metadata": features.FeaturesDict({"file_path": features.Text()}),
        }
    )


def check_output_dataset(data_root_dir: str | Path, dataset_name: str, overwrite: bool, version: str = "1.0.0") -> None:
    """Refuses (before any work) to write over an existing dataset unless ``overwrite``."""
    builder_dir = Path(data_root_dir) / dataset_name / version
    if builder_dir.exists() and not overwrite:
        raise UserError(f"--data_root_dir: {builder_dir} already exists: expected a new folder, or --overwrite True")


def write_libero_rlds(
    episodes: Iterable[LiberoEpisode],
    data_root_dir: str | Path,
    dataset_name: str,
    version: str = "1.0.0",
    image_size: int = 256,
    overwrite: bool = False,
    with_depth: bool = False,
) -> Path:
    """Writes ``episodes`` (consumed lazily) as the single ``train`` split; returns the dataset's version folder.

    ``with_depth``: every episode carries depth and intrinsics, stored per camera (``datasets.geometry``)."""
    tfds = import_tensorflow_datasets()
    builder_dir = Path(data_root_dir) / dataset_name / version
    if builder_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{builder_dir} already exists; pass overwrite=True (--overwrite) to replace it.")
        shutil.rmtree(builder_dir)

    def generate_examples() -> Iterator[tuple[str, dict[str, Any]]]:
        for index, episode in enumerate(episodes):
            episode.validate(image_size, with_depth)
            yield f"episode_{index:06d}", episode.to_example(with_depth)

    with tfds.core.registered.skip_registration():

        class LiberoRLDSBuilder(tfds.core.GeneratorBasedBuilder):
            name = dataset_name
            VERSION = tfds.core.Version(version)
            code_path = None  # no checksums/metadata files next to this module (tfds would look for them)

            def _info(self) -> Any:
                return tfds.core.DatasetInfo(builder=self, features=libero_features(image_size, with_depth))

            def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
                return {"train": generate_examples()}

            def _generate_examples(self) -> Iterator[tuple[str, dict[str, Any]]]:
                return generate_examples()

    with tempfile.TemporaryDirectory() as download_dir:
        builder = LiberoRLDSBuilder(data_dir=str(data_root_dir))
        builder.download_and_prepare(
            download_dir=download_dir, download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    return builder_dir
