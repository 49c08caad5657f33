"""The memory estimator: the published figures of upstream's scripts, the tiny model against PyTorch's profiler."""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys

import draccus
import pytest
import torch

from prismatic.testing.tiny_checkpoints import write_tiny_base_checkpoints
from prismatic.testing.tiny_vla import tiny_training_batch
from prismatic.training import memory_estimate
from prismatic.training.config import AlignFinetuneConfig, MemoryEstimateConfig
from prismatic.training.distributed import DistributedContext
from prismatic.training.trainer import build_model, compute_losses
from prismatic.vla.constants import constants_for

from .conftest import REPO_ROOT

OPENVLA_CONFIG = REPO_ROOT / "tests" / "manifests" / "openvla-7b-config.json"
# The paper's LIBERO recipe: 2 images + proprio, L1 head, LoRA r32, bf16, 8 GPUs (DDP).
PAPER_FLAGS = [
    f"--vla_path={OPENVLA_CONFIG}",
    "--dataset_name=libero_spatial_no_noops",
    "--num_images_in_input=2",
    "--use_proprio=True",
    "--vla_layers_align=24",
    "--use_vlm_norm=True",
    "--use_vggt_pe=True",
    "--num_gpus=8",
    "--upstream_script=True",
]
# (flags, published GB): Spatial Forcing's README (74 / 30 GB) and OpenVLA-OFT's (62.5 / 25.7 GB).
PUBLISHED = [
    (["--batch_size=8"], 74.0),
    (["--batch_size=1"], 30.0),
    (["--batch_size=8", "--spatial_forcing=False"], 62.5),
    (["--batch_size=1", "--spatial_forcing=False"], 25.7),
]


@pytest.mark.slow
@pytest.mark.parametrize(("flags", "published_gb"), PUBLISHED)
def test_estimate_is_within_ten_percent_of_the_published_figure(flags, published_gb):
    estimate = memory_estimate.estimate_memory(draccus.parse(MemoryEstimateConfig, args=PAPER_FLAGS + flags))
    assert abs(estimate.peak / memory_estimate.GB - published_gb) / published_gb < 0.10


@pytest.fixture
def tiny_estimate_config(tmp_path) -> MemoryEstimateConfig:
    vla_dir, vggt_path = write_tiny_base_checkpoints(tmp_path)
    return MemoryEstimateConfig(
        vla_path=str(vla_dir),
        vggt_path=str(vggt_path),
        dataset_name="libero_spatial_no_noops",
        num_images_in_input=2,
        use_proprio=True,
        batch_size=2,
        prompt_tokens=30,
        vggt_image_size=112,
        vla_layers_align=1,
        lora_rank=4,
    )


def test_tiny_step_allocation_matches_the_profiler_within_fifteen_percent(tiny_estimate_config):
    cfg = tiny_estimate_config
    predicted = memory_estimate.step_allocation_bytes(
        memory_estimate.trace_training_step(cfg, torch.float32, cuda_autocast=False)
    )

    platform = constants_for(cfg.dataset_name)
    model = build_model(cfg, platform, DistributedContext(0, 0, 1, torch.device("cpu")))
    batch = tiny_training_batch(model.vla.config, [30, 22])  # padded to the longest prompt, as the estimate
    trainable = [p for m in model.trainable_modules() for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)

    def step():
        compute_losses(cfg, model, batch, platform, torch.device("cpu"))["loss"].backward()
        optimizer.step()

    measured = memory_estimate.measure_peak_allocation(step)
    assert measured > 10 * 2**20  # the step really allocates (tens of MiB at this size)
    assert abs(predicted - measured) / measured < 0.15, (predicted / 2**20, measured / 2**20)


@pytest.mark.slow
def test_cli_prints_a_table_and_a_json_last_line():
    result = subprocess.run(
        [sys.executable, "vla-scripts/estimate_memory.py", *PAPER_FLAGS, "--batch_size=1", "--gpu_memory_gb=24"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT), "USE_TF": "0", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert any(line.startswith("VGGT teacher weights") for line in lines)
    summary = json.loads(lines[-1])
    assert summary["fits"] is False and 24 < summary["peak_gb"] < 40


@pytest.mark.slow
def test_checkpointing_and_a_bf16_teacher_shrink_the_estimate():
    base = draccus.parse(MemoryEstimateConfig, args=[*PAPER_FLAGS[:-2], "--batch_size=2"])
    lean = draccus.parse(
        MemoryEstimateConfig,
        args=[*PAPER_FLAGS[:-2], "--batch_size=2", "--gradient_checkpointing=True", "--vggt_dtype=bfloat16"],
    )
    full, reduced = memory_estimate.estimate_memory(base), memory_estimate.estimate_memory(lean)
    assert reduced.rows["VGGT teacher weights"] == pytest.approx(full.rows["VGGT teacher weights"] / 2)
    assert reduced.rows["activations saved for backward"] < 0.5 * full.rows["activations saved for backward"]


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"vla_path": "absent"}, "--vla_path"),
        ({"quantize_base": "int4"}, "--quantize_base"),
        ({"strategy": "zero3"}, "--strategy"),
    ],
)
def test_bad_input_names_the_flag(tmp_path, change, flag):
    fields = {"vla_path": str(OPENVLA_CONFIG), **change}
    if fields["vla_path"] == "absent":
        fields["vla_path"] = str(tmp_path / "absent")
    with pytest.raises(memory_estimate.UserError, match=flag):
        memory_estimate.estimate_memory(MemoryEstimateConfig(**fields))


def test_the_documented_ready_configuration_parses_with_the_training_config():
    memory_doc = (REPO_ROOT / "docs" / "reference" / "memory.md").read_text()
    start = memory_doc.index("torchrun --standalone", memory_doc.index("Copy-paste, e.g. the 24 GB row"))
    arguments = shlex.split(memory_doc[start : memory_doc.index("```", start)].replace("\\\n", " "))
    cfg = draccus.parse(AlignFinetuneConfig, args=arguments[arguments.index("vla-scripts/finetune_align.py") + 1 :])
    assert cfg.gradient_checkpointing and cfg.vggt_dtype == "bfloat16"
    assert cfg.batch_size * cfg.grad_accumulation_steps == 8  # x 8 GPUs = the paper's global batch of 64


def test_upstream_mode_adds_vggts_autocast_copies_and_float32_logits(tiny_estimate_config):
    upstream = dataclasses.replace(tiny_estimate_config, upstream_script=True)
    trace = memory_estimate.trace_training_step(upstream, torch.bfloat16, cuda_autocast=True)
    *_, teacher, _ = memory_estimate.build_meta_modules(upstream, torch.bfloat16)
    cast_weights = [
        p for m in teacher.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d) for p in m.parameters(False)
    ]
    vocab = memory_estimate.read_base_config(upstream.vla_path).text_config.vocab_size
    logits_bytes = upstream.batch_size * trace["sequence_length"] * vocab * 4  # float32, as transformers 4.40
    assert trace["saved_by_scope"]["retained logits"] == logits_bytes + 4  # + the float32 loss
    estimate = memory_estimate.assemble_estimate(upstream, trace, on_cuda=True)
    copies = estimate.rows["autocast bf16 copies of unfrozen VGGT weights"]
    assert copies == 2 * sum(p.numel() for p in cast_weights) > 0
    # Our trainer freezes VGGT (autocast caches nothing of it); a bf16 teacher needs no cast.
    for cfg in (tiny_estimate_config, dataclasses.replace(upstream, vggt_dtype="bfloat16")):
        assert "autocast bf16 copies of unfrozen VGGT weights" not in memory_estimate.estimate_memory(cfg).rows


def test_lora_fp32_doubles_the_adapters_and_adds_their_autocast_copies(tiny_estimate_config):
    bf16, fp32 = (
        memory_estimate.estimate_memory(dataclasses.replace(tiny_estimate_config, lora_fp32=flag)).rows
        for flag in (False, True)
    )
    vla, *_ = memory_estimate.build_meta_modules(tiny_estimate_config, torch.bfloat16)
    lora_numel = sum(p.numel() for name, p in vla.named_parameters() if "lora_" in name and p.requires_grad)
    assert lora_numel > 0
    assert fp32["LoRA + trainable heads"] - bf16["LoRA + trainable heads"] == 2 * lora_numel
    assert fp32["AdamW states (2 x param)"] - bf16["AdamW states (2 x param)"] == 4 * lora_numel
    copies = "autocast bf16 copies of fp32 weights"
    assert fp32[copies] - bf16[copies] == 2 * lora_numel


def test_the_fixed_teachers_have_no_weights_and_a_projector_to_their_width(tiny_estimate_config):
    vggt = memory_estimate.estimate_memory(tiny_estimate_config)
    geometry, rgb = (
        memory_estimate.estimate_memory(dataclasses.replace(tiny_estimate_config, teacher=name, teacher_width=64))
        for name in ("geometry", "rgb")
    )
    assert vggt.rows["VGGT teacher weights"] > 0
    for fixed in (geometry, rgb):
        assert "VGGT teacher weights" not in fixed.rows
        assert fixed.rows["LoRA + trainable heads"] < vggt.rows["LoRA + trainable heads"]
        assert fixed.rows["frozen base weights"] == vggt.rows["frozen base weights"]
    assert geometry.rows["LoRA + trainable heads"] == rgb.rows["LoRA + trainable heads"]
