"""Converting LIBERO's raw HDF5 demonstrations (robomimic layout) into RLDS ``*_no_noops`` datasets.

Input, per file: ``data/demo_<N>/obs/{agentview_rgb, eye_in_hand_rgb, ee_states, gripper_states,
joint_states}`` and ``data/demo_<N>/actions``, with the task's language instruction in the JSON attribute
``data.attrs["problem_info"]["language_instruction"]``.

What the conversion does, as upstream's ``regenerate_libero_dataset.py`` + RLDS builder: drops no-op steps
(``||a[:6]|| < 1e-4`` and the gripper action equal to that of the previous kept step; for the first step only
the norm test), rotates both cameras by 180 degrees (the raw renders are upside down), and stores
state = ``ee_states`` (6) + ``gripper_states`` (2). Unlike upstream it does not replay the demos in the
simulator: images are resized from the recorded resolution (128 px in LIBERO's release) to ``image_size``
with Lanczos filtering, and failed demonstrations cannot be detected, so every demo is kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from prismatic.util.cli import UserError
from prismatic.vla.datasets.writer import LiberoEpisode, write_libero_rlds

NOOP_THRESHOLD = 1e-4
OBSERVATION_KEYS = ("agentview_rgb", "eye_in_hand_rgb", "ee_states", "gripper_states", "joint_states")


def noop_mask(actions: np.ndarray, threshold: float = NOOP_THRESHOLD) -> np.ndarray:
    """[T] bool, True for steps upstream drops: no arm motion and (after the first step) an unchanged gripper.

    "Unchanged" compares with the last *kept* step, as upstream's filter does while it replays a demo.
    """
    is_noop = np.zeros(len(actions), dtype=bool)
    previous_kept = None
    for t, action in enumerate(actions):
        still = np.linalg.norm(action[:-1]) < threshold
        is_noop[t] = still and (previous_kept is None or action[-1] == previous_kept[-1])
        if not is_noop[t]:
            previous_kept = action
    return is_noop


def language_instruction_of(hdf5_file: h5py.File, path: Path) -> str:
    """The instruction stored in ``data.attrs["problem_info"]`` (a JSON string)."""
    if "data" not in hdf5_file or "problem_info" not in hdf5_file["data"].attrs:
        raise KeyError(f"{path}: missing attribute data.attrs['problem_info'] holding the language instruction.")
    problem_info = json.loads(hdf5_file["data"].attrs["problem_info"])
    if "language_instruction" not in problem_info:
        raise KeyError(
            f"{path}: data.attrs['problem_info'] has no 'language_instruction' (keys {sorted(problem_info)})."
        )
    # LIBERO stores the instruction either as a string or as a list of its characters.
    return "".join(problem_info["language_instruction"]).strip()


def _rotate_and_resize(images: np.ndarray, image_size: int) -> np.ndarray:
    """[T, H, W, 3] uint8 -> rotated by 180 degrees and resized to [T, S, S, 3]."""
    rotated = images[:, ::-1, ::-1]
    if rotated.shape[1:3] == (image_size, image_size):
        return np.ascontiguousarray(rotated)
    return np.stack(
        [np.asarray(Image.fromarray(frame).resize((image_size, image_size), Image.LANCZOS)) for frame in rotated]
    )


def _demo_names(hdf5_file: h5py.File, path: Path) -> list[str]:
    """The demos of ``data`` in order (``demo_0``, ``demo_1``, ...), each checked to hold every dataset read."""
    names = list(hdf5_file["data"].keys())
    if not names or not all(name.rsplit("_", 1)[-1].isdigit() for name in names):
        raise KeyError(f"{path}: data holds {names[:5]}: expected demos named demo_0, demo_1, ...")
    for name in names:
        for key in ("actions", *(f"obs/{observation}" for observation in OBSERVATION_KEYS)):
            if key not in hdf5_file["data"][name]:
                raise KeyError(f"{path}: demo 'data/{name}' lacks dataset '{key}'.")
    return sorted(names, key=lambda name: int(name.rsplit("_", 1)[-1]))


def check_libero_hdf5(path: str | Path) -> None:
    """The file opens as HDF5 and has LIBERO's layout (instruction, demos and their datasets; no arrays are read),
    else a UserError naming it, so that a bad file stops a conversion before anything is written."""
    try:
        with h5py.File(path, "r") as hdf5_file:
            language_instruction_of(hdf5_file, Path(path))
            _demo_names(hdf5_file, Path(path))
    except OSError as error:
        raise UserError(f"{path} is not a readable HDF5 file ({error}): expected a LIBERO demonstration file") from None
    except (KeyError, ValueError) as error:
        message = str(error.args[0]) if isinstance(error, KeyError) else str(error)
        raise UserError(f"{message.rstrip('.')}: expected a LIBERO demonstration file") from None


def read_libero_hdf5(path: str | Path, image_size: int = 256) -> Iterator[LiberoEpisode]:
    """The no-op-filtered episodes of one LIBERO HDF5 file, in demo order (``demo_0``, ``demo_1``, ...)."""
    path = Path(path)
    with h5py.File(path, "r") as hdf5_file:
        instruction = language_instruction_of(hdf5_file, path)
        for demo_name in _demo_names(hdf5_file, path):
            demo = hdf5_file["data"][demo_name]
            actions = np.asarray(demo["actions"], np.float32)
            keep = ~noop_mask(actions)
            observations = {name: np.asarray(demo["obs"][name])[keep] for name in OBSERVATION_KEYS}
            if observations["ee_states"].shape[-1] != 6 or observations["gripper_states"].shape[-1] != 2:
                raise ValueError(
                    f"{path}: data/{demo_name}: expected obs/ee_states [T, 6] and obs/gripper_states [T, 2], got "
                    f"{observations['ee_states'].shape} and {observations['gripper_states'].shape}."
                )
            yield LiberoEpisode(
                images=_rotate_and_resize(observations["agentview_rgb"], image_size),
                wrist_images=_rotate_and_resize(observations["eye_in_hand_rgb"], image_size),
                states=np.concatenate([observations["ee_states"], observations["gripper_states"]], axis=-1).astype(
                    np.float32
                ),
                joint_states=observations["joint_states"].astype(np.float32),
                actions=actions[keep],
                language_instruction=instruction,
                file_path=f"{path}/data/{demo_name}",
            )


def convert_libero_hdf5(
    hdf5_paths: Iterable[str | Path],
    data_root_dir: str | Path,
    dataset_name: str,
    image_size: int = 256,
    overwrite: bool = False,
) -> Path:
    """Converts every demo of ``hdf5_paths`` into one RLDS dataset; returns its version folder."""
    paths = [Path(path) for path in hdf5_paths]
    if not paths:
        raise ValueError("No HDF5 files to convert.")
    episodes = (episode for path in paths for episode in read_libero_hdf5(path, image_size))
    return write_libero_rlds(episodes, data_root_dir, dataset_name, image_size=image_size, overwrite=overwrite)
