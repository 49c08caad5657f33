"""Strict checkpoint loading: head keys skipped with one log line, every aggregator mismatch named, round trips."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch

from vggt.loading import (
    VGGTCheckpointError,
    infer_vggt_kwargs,
    load_vggt_state_dict,
    load_vggt_weights,
    read_state_dict,
    save_vggt_weights,
)
from vggt.models.vggt import VGGT
from vggt.presets import teacher_vggt_kwargs, tiny_vggt_kwargs

# A few keys of each upstream head, as the real model.pt has them (vggt-facts.md section 4.2).
HEAD_KEYS = {
    "camera_head.empty_pose_tokens": (1, 1, 9),
    "point_head.norm.weight": (8,),
    "depth_head.scratch.output_conv2.2.bias": (2,),
    "track_head.tracker.query_ref_token": (1, 2, 12),
}


@pytest.fixture(scope="module")
def tiny_state_dict(golden_tiny_vggt: VGGT) -> dict[str, torch.Tensor]:
    return {key: tensor.clone() for key, tensor in golden_tiny_vggt.state_dict().items()}


def _shape_only_tiny_model() -> VGGT:
    """The tiny model on the meta device: enough for checks that fail before any value is loaded."""
    with torch.device("meta"):
        return VGGT(**tiny_vggt_kwargs())


def _micro_model() -> VGGT:
    """A VGGT small enough to build with real random weights in milliseconds."""
    return VGGT(**{**tiny_vggt_kwargs(), "patch_embed": "conv", "embed_dim": 64, "num_heads": 1})


def _manifest_state_dict(manifest_dir: Path) -> dict[str, torch.Tensor]:
    """VGGT-1B's full state dict (all heads) as meta tensors with the manifest's shapes."""
    manifest = json.loads((manifest_dir / "vggt_1b_state_dict.json").read_text())
    return {key: torch.empty(shape, device="meta") for key, shape in manifest.items()}


def test_real_vggt_1b_key_set_loads_into_the_feature_model_and_skips_heads(manifest_dir, caplog):
    state_dict = _manifest_state_dict(manifest_dir)
    with torch.device("meta"):
        model = VGGT(**teacher_vggt_kwargs())
    with caplog.at_level(logging.INFO, logger="vggt.loading"):
        load_vggt_state_dict(model, state_dict, source="model.pt")
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "587 keys" in message and "model.pt" in message
    for head, count in {"camera_head": 69, "point_head": 62, "depth_head": 62, "track_head": 394}.items():
        assert f"{head} ({count})" in message
    # Assigned, not copied: the model now holds the checkpoint's tensors.
    assert model.aggregator.camera_token is not None
    assert model.aggregator.camera_token.data_ptr() == state_dict["aggregator.camera_token"].data_ptr()


def test_configuration_is_inferred_from_the_vggt_1b_shapes(manifest_dir):
    assert infer_vggt_kwargs(_manifest_state_dict(manifest_dir)) == {
        "embed_dim": 1024,
        "depth": 24,
        "num_heads": 16,
        "mlp_ratio": 4.0,
        "num_register_tokens": 4,
        "patch_embed": "dinov2_vitl14_reg",
        "patch_size": 14,
        "img_size": 518,
    }


def test_full_checkpoint_with_heads_loads_every_aggregator_tensor(tmp_path, caplog):
    aggregator_state = _micro_model().state_dict()
    checkpoint = {**aggregator_state, **{key: torch.randn(shape) for key, shape in HEAD_KEYS.items()}}
    path = tmp_path / "model.pt"
    torch.save(checkpoint, path)
    model = _micro_model()
    with caplog.at_level(logging.INFO, logger="vggt.loading"):
        load_vggt_weights(model, path)
    assert [record.getMessage().split(":")[0] for record in caplog.records] == [
        f"Skipped 4 keys of VGGT heads the model does not build from {path}"
    ]
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], tensor) for key, tensor in aggregator_state.items())


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_save_then_load_round_trip_is_bit_identical(golden_tiny_vggt, golden_main, tmp_path, suffix):
    path = tmp_path / f"tiny{suffix}"
    save_vggt_weights(golden_tiny_vggt, path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    again = tmp_path / "again" / path.name
    save_vggt_weights(golden_tiny_vggt, again)  # the same tensors give the same bytes, whatever the temporary's name
    assert again.read_bytes() == path.read_bytes()

    reloaded = VGGT.from_checkpoint(path)  # configuration inferred from the shapes
    assert not reloaded.training
    original_state, reloaded_state = golden_tiny_vggt.state_dict(), reloaded.state_dict()
    assert list(original_state) == list(reloaded_state)
    assert all(torch.equal(original_state[key], reloaded_state[key]) for key in original_state)
    with torch.no_grad():
        expected = golden_tiny_vggt(golden_main["images"], output_layers=[-1]).features[0]
        actual = reloaded(golden_main["images"], output_layers=[-1]).features[0]
    assert torch.equal(actual, expected)


def test_tiny_configuration_is_inferred_from_its_shapes(tiny_state_dict):
    inferred = infer_vggt_kwargs(tiny_state_dict)
    assert {key: inferred[key] for key in ("embed_dim", "depth", "num_heads", "patch_embed", "img_size")} == {
        "embed_dim": 384,
        "depth": 2,
        "num_heads": 6,
        "patch_embed": "dinov2_vits14_reg",
        "img_size": 518,
    }


def test_missing_aggregator_key_is_named_with_its_shape(tiny_state_dict):
    state_dict = dict(tiny_state_dict)
    del state_dict["aggregator.frame_blocks.1.attn.k_norm.bias"]
    with pytest.raises(VGGTCheckpointError, match=r"missing key 'aggregator.frame_blocks.1.attn.k_norm.bias'.*\[64\]"):
        load_vggt_state_dict(_shape_only_tiny_model(), state_dict)


def test_unexpected_aggregator_key_is_named(tiny_state_dict):
    state_dict = {**tiny_state_dict, "aggregator.frame_blocks.2.ls1.gamma": torch.zeros(384)}
    with pytest.raises(VGGTCheckpointError, match=r"unexpected key 'aggregator.frame_blocks.2.ls1.gamma'.*\[384\]"):
        load_vggt_state_dict(_shape_only_tiny_model(), state_dict)


def test_unexpected_key_outside_the_heads_is_not_skipped(tiny_state_dict):
    state_dict = {**tiny_state_dict, "pose_head.weight": torch.zeros(3)}
    with pytest.raises(VGGTCheckpointError, match="unexpected key 'pose_head.weight'"):
        load_vggt_state_dict(_shape_only_tiny_model(), state_dict)


def test_mis_shaped_key_is_named_with_both_shapes(tiny_state_dict):
    state_dict = {**tiny_state_dict, "aggregator.patch_embed.pos_embed": torch.zeros(1, 257, 384)}
    with pytest.raises(
        VGGTCheckpointError,
        match=r"'aggregator.patch_embed.pos_embed' has shape \[1, 257, 384\] in the checkpoint "
        r"but the model expects \[1, 1370, 384\]",
    ):
        load_vggt_state_dict(_shape_only_tiny_model(), state_dict)


def test_failed_load_leaves_the_model_untouched():
    model = _micro_model()
    before = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    state_dict = {key: torch.zeros_like(tensor) for key, tensor in before.items()}
    state_dict.pop("aggregator.camera_token")
    with pytest.raises(VGGTCheckpointError):
        load_vggt_state_dict(model, state_dict)
    assert all(torch.equal(before[key], tensor) for key, tensor in model.state_dict().items())


def test_full_size_checkpoint_into_the_tiny_model_lists_the_mismatches(manifest_dir):
    with pytest.raises(VGGTCheckpointError, match=r"(?s)1194 problems\):.*\.\.\. and 1174 more") as error:
        load_vggt_state_dict(_shape_only_tiny_model(), _manifest_state_dict(manifest_dir), source="model.pt")
    assert "'aggregator.camera_token' has shape [1, 2, 1, 1024]" in str(error.value)


def test_torch_load_refuses_arbitrary_pickled_objects(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"aggregator.camera_token": torch.zeros(1), "payload": tmp_path}, path)
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        read_state_dict(path)


def test_training_checkpoint_wrapping_the_state_dict_is_unwrapped(tiny_state_dict, tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": tiny_state_dict, "epoch": 3}, path)
    assert list(read_state_dict(path)) == list(tiny_state_dict)


def test_non_state_dict_file_is_rejected(tmp_path):
    path = tmp_path / "model.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(VGGTCheckpointError, match="expected a state dict"):
        read_state_dict(path)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_vggt_weights(_shape_only_tiny_model(), tmp_path / "nowhere.pt")
