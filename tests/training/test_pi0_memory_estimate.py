"""The memory estimator's pi0 row (``--model_family pi0``): the meta-device trace counts the tiny pi0's weights and
the trainer's sequence, and a full fine-tune's peak takes the larger of the backward's two ends."""

from __future__ import annotations

import pytest
import torch

from prismatic.models.pi0 import Pi0Model
from prismatic.spatial_forcing import SpatialForcingAligner
from prismatic.testing.pi0_tiny import tiny_pi0_config, write_tiny_pi0_checkpoint
from prismatic.training import memory_estimate
from prismatic.training.config import MemoryEstimateConfig
from prismatic.training.pi0_training import apply_pi0_lora, freeze_unreached_parameters
from vggt.models.vggt import VGGT


@pytest.fixture(scope="module")
def pi0_estimate_config(tmp_path_factory, tiny_checkpoints) -> MemoryEstimateConfig:
    folder = write_tiny_pi0_checkpoint(tmp_path_factory.mktemp("pi0"))
    return MemoryEstimateConfig(
        model_family="pi0",
        vla_path=str(folder),
        vggt_path=str(tiny_checkpoints[1]),
        vggt_image_size=112,
        use_lora=False,
        use_proprio=True,
        gain_feat_1move=False,
        vla_layers_align=1,
        batch_size=2,
    )


def test_pi0_trace_counts_the_tiny_pi0s_weights_and_sequence(pi0_estimate_config):
    trace = memory_estimate.trace_pi0_training_step(pi0_estimate_config)
    model = Pi0Model(tiny_pi0_config())
    freeze_unreached_parameters(model, tap_layer=1)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert frozen > model.paligemma_with_expert.gemma_expert.lm_head.weight.numel()  # + the LM's last MLP and norm
    vggt_path = pi0_estimate_config.vggt_path
    with torch.device("meta"):
        vggt = VGGT(**memory_estimate._teacher_kwargs(vggt_path))
    aligner = SpatialForcingAligner(pi0_estimate_config.align_config(32, vggt.embed_dim, vggt.patch_size))
    trained = sum(p.numel() for p in model.parameters()) - frozen + sum(p.numel() for p in aligner.parameters())
    assert (trace["frozen"], trace["trainable"]) == (4 * frozen, 4 * trained)  # float32 tiny pi0
    assert trace["sequence_length"] == 3 * 16 + 24 + 1 + 8  # 3 cameras x 16 patches, prompt, state, chunk
    assert trace["saved_by_scope"]["teacher features"] > 0 and sum(trace["saved_by_scope"].values()) > 0
    estimate = memory_estimate.full_fine_tune_peak(
        memory_estimate.assemble_estimate(pi0_estimate_config, trace, on_cuda=True)
    )
    start = sum(trace["saved_by_scope"].values()) + trace["working_set"] + trace["head_gradients"]
    assert estimate.peak >= trace["frozen"] + 3 * trace["trainable"] + min(start, trace["trainable"])


def test_pi0_lora_trace_trains_the_adapters_heads_and_projector_only(pi0_estimate_config):
    config = MemoryEstimateConfig(**{**vars(pi0_estimate_config), "use_lora": True, "lora_rank": 4})
    trace = memory_estimate.trace_pi0_training_step(config)
    model = apply_pi0_lora(Pi0Model(tiny_pi0_config()), rank=4, dropout=0.0)
    freeze_unreached_parameters(model, tap_layer=1)
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trained and all(".lora_" in name or ".modules_to_save." in name for name in trained)
    with torch.device("meta"):
        vggt = VGGT(**memory_estimate._teacher_kwargs(config.vggt_path))
    aligner = SpatialForcingAligner(config.align_config(32, vggt.embed_dim, vggt.patch_size))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trace["trainable"] == 4 * (trainable + sum(p.numel() for p in aligner.parameters()))
    assert trace["frozen"] == 4 * sum(p.numel() for p in model.parameters() if not p.requires_grad)
    config.use_lora = False
    assert trace["trainable"] < memory_estimate.trace_pi0_training_step(config)["trainable"]


def test_pi0_estimate_under_fsdp_shards_the_weights(pi0_estimate_config):
    single = memory_estimate.estimate_memory(pi0_estimate_config)
    config = MemoryEstimateConfig(**{**vars(pi0_estimate_config), "strategy": "fsdp", "num_gpus": 2})
    sharded = memory_estimate.estimate_memory(config)
    assert sharded.rows["LoRA + trainable heads"] == single.rows["LoRA + trainable heads"] / 2
    assert sharded.rows["FSDP all-gathered layers (2)"] > 0
