"""Fixtures for the VGGT tests: the golden tiny model and the golden fixture files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prismatic.testing.golden import apply_golden_weights
from vggt.models.vggt import VGGT
from vggt.presets import tiny_vggt_kwargs

GOLDEN_CASES = ("vggt_aggregator", "vggt_aggregator_square")


@pytest.fixture(autouse=True, scope="package")
def _single_thread():
    """One intra-op thread: the tiny shapes gain nothing from more, and a busy shared CPU makes threads wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def golden_tiny_vggt() -> VGGT:
    """Feature-only tiny VGGT with weight rule sf-golden-v1 applied (keys hashed without ``aggregator.``).

    Shared across tests: use it read-only and in eval mode.
    """
    with torch.device("meta"):
        model = VGGT(**tiny_vggt_kwargs())
    model = model.to_empty(device="cpu").eval()  # every entry is overwritten below: skip the random init
    return apply_golden_weights(model, strip_prefix="aggregator.")


@pytest.fixture(scope="session", params=GOLDEN_CASES)
def golden_case(request, golden_dir: Path) -> dict[str, torch.Tensor]:
    """The tensors of one golden aggregator file (main 56x84 case, then the 112x112 square case)."""
    return load_file(golden_dir / f"{request.param}.safetensors")


@pytest.fixture(scope="session")
def golden_main(golden_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(golden_dir / "vggt_aggregator.safetensors")
