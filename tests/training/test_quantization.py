"""A quantised base (QLoRA): which layers are quantised, the quantisation error, training over it, the checkpoint.

bitsandbytes 0.50 runs its int8 and NF4 layers on CPU (dequantise, then a float matmul), so these tests run the
trainer's own code path with the tiny model; the CUDA kernels are not exercised here.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from transformers import AutoModelForVision2Seq

import prismatic.models  # noqa: F401  (registers the OpenVLA Auto classes)
from prismatic.models.quantization import quantize_base, quantized_linear_names
from prismatic.testing.tiny_vla import tiny_training_batch
from prismatic.training.config import FinetuneConfig, MemoryEstimateConfig
from prismatic.training.config_checks import check_quantization_flags
from prismatic.training.distributed import DistributedContext
from prismatic.training.lora import apply_lora
from prismatic.training.memory_estimate import build_meta_modules
from prismatic.training.trainer import build_model, compute_losses
from prismatic.util.cli import UserError
from prismatic.vla.constants import constants_for

from .conftest import DATASET_NAME, REPO_ROOT, run_script, tiny_flags
from .test_finetune_align import MERGED_MODEL_FILES, RELEASED_FILES

OPENVLA_CONFIG = REPO_ROOT / "tests" / "manifests" / "openvla-7b-config.json"
OPENVLA_MANIFEST = REPO_ROOT / "tests" / "manifests" / "openvla_7b_state_dict.json"
LLM_LINEAR_SUFFIXES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Largest gap between adjacent NF4 code values (-1 and -0.6962, QLoRA paper appendix E): round-to-nearest moves
# a weight by at most half of it, times its block's absmax (which double quantisation stores to within 1 %).
NF4_MAX_HALF_GAP = (1.0 - 0.6961928009986877) / 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"quantize_base": "int4"}, "--quantize_base 'int4' is not supported"),
        ({"quantize_base": "nf4", "use_lora": False}, "needs --use_lora True"),
        ({"quantize_base": "int8", "strategy": "fsdp"}, "with --strategy fsdp is not supported"),
    ],
)
def test_bad_quantization_flags_name_the_culprit(change, message):
    with pytest.raises(UserError, match=message):
        check_quantization_flags(FinetuneConfig(**change))


def test_full_size_selection_is_every_llm_decoder_linear_of_the_manifest():
    """On the full-size OpenVLA-7B (meta device): 32 layers x 7 projections, matching the released state dict."""
    cfg = MemoryEstimateConfig(vla_path=str(OPENVLA_CONFIG), spatial_forcing=False, use_lora=False)
    vla = build_meta_modules(cfg, torch.bfloat16)[0]
    selected = quantized_linear_names(vla)
    manifest = json.loads(OPENVLA_MANIFEST.read_text())
    expected = {
        key.removesuffix(".weight")
        for key in manifest
        if key.startswith("language_model.model.layers.")
        and key.endswith(tuple(f"{s}.weight" for s in LLM_LINEAR_SUFFIXES))
    }
    assert len(selected) == len(expected) == 32 * 7
    assert set(selected) == expected  # no vision, projector, embedding or lm_head weight is quantised


def _tiny_vla(tiny_checkpoints):
    return AutoModelForVision2Seq.from_pretrained(str(tiny_checkpoints[0]), dtype=torch.float32)


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_each_quantised_layer_is_within_its_derived_error_bound(tiny_checkpoints, mode):
    """|y_q - y| per output element, from the weight (and, for int8, input) rounding of each scheme:

    * int8 (LLM.int8 without outliers): weights round to 1/127 of their row's absmax, inputs to 1/127 of their
      row's absmax, so |dy| <= |x|_1 * absmax(W_row) / 254 + |W_row|_1 * absmax(x) / 254 (+ the product of both).
    * NF4: each weight moves by at most NF4_MAX_HALF_GAP * absmax of its 64-block (x 1.01 for the 8-bit stored
      absmax), so |dy| <= |x|_1 * max|W_row| * NF4_MAX_HALF_GAP * 1.01.
    """
    reference = _tiny_vla(tiny_checkpoints)
    originals = {name: reference.get_submodule(name) for name in quantized_linear_names(reference)}
    assert len(originals) == 2 * 7  # the tiny Llama: 2 layers x (q, k, v, o, gate, up, down)
    quantised = quantize_base(_tiny_vla(tiny_checkpoints), mode, torch.device("cpu"), torch.float32)
    for name, original in originals.items():
        layer = quantised.get_submodule(name)
        assert type(layer).__name__ == ("Linear8bitLt" if mode == "int8" else "Linear4bit"), name
        inputs = torch.randn(5, original.in_features, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            error = (layer(inputs) - original(inputs)).abs()
        weight = original.weight.detach().abs()
        x_l1, x_max = inputs.abs().sum(1, keepdim=True), inputs.abs().amax(1, keepdim=True)
        if mode == "int8":
            bound = x_l1 * weight.amax(1) / 254 + weight.sum(1) * x_max / 254 + x_l1 * weight.amax(1) * x_max / 254**2
        else:
            bound = x_l1 * weight.amax(1) * NF4_MAX_HALF_GAP * 1.01
        assert (error <= bound + 1e-5).all(), (name, (error / bound).max().item())
        assert error.max() > 0  # the weights really are quantised
    # Nothing else is quantised: the vision towers, projector and lm_head keep the compute dtype.
    bnb_layers = {name for name, m in quantised.named_modules() if type(m).__module__.startswith("bitsandbytes")}
    assert bnb_layers == set(originals)
    assert type(quantised.language_model.lm_head) is nn.Linear


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_lora_over_a_quantised_base_lowers_the_loss(tiny_checkpoints, mode):
    """The trainer's build_model with --quantize_base: peft's bitsandbytes LoRA layers, base frozen, loss falls."""
    vla_dir, _ = tiny_checkpoints
    cfg = FinetuneConfig(
        vla_path=str(vla_dir), dataset_name=DATASET_NAME, num_images_in_input=2, use_proprio=True, lora_rank=4,
        quantize_base=mode,
    )  # fmt: skip
    platform = constants_for(cfg.dataset_name)
    torch.manual_seed(0)
    model = build_model(cfg, platform, DistributedContext(0, 0, 1, torch.device("cpu")))
    q_proj = model.vla.get_submodule("base_model.model.language_model.model.layers.0.self_attn.q_proj")
    assert type(q_proj).__module__ == "peft.tuners.lora.bnb"  # LoRA over the bitsandbytes layer
    assert not any(p.requires_grad for n, p in model.vla.named_parameters() if "lora_" not in n)
    batch = tiny_training_batch(model.vla.config, [20, 14])
    trainable = [p for m in model.trainable_modules() for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = compute_losses(cfg, model, batch, platform, torch.device("cpu"))["loss"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses  # seen here: 0.570 -> 0.439 (int8), 0.574 -> 0.438 (nf4)


@pytest.mark.slow
def test_quantised_run_saves_the_released_layout_and_its_adapter_loads_on_the_unquantised_base(
    tiny_checkpoints, synthetic_data, tmp_path
):
    """finetune_align.py --quantize_base nf4 under DDP (2 processes) writes the file set of any run, an adapter with
    the unquantised run's keys, and a merged model built from the unquantised base on disk (adapter applied, folded)."""
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import load_file

    flags = tiny_flags(
        tiny_checkpoints, synthetic_data, tmp_path, quantize_base="nf4", max_steps=2, merge_lora_during_training=True
    )
    result = run_script("finetune_align.py", flags, nproc=2)  # DDP over 2 gloo processes
    assert result.returncode == 0, result.stderr[-4000:]
    folder = tmp_path / "tiny-run--2_chkpt"
    files = {p.name for p in folder.iterdir() if p.is_file()}
    weights = {name for name in files if name.startswith("model") and ".safetensors" in name}
    assert files - weights == {name.format(s=2) for name in RELEASED_FILES} | MERGED_MODEL_FILES
    assert weights, "merged weights missing"

    adapter = load_file(str(folder / "lora_adapter" / "adapter_model.safetensors"))
    unquantised_layout = get_peft_model_state_dict(apply_lora(_tiny_vla(tiny_checkpoints), rank=4, dropout=0.0))
    assert set(adapter) == set(unquantised_layout)
    q_proj_b = "base_model.model.language_model.model.layers.0.self_attn.q_proj.lora_B.weight"
    assert adapter[q_proj_b].abs().max() > 0  # trained over the NF4 layer (LoRA B starts at zero)

    expected = PeftModel.from_pretrained(_tiny_vla(tiny_checkpoints), str(folder / "lora_adapter")).merge_and_unload()
    merged = AutoModelForVision2Seq.from_pretrained(str(folder), dtype=torch.float32)
    expected_state, merged_state = expected.state_dict(), merged.state_dict()
    assert set(merged_state) == set(expected_state)
    for name, value in expected_state.items():
        torch.testing.assert_close(merged_state[name], value, msg=name)
