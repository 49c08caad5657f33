"""A small separate virtualenv holding the real ``openpi-client`` from PyPI, for the serving tests.

openpi-client pins ``numpy<2`` while the project runs numpy 2, so the two cannot share an environment. The venv is
created once under ``.cache/openpi-client-<version>/`` of the repository (git-ignored) and reused while its marker
file says the same pins were installed.

    python -m prismatic.testing.openpi_client_env      # creates it (needs PyPI), prints its python
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

OPENPI_CLIENT_VERSION = "0.1.2"
# openpi-client's declared dependencies, pinned (typing-extensions is imported by its client but not declared).
OPENPI_CLIENT_PINS = (
    f"openpi-client=={OPENPI_CLIENT_VERSION}",
    "numpy==1.26.4",
    "websockets==17.4",
    "msgpack==1.2.4",
    "dm-tree==0.1.9",
    "pillow==11.3.0",
    "typing-extensions==4.15.0",
)
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ENV_DIR = REPO_ROOT / ".cache" / f"openpi-client-{OPENPI_CLIENT_VERSION}"
MARKER_NAME = "installed-pins.txt"


def ensure_openpi_client_env(env_dir: Path = DEFAULT_ENV_DIR) -> Path:
    """The python of a venv with ``OPENPI_CLIENT_PINS`` installed, creating or repairing it when needed."""
    python = env_dir / "bin" / "python"
    marker = env_dir / MARKER_NAME
    expected = "\n".join(OPENPI_CLIENT_PINS) + "\n"
    if python.exists() and marker.exists() and marker.read_text() == expected:
        return python
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *OPENPI_CLIENT_PINS],
        check=True,
    )
    marker.write_text(expected)
    return python


if __name__ == "__main__":
    print(ensure_openpi_client_env(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_ENV_DIR))
