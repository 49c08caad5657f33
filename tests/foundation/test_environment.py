"""The installed environment: packages import, and TensorFlow and torch live together in one process."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_packages_import_without_tensorflow():
    result = _run("import sys, prismatic, vggt; print('tensorflow' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_tensorflow_and_torch_share_a_process():
    code = (
        "import tensorflow as tf, torch, peft, timm, transformers\n"
        "x = tf.constant([1.0, 2.0]) * 2\n"
        "y = torch.tensor([1.0, 2.0]) * 2\n"
        "print(float(tf.reduce_sum(x)), float(y.sum()))"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "6.0 6.0"


def test_no_git_dependencies_and_torch_pair_pinned():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    requirements = pyproject["project"]["dependencies"] + sum(extras.values(), [])
    assert not [r for r in requirements if "git+" in r or "@" in r]
    assert {"libero", "gpu", "dev"} <= set(extras)
    pins = (REPO_ROOT / "requirements-cpu.txt").read_text().split()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins
