"""The module is a plug-in for any VLA: importing it pulls in torch only, no VLA, VGGT or HF code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_import_loads_no_vla_vggt_or_hf_code():
    script = (
        "import sys, json, prismatic.spatial_forcing; "
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules} | "
        "{name for name in sys.modules if name.startswith('prismatic.')})))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    loaded = set(json.loads(result.stdout))
    assert "torch" in loaded and "prismatic.spatial_forcing" in loaded
    forbidden = {"transformers", "timm", "peft", "vggt", "tensorflow", "prismatic.models", "prismatic.vla"}
    assert not loaded & forbidden, loaded & forbidden
