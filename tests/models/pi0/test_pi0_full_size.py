"""The full-size pi0, built on the meta device, against the released state-dict manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prismatic.models.pi0 import Pi0Config, Pi0Model
from prismatic.models.pi0.loading_pi0 import (
    EMBED_KEY,
    EXPERT_HEAD_KEY,
    LEGACY_RENAMES,
    LEROBOT_PREFIX,
    LM_HEAD_KEY,
    check_checkpoint,
    parse_checkpoint_header,
)


@pytest.fixture(scope="module")
def full_size() -> Pi0Model:
    with torch.device("meta"):
        return Pi0Model(Pi0Config())


def manifest_shapes(path: Path) -> dict[str, list[int]]:
    """The manifest's entries, ``model.`` prefix stripped (openpi's bare names)."""
    entries = json.loads(path.read_text())["entries"]
    return {entry["key"].removeprefix(LEROBOT_PREFIX): entry["shape"] for entry in entries}


def test_full_size_model_matches_the_manifest_key_for_key(full_size: Pi0Model, manifest_dir: Path):
    manifest = json.loads((manifest_dir / "pi0_state_dict.json").read_text())
    expected = manifest_shapes(manifest_dir / "pi0_state_dict.json")
    shapes = {key: list(tensor.shape) for key, tensor in full_size.state_dict().items()}
    assert sorted(set(expected) - set(shapes)) == [] and sorted(set(shapes) - set(expected)) == []
    assert shapes == expected
    assert len(shapes) == manifest["n_state_dict_entries"] == 778
    assert sum(parameter.numel() for parameter in full_size.parameters()) == manifest["unique_parameters"]
    assert manifest["unique_parameters"] == 3_501_372_176


def test_lm_head_is_tied_and_the_expert_has_no_input_embedding(full_size: Pi0Model):
    state = full_size.state_dict(keep_vars=True)
    assert state[LM_HEAD_KEY] is state[EMBED_KEY]
    assert full_size.paligemma_with_expert.gemma_expert.model.embed_tokens is None
    assert list(state[EXPERT_HEAD_KEY].shape) == [257152, 1024]  # kept, never used
    assert list(state["paligemma_with_expert.gemma_expert.model.layers.0.self_attn.q_proj.weight"].shape) == [
        2048,
        1024,
    ]
    # No persistent buffers; RoPE's inv_freq (not saved) stays float32 under the bf16 policy.
    buffers = dict(full_size.named_buffers())
    assert not set(buffers) & set(state)
    assert all(buffer.dtype == torch.float32 for name, buffer in buffers.items() if name.endswith("inv_freq"))


def test_lerobot_033_manifest_maps_onto_the_same_keys(manifest_dir: Path):
    legacy = manifest_shapes(manifest_dir / "pi0_lerobot033_state_dict.json")
    current = manifest_shapes(manifest_dir / "pi0_state_dict.json")
    renamed = {}
    for key, shape in legacy.items():
        for old, new in LEGACY_RENAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        renamed[key] = shape
    assert renamed == current


def test_bfloat16_policy_keeps_87_float32_entries(full_size: Pi0Model):
    dtypes = [tensor.dtype for tensor in full_size.state_dict().values()]
    assert dtypes.count(torch.float32) == 87 and dtypes.count(torch.bfloat16) == 691
    state = full_size.state_dict()
    assert state["paligemma_with_expert.gemma_expert.model.norm.weight"].dtype == torch.float32
    assert state["action_time_mlp_in.weight"].dtype == torch.float32
    assert state[EMBED_KEY].dtype == torch.bfloat16


@pytest.mark.parametrize("manifest_name", ["pi0_state_dict.json", "pi0_lerobot033_state_dict.json"])
def test_released_headers_pass_the_loader_checks_at_full_size(
    full_size: Pi0Model, manifest_dir: Path, manifest_name: str
):
    """The 777 tensors a release holds on disk (the manifest less the tied name ``save_model`` drops), in lerobot's
    layouts and openpi's bare one, match the full-size model with nothing missing or unexpected."""
    manifest = json.loads((manifest_dir / manifest_name).read_text())
    on_disk = [entry for entry in manifest["entries"] if entry["key"] not in manifest["save_model_drops"]]
    assert len(on_disk) == manifest["n_on_disk_entries"] == 777
    expected = {key: tuple(tensor.shape) for key, tensor in full_size.state_dict().items()}
    headers = {"lerobot": {entry["key"]: tuple(entry["shape"]) for entry in on_disk}}
    if manifest_name == "pi0_state_dict.json":
        headers["openpi"] = {key.removeprefix(LEROBOT_PREFIX): shape for key, shape in headers["lerobot"].items()}
    for layout, shapes in headers.items():
        parsed = parse_checkpoint_header(Path(manifest_name), shapes, dict.fromkeys(shapes, "BF16"))
        assert parsed.layout == (layout if manifest_name == "pi0_state_dict.json" else "lerobot033")
        assert check_checkpoint(parsed, expected, full_size.config) == ([], [])
