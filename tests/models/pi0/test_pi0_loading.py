"""Loading released pi0 weights unchanged: tiny checkpoints written in each layout, loaded, compared."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from prismatic.models.pi0 import Pi0Config, Pi0Model
from prismatic.models.pi0.loading_pi0 import (
    EMBED_KEY,
    EXPERT_HEAD_KEY,
    LM_HEAD_KEY,
    Pi0CheckpointError,
    load_pi0_weights,
    read_checkpoint,
)
from prismatic.testing.pi0_tiny import released_state_dict


def fresh(config: Pi0Config, **overrides) -> Pi0Model:
    torch.manual_seed(1)
    return Pi0Model(Pi0Config(**{**config.to_dict(), **overrides}) if overrides else config)


def assert_same_weights(loaded: Pi0Model, source: Pi0Model, dtype: torch.dtype) -> None:
    expected = source.state_dict()
    for key, value in loaded.state_dict().items():
        assert value.dtype == expected[key].dtype, key  # the model's dtype policy, not the file's
        assert torch.equal(value, expected[key].to(dtype).to(value.dtype)), key


@pytest.mark.parametrize(
    ("layout", "dtype"), [("openpi", torch.bfloat16), ("lerobot", torch.float32), ("lerobot033", torch.bfloat16)]
)
def test_released_layouts_load_unchanged(
    layout: str, dtype: torch.dtype, small_config: Pi0Config, small_model: Pi0Model, write_checkpoint: Callable
):
    tensors = released_state_dict(small_model, layout, dtype)
    assert len(tensors) == len(small_model.state_dict()) - 1  # the tied embedding is not on disk
    folder = write_checkpoint(tensors)
    model = fresh(small_config)
    report = load_pi0_weights(model, folder)
    assert_same_weights(model, small_model, dtype)
    state = model.state_dict(keep_vars=True)
    assert state[EMBED_KEY] is state[LM_HEAD_KEY]  # still tied after loading
    assert report.layout == layout and report.loaded == len(tensors)
    assert report.lines() == [
        f"layout: {layout} ({len(tensors)} tensors loaded)",
        "missing keys: none",
        "unexpected keys: none",
        "input embedding: filled from the tied lm_head",
        "expert lm_head: loaded",
    ]


def test_bf16_file_into_the_bf16_policy_keeps_float32_norms(
    small_config: Pi0Config, small_model: Pi0Model, write_checkpoint: Callable
):
    folder = write_checkpoint(released_state_dict(small_model, "openpi", torch.bfloat16))
    model = fresh(small_config, param_dtype="bfloat16")
    load_pi0_weights(model, folder / "model.safetensors")
    state = model.state_dict()
    norm = "paligemma_with_expert.paligemma.model.language_model.layers.0.input_layernorm.weight"
    assert state[norm].dtype == torch.float32 and state[EMBED_KEY].dtype == torch.bfloat16
    assert torch.equal(state[norm], small_model.state_dict()[norm].bfloat16().float())


def test_untied_embedding_is_filled_from_lm_head(
    small_config: Pi0Config, small_model: Pi0Model, write_checkpoint: Callable
):
    folder = write_checkpoint(released_state_dict(small_model, "lerobot", torch.float32))
    model = fresh(small_config)
    paligemma = model.paligemma_with_expert.paligemma
    paligemma.lm_head.weight = torch.nn.Parameter(paligemma.lm_head.weight.detach().clone())  # tie broken
    report = load_pi0_weights(model, folder)
    assert report.embedding_from_lm_head
    assert torch.equal(model.state_dict()[EMBED_KEY], small_model.state_dict()[EMBED_KEY])


def test_a_file_holding_only_the_embedding_name_fills_the_head(
    small_config: Pi0Config, small_model: Pi0Model, write_checkpoint: Callable
):
    tensors = released_state_dict(small_model, "openpi", torch.float32)
    tensors[EMBED_KEY] = tensors.pop(LM_HEAD_KEY)
    model = fresh(small_config)
    report = load_pi0_weights(model, write_checkpoint(tensors))
    assert not report.embedding_from_lm_head and report.missing == []
    assert_same_weights(model, small_model, torch.float32)


def test_missing_expert_head_is_accepted_and_reported(
    small_config: Pi0Config, small_model: Pi0Model, write_checkpoint: Callable
):
    tensors = released_state_dict(small_model, "openpi", torch.float32)
    del tensors[EXPERT_HEAD_KEY]
    report = load_pi0_weights(fresh(small_config), write_checkpoint(tensors))
    assert report.expert_head == "absent (never used; left as initialised)"
    assert report.missing == []


def test_time_mlp_is_renamed_for_pi0(small_config: Pi0Config, small_model: Pi0Model, write_checkpoint: Callable):
    tensors = released_state_dict(small_model, "openpi", torch.float32)
    for suffix in ("in.weight", "in.bias", "out.weight", "out.bias"):
        tensors[f"time_mlp_{suffix}"] = tensors.pop(f"action_time_mlp_{suffix}")
    model = fresh(small_config)
    load_pi0_weights(model, write_checkpoint(tensors))
    assert_same_weights(model, small_model, torch.float32)


def test_missing_and_unexpected_keys_one_line_each(
    small_config: Pi0Config, small_model: Pi0Model, write_checkpoint: Callable
):
    tensors = released_state_dict(small_model, "openpi", torch.float32)
    del tensors["state_proj.bias"]
    tensors["paligemma_with_expert.extra.weight"] = torch.zeros(2)
    folder = write_checkpoint(tensors)
    with pytest.raises(Pi0CheckpointError) as error:
        load_pi0_weights(fresh(small_config), folder)
    message = str(error.value)
    assert "\n" not in message
    assert "missing keys (1): state_proj.bias; unexpected keys (1): paligemma_with_expert.extra.weight" in message
    report = load_pi0_weights(fresh(small_config), folder, strict=False)
    assert report.lines()[1:3] == [
        "missing keys: state_proj.bias",
        "unexpected keys: paligemma_with_expert.extra.weight",
    ]


def test_refusals_happen_before_any_weight_is_read(
    small_config: Pi0Config, small_model: Pi0Model, write_checkpoint: Callable, monkeypatch: pytest.MonkeyPatch
):
    tensors = released_state_dict(small_model, "openpi", torch.float32)
    other_family = write_checkpoint({"language_model.model.embed_tokens.weight": torch.zeros(4, 2)}, "openvla")
    mixed = write_checkpoint(
        {("model." if index % 2 else "") + k: v for index, (k, v) in enumerate(tensors.items())}, "mixed"
    )
    narrow = write_checkpoint(
        {**tensors, "action_in_proj.weight": torch.zeros(small_config.expert_width, 24)}, "narrow"
    )
    typed = write_checkpoint(tensors, "typed", config={"type": "act"})
    pi05 = write_checkpoint(
        {**tensors, "paligemma_with_expert.gemma_expert.model.layers.0.input_layernorm.dense.weight": torch.zeros(2)},
        "pi05",
    )
    monkeypatch.setattr(
        "safetensors.safe_open.get_tensor", lambda *args: pytest.fail("a weight was read"), raising=False
    )
    cases = {
        other_family: "no paligemma_with_expert.* tensors",
        mixed: "carry lerobot's 'model.' prefix",
        narrow: "first action_in_proj.weight [16, 24]: expected [16, 32]",
        typed: "type='act' is a checkpoint of another family",
        pi05: "is a pi05 (adaptive norm) key",
        Path(other_family.parent / "nowhere"): "no such file",
    }
    with pytest.raises(pytest.fail.Exception, match="a weight was read"):  # the guard works on a good file
        load_pi0_weights(fresh(small_config), write_checkpoint(tensors, "good"))
    for folder, expected in cases.items():
        with pytest.raises(Pi0CheckpointError) as error:
            load_pi0_weights(fresh(small_config), folder)
        assert expected in str(error.value), (folder.name, str(error.value))
        assert "\n" not in str(error.value)


def test_read_checkpoint_reports_layout_without_reading_weights(small_model: Pi0Model, write_checkpoint: Callable):
    parsed = read_checkpoint(write_checkpoint(released_state_dict(small_model, "lerobot033", torch.bfloat16)))
    assert parsed.layout == "lerobot033"
    assert parsed.disk_names[LM_HEAD_KEY] == "model.paligemma_with_expert.paligemma.language_model.lm_head.weight"
    assert set(parsed.dtypes.values()) == {"BF16"}
