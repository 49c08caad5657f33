"""scripts/setup_env.sh says what it installs, step by step and package by package (apt, pip and venv stand-ins)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

APT_GET = """#!/bin/sh
[ "$1" = update ] && exit 0
echo "Reading package lists..."
echo "Get:1 http://archive.ubuntu.com/ubuntu jammy/main amd64 libosmesa6 amd64 22.0.1-1ubuntu2 [3,067 kB]"
echo "Unpacking libosmesa6:amd64 (22.0.1-1ubuntu2) ..."
echo "Setting up libosmesa6:amd64 (22.0.1-1ubuntu2) ..."
"""
VENV_PYTHON = """#!/bin/sh
case "$*" in
  *" install "*) echo "Collecting $(eval echo \\${$#})"; echo "  Downloading x.whl (1.2 MB)";
                 echo "Installing collected packages: $(eval echo \\${$#})"; echo "Successfully installed it";;
esac
"""
SYSTEM_PYTHON = """#!/bin/sh
# -m venv DIR: a venv whose python answers like pip
mkdir -p "$3/bin" && cp "$(dirname "$0")/venv-python" "$3/bin/python"
"""


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_setup_prints_each_step_and_each_package_it_installs(tmp_path):
    shims = tmp_path / "bin"
    shims.mkdir()
    _executable(shims / "ldconfig", "#!/bin/sh\nexit 0\n")  # no GL library found
    _executable(shims / "apt-get", APT_GET)
    _executable(shims / "sudo", '#!/bin/sh\nexec "$@"\n')
    _executable(shims / "venv-python", VENV_PYTHON)
    _executable(shims / "python3", SYSTEM_PYTHON)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "VENV": str(tmp_path / "venv")}
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "setup_env.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    steps = [line.split("] ")[0] for line in lines if line.startswith("[setup ") and "/6]" in line]
    assert steps == [f"[setup {k}/6" for k in range(1, 7)]
    assert "[setup]   fetched libosmesa6 (3,067 kB)" in lines
    assert "[setup]   Setting up libosmesa6:amd64 (22.0.1-1ubuntu2) ..." in lines
    assert "[setup]   Collecting torchvision" in lines and "[setup]   Collecting .[libero,dev]" in lines
    assert "Reading package lists..." not in result.stdout and "Downloading" not in result.stdout
    assert lines[-1].startswith(f"[setup] environment ready in {tmp_path / 'venv'} after ")
