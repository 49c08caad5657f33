"""LIBERO's config.yaml always points at the running installation, whatever earlier installations left behind.

The real home folder is never touched: every test sets ``HOME`` (and ``LIBERO_CONFIG_PATH`` where it is used) to a
temporary folder. The last test imports ``libero.libero`` in a fresh process, as ``make demo`` does.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from experiments.robot.libero.sim_setup import FOLDER_KEYS, ensure_libero_config, libero_config_dir, read_init_states
from prismatic.util.cli import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALLED_BENCHMARK_ROOT = Path(next(iter(importlib.util.find_spec("libero").submodule_search_locations))).resolve()
INSTALLED_BENCHMARK_ROOT = INSTALLED_BENCHMARK_ROOT / "libero"


def stale_config(tmp_path: Path) -> dict[str, str]:
    """The config an earlier, since deleted, virtualenv wrote (LIBERO's layout of keys)."""
    old_root = tmp_path / "deleted-clone" / ".venv" / "lib" / "python3.11" / "site-packages" / "libero" / "libero"
    return {
        "benchmark_root": str(old_root),
        "bddl_files": str(old_root / "bddl_files"),
        "init_states": str(old_root / "init_files"),
        "datasets": str(old_root.parent / "datasets"),
        "assets": str(old_root / "assets"),
    }


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("LIBERO_CONFIG_PATH", raising=False)
    return home


def test_default_config_folder_belongs_to_this_installation(fake_home: Path) -> None:
    config_dir = libero_config_dir()
    assert config_dir.parent == fake_home / ".libero" / "installations"
    assert len(config_dir.name) == 16 and config_dir == libero_config_dir()  # stable for one installation
    assert config_dir != fake_home / ".libero"  # LIBERO's shared default is never read


def test_explicit_config_path_wins(fake_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBERO_CONFIG_PATH", str(fake_home / "mine"))
    assert libero_config_dir() == fake_home / "mine"


def test_missing_config_is_written_with_this_installation_paths(tmp_path: Path) -> None:
    config = yaml.safe_load(ensure_libero_config(tmp_path / "config").read_text())
    assert config["bddl_files"] == str(INSTALLED_BENCHMARK_ROOT / "bddl_files")
    assert config["init_states"] == str(INSTALLED_BENCHMARK_ROOT / "init_files")
    assert config["benchmark_root"] == str(INSTALLED_BENCHMARK_ROOT)
    assert all(Path(config[key]).is_dir() for key in FOLDER_KEYS)


def test_stale_entries_are_repaired_in_all_five_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "config.yaml").write_text(yaml.safe_dump(stale_config(tmp_path)))
    with caplog.at_level(logging.WARNING):
        config = yaml.safe_load(ensure_libero_config(config_dir).read_text())
    assert config == {
        "benchmark_root": str(INSTALLED_BENCHMARK_ROOT),
        "bddl_files": str(INSTALLED_BENCHMARK_ROOT / "bddl_files"),
        "init_states": str(INSTALLED_BENCHMARK_ROOT / "init_files"),
        "datasets": str(INSTALLED_BENCHMARK_ROOT.parent / "datasets"),
        "assets": str(INSTALLED_BENCHMARK_ROOT / "assets"),
    }
    assert "key 'bddl_files' points to" in caplog.text and "key 'assets' points to" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # repaired once: the next start keeps it (even folders not there yet)
        assert yaml.safe_load(ensure_libero_config(config_dir).read_text()) == config
    assert caplog.text == ""


def test_entries_naming_existing_folders_are_kept(tmp_path: Path) -> None:
    custom_bddl = tmp_path / "my-bddl-files"
    custom_bddl.mkdir()
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    written = {key: str(tmp_path) for key in stale_config(tmp_path)}
    written["bddl_files"] = str(custom_bddl)
    (config_dir / "config.yaml").write_text(yaml.safe_dump(written))
    config = yaml.safe_load(ensure_libero_config(config_dir).read_text())
    assert config == written


def test_config_that_is_not_a_mapping_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("- a\n- list\n")
    with pytest.raises(UserError, match="config.yaml: expected a mapping"):
        ensure_libero_config(tmp_path)


PROBE = """
from experiments.robot.libero.sim_setup import prepare_libero, task_init_states
prepare_libero()
import os
from libero.libero import benchmark, config_file, get_libero_path
suite = benchmark.get_benchmark_dict()["libero_spatial"]()
print(config_file)
print(get_libero_path("bddl_files"))
print(task_init_states(suite, 0).shape)
print(os.environ["LIBERO_CONFIG_PATH"])
"""


@pytest.mark.parametrize("explicit", [False, True], ids=["default", "LIBERO_CONFIG_PATH"])
def test_fresh_process_runs_whatever_an_earlier_installation_left(tmp_path: Path, explicit: bool) -> None:
    """A deleted earlier clone seeded LIBERO's default ``~/.libero/config.yaml`` (and, with ``LIBERO_CONFIG_PATH``,
    that folder); a fresh process of this installation still finds its BDDL and init-state files."""
    home = tmp_path / "home"
    shared_config = home / ".libero" / "config.yaml"
    shared_config.parent.mkdir(parents=True)
    stale_text = yaml.safe_dump(stale_config(tmp_path))
    shared_config.write_text(stale_text)
    env = {key: value for key, value in os.environ.items() if key != "LIBERO_CONFIG_PATH"}
    env.update({"HOME": str(home), "USE_TF": "0", "PYTHONPATH": str(REPO_ROOT)})
    if explicit:
        env["LIBERO_CONFIG_PATH"] = str(shared_config.parent)
    completed = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    config_file, bddl_files, init_shape, config_dir = completed.stdout.strip().splitlines()[-4:]
    assert bddl_files == str(INSTALLED_BENCHMARK_ROOT / "bddl_files")
    assert init_shape == "(50, 92)"
    assert Path(config_file) == Path(config_dir) / "config.yaml"
    if explicit:
        assert Path(config_dir) == shared_config.parent  # the stale entries of the user's file were repaired
        assert "key 'bddl_files' points to" in completed.stderr
    else:
        assert Path(config_dir).parent == home / ".libero" / "installations"
        assert shared_config.read_text() == stale_text  # LIBERO's shared default was neither read nor changed


class WritesAMarker:
    """A pickle that, when loaded without restriction, creates the file ``path`` (as an attacker's code would)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_init_states_are_read_as_numpy_and_a_crafted_pickle_runs_nothing(tmp_path: Path) -> None:
    states = np.random.default_rng(0).normal(size=(3, 92))
    torch.save(states, tmp_path / "task.pruned_init")
    np.testing.assert_array_equal(read_init_states(tmp_path / "task.pruned_init"), states)

    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted.pruned_init"
    torch.save(WritesAMarker(marker), crafted)
    assert not marker.exists()
    refusal = r"crafted.pruned_init is unsafe: it names posix.system.*not loaded: expected a LIBERO init-state"
    with pytest.raises(UserError, match=refusal):
        read_init_states(crafted)
    assert not marker.exists()  # the code the file names never ran
    torch.load(crafted, weights_only=False)  # what an unrestricted loader does: the control that the file is live
    assert marker.exists()


def test_a_pickled_object_array_or_a_plain_pickle_is_refused(tmp_path: Path) -> None:
    torch.save(np.array([{"a": 1}], dtype=object), tmp_path / "objects.pruned_init")
    with pytest.raises(UserError, match="objects.pruned_init is unsafe"):
        read_init_states(tmp_path / "objects.pruned_init")
    (tmp_path / "plain.pruned_init").write_bytes(pickle.dumps([1.0, 2.0]))
    with pytest.raises(UserError, match="plain.pruned_init"):
        read_init_states(tmp_path / "plain.pruned_init")
