"""Merging a checkpoint's LoRA adapter into its base VLA, verified on a probe (merge_lora_weights_and_save.py).

Upstream merges and saves without looking, and a merged model that does not reproduce the fine-tuned one evaluates
at 0% success without any error (openvla-oft issues #137 and #151 report 0% after re-merging a released adapter). Here
the model as trained (the base with the adapter applied, unmerged) and the merged model, in memory and reloaded from
the saved files, predict on one deterministic probe input, and the merge is installed only if they agree. Adapter
tensors that match no module (which peft only warns about) are an error, and ``--verify_only`` checks a merged
model already in the folder against its adapter and base (a merge left over from another adapter or base fails).

The probe:

- two synthetic camera images and a prompt through the checkpoint's processor, plus a proprio vector
  when the folder has a proprio projector, run through ``predict_action`` with the folder's action head;
- compared are the normalised actions of the L1 action head (in [-1, 1]) and the action-slot hidden states; a
  folder without an action head is judged on the hidden states alone, relative to their largest magnitude;
- probes run in float32 by default, so the difference measures the merge itself (the rounding of ``W + s * B @ A``
  to the saved dtype), not bf16 arithmetic noise. For scale the report also gives the adapter's own effect, the
  difference between the base alone and the base with the adapter; a real mismatch is of that order.

The default tolerance, 0.05 in normalised action units (2.5% of the [-1, 1] range, about 6 of the 256 action bins),
separates rounding from mismatch. Measured on the tiny model of the tests (bf16 base, random adapter): a bf16 merge
probed in float32 moves the actions by 5e-3 (1.9e-2 when the base is not bf16-exact, 2.0e-2 when probed in bf16);
the adapter itself moves them by 1.35, an adapter whose ``lora_B`` is scaled by 1.1 after merging by 8.2e-2 and by
1.5 by 0.27. A fine-tune that turns openvla-7b into a LIBERO policy moves actions by far more than 0.05, so a merge
that loses (part of) it fails. ``hidden_tolerance`` follows the same reasoning: rounding moved the hidden states by
0.5% of their largest magnitude, the adapter by 97%, the 1.1-scaled adapter by 7%.

Merged shards are written to a staging folder inside the checkpoint folder, reloaded from there with
``AutoModelForVision2Seq.from_pretrained`` and probed again; only then are they moved in, the weight index last,
and shards of an earlier merge that the new index no longer names are removed.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel, get_peft_model_state_dict
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForVision2Seq, AutoProcessor, PreTrainedModel

from prismatic.models.action_heads import L1RegressionActionHead
from prismatic.models.configuration_prismatic import OpenVLAConfig
from prismatic.models.processing_prismatic import PrismaticProcessor
from prismatic.models.projectors import ProprioProjector
from prismatic.policy.base_model_record import verify_base_model
from prismatic.policy.checkpoint_checks import run_folder_hint
from prismatic.policy.components import build_heads, component_names, load_components
from prismatic.policy.load import find_checkpoint_file, load_dataset_statistics
from prismatic.training.lora import merge_lora
from prismatic.util.checkpoint_files import (
    ADAPTER_WEIGHTS_NAME,
    DATASET_STATISTICS_NAME,
    LORA_ADAPTER_DIR,
    PROCESSOR_FILES,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)
from prismatic.util.checkpoint_install import settle_pending_install
from prismatic.util.cli import UserError, user_errors
from prismatic.util.file_checks import (
    check_folder,
    check_model_weights,
    check_safetensors,
    check_torch_file,
    check_writable_dir,
    read_json_file,
)
from prismatic.util.io import remove_stale_temporaries
from prismatic.vla.constants import PlatformConstants, constants_for
from prismatic.vla.policy_config import EmbodimentConfig, PolicyConfig, read_policy_config
from prismatic.vla.prompt import build_prompt

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STAGING_PREFIX = ".merged-staging-"
PROBE_INSTRUCTION = "put the black bowl on the plate"
PROBE_NUM_IMAGES = 2  # third-person + wrist camera, as the LIBERO checkpoints see them
PROBE_IMAGE_SIZE = 224
PROBE_SEED = 0


@dataclass
class ConvertConfig:
    """Flags of merge_lora_weights_and_save.py; the first two are upstream's, the rest ours."""

    # fmt: off
    base_checkpoint: str = "openvla/openvla-7b"      # Base VLA the adapter was trained on (the fine-tune's vla_path)
    lora_finetuned_checkpoint_dir: str = ""          # Checkpoint folder holding lora_adapter/; the merge is saved here
    # Ours
    dtype: str = "bfloat16"                          # Merge and saved weights: float32 | bfloat16 | float16
    max_shard_size: str = "5GB"                      # save_pretrained's shard cap (5GB: the 4 shards of the releases)
    device: str = "auto"                             # Where the probes run: auto (cuda if available) | cpu | cuda[:i]
    probe_dtype: str = "float32"                     # dtype of the probe forwards (float32 isolates merge rounding)
    tolerance: float = 0.05                          # Max |delta| of normalised actions (in [-1, 1]) to pass
    hidden_tolerance: float = 0.05                   # Without an action head: max |delta hidden| / max |hidden|
    platform: str | None = None                      # Dataset/suite of the heads' chunk geometry (None: config)
    skip_verify: bool = False                        # Merge and save without the probe check
    verify_only: bool = False                        # Check the merged model already in the folder; merge nothing
    ignore_base_model_check: bool = False            # Merge although --base_checkpoint is not the recorded base
    overwrite_merged: bool = False                   # Replace merged weights that disagree with base + adapter
    # fmt: on


@dataclass
class ProbeInput:
    """One deterministic ``predict_action`` query."""

    input_ids: torch.Tensor  # [1, L]
    attention_mask: torch.Tensor  # [1, L]
    pixel_values: torch.Tensor  # [1, 6 * num_images, 224, 224]
    proprio: torch.Tensor | None  # [1, proprio_dim], normalised
    num_images: int


@dataclass
class ProbeHeads:
    """The checkpoint's components the probe predicts with (None where the folder has none)."""

    action_head: L1RegressionActionHead | None
    proprio_projector: ProprioProjector | None
    norm_stats: dict[str, Any]
    platform: PlatformConstants


@dataclass
class ProbeOutput:
    """What one model predicted on the probe."""

    normalized_actions: torch.Tensor | None  # [chunk, action_dim], float32 on CPU; None without an L1 head
    action_hidden_states: torch.Tensor  # [chunk * action_dim, D], float32 on CPU


@dataclass
class ProbeDifference:
    """How far ``candidate`` predicts from ``reference`` on the probe."""

    label: str
    max_action_diff: float | None
    max_hidden_diff: float
    reference_hidden_scale: float  # max |hidden| of the reference

    @property
    def relative_hidden_diff(self) -> float:
        return self.max_hidden_diff / max(self.reference_hidden_scale, torch.finfo(torch.float32).tiny)

    @property
    def judged_value(self) -> float:
        """What the check judges: max |Δaction| with an action head, else max |Δhidden| / max |hidden|."""
        return self.max_action_diff if self.max_action_diff is not None else self.relative_hidden_diff

    def describe(self) -> str:
        action = f"max |Δaction| = {self.max_action_diff:.3e}, " if self.max_action_diff is not None else ""
        return (
            f"{self.label}: {action}max |Δhidden| = {self.max_hidden_diff:.3e} "
            f"(relative {self.relative_hidden_diff:.3e})"
        )


@dataclass
class MergeReport:
    """What the merge wrote and how the probes compared."""

    checkpoint_dir: Path
    checks: list[ProbeDifference]  # each must be within tolerance; empty with --skip_verify
    adapter_effect: ProbeDifference | None  # base alone vs base + adapter, for scale
    tolerance: float
    hidden_tolerance: float
    written: list[Path]

    @property
    def compares_actions(self) -> bool:
        return all(check.max_action_diff is not None for check in self.checks)

    @property
    def max_difference(self) -> float:
        return max((check.judged_value for check in self.checks), default=0.0)

    @property
    def applied_tolerance(self) -> float:
        return self.tolerance if self.compares_actions else self.hidden_tolerance

    @property
    def passed(self) -> bool:
        return self.max_difference <= self.applied_tolerance

    def summary(self) -> str:
        lines = [check.describe() for check in self.checks]
        if self.adapter_effect is not None:
            lines.append(f"for scale, {self.adapter_effect.describe()}")
        if self.checks:
            measure = "max |Δaction| (normalised)" if self.compares_actions else "max |Δhidden| / max |hidden|"
            verdict = "PASSED" if self.passed else "FAILED"
            lines.append(
                f"merge check {verdict}: {measure} = {self.max_difference:.3e}, "
                f"tolerance {self.applied_tolerance:.3e}"
                + ("" if self.compares_actions else " (no action head: judged on hidden states)")
            )
        if self.written:
            lines.append(f"wrote {', '.join(path.name for path in self.written)} into {self.checkpoint_dir}")
        elif not self.passed:
            lines.append(f"nothing was written into {self.checkpoint_dir}")
        return "\n".join(lines)


def parse_dtype(name: str, flag: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"--{flag} {name!r} is not supported; expected one of {sorted(DTYPES)}.")
    return DTYPES[name]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu.")
    return device


def has_merged_weights(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds a saved model (sharded with an index, or one file)."""
    return (model_dir / WEIGHTS_INDEX_NAME).is_file() or (model_dir / WEIGHTS_NAME).is_file()


def load_vla_strictly(model_dir: str | Path, dtype: torch.dtype) -> PreTrainedModel:
    """``AutoModelForVision2Seq.from_pretrained``, raising if any weight is missing from or unused by the files."""
    vla, loading_info = AutoModelForVision2Seq.from_pretrained(str(model_dir), dtype=dtype, output_loading_info=True)
    mismatched = {kind: keys for kind, keys in loading_info.items() if kind != "error_msgs" and keys}
    if mismatched:
        details = "; ".join(f"{kind}: {sorted(keys)[:5]} ({len(keys)} in all)" for kind, keys in mismatched.items())
        raise ValueError(f"The weights in {model_dir} do not fit the VLA its config.json describes: {details}.")
    return vla


def check_adapter_loaded(peft_model: PeftModel, adapter_dir: Path) -> None:
    """Raise unless every LoRA factor of ``adapter_dir`` found its module and every LoRA module got its factors.

    peft only warns about adapter keys that match no module, leaving those modules at their initialisation.
    """
    file_keys = {key for key in load_file(str(adapter_dir / ADAPTER_WEIGHTS_NAME)) if ".lora_" in key}
    model_keys = {key for key in get_peft_model_state_dict(peft_model, save_embedding_layers=False) if ".lora_" in key}
    unused, missing = sorted(file_keys - model_keys), sorted(model_keys - file_keys)
    if unused or missing:
        raise ValueError(
            f"{adapter_dir / ADAPTER_WEIGHTS_NAME} does not fit the base model: "
            f"{len(unused)} LoRA tensor(s) match no module (e.g. {unused[:3]}), {len(missing)} LoRA module "
            f"tensor(s) have no weights in the file (e.g. {missing[:3]}). Is --base_checkpoint the model it was "
            f"trained on?"
        )


def build_probe_input(processor: PrismaticProcessor, proprio_dim: int | None) -> ProbeInput:
    """Seeded noise images, a LIBERO-style prompt and (with ``proprio_dim``) a normalised proprio vector."""
    rng = np.random.default_rng(PROBE_SEED)
    shape = (PROBE_IMAGE_SIZE, PROBE_IMAGE_SIZE, 3)
    images = [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for _ in range(PROBE_NUM_IMAGES)]
    inputs = [processor(build_prompt(PROBE_INSTRUCTION), image) for image in images]
    pixel_values = torch.cat([item["pixel_values"] for item in inputs], dim=1)  # [1, 6 * num_images, 224, 224]
    proprio = torch.from_numpy(rng.uniform(-1, 1, (1, proprio_dim)).astype(np.float32)) if proprio_dim else None
    return ProbeInput(inputs[0]["input_ids"], inputs[0]["attention_mask"], pixel_values, proprio, PROBE_NUM_IMAGES)


PROBED_COMPONENTS = ("action_head", "proprio_projector")  # the probe predicts with an L1 head and proprio


def load_probe_heads(checkpoint_dir: Path, config: OpenVLAConfig, platform_name: str | None) -> ProbeHeads:
    """The folder's L1 action head and proprio projector and the statistics ``predict_action`` un-normalises with
    (``dataset_statistics.json``, else the config's ``norm_stats``).

    Which components the folder has comes from its ``policy_config.json`` through the component table (a missing
    file is an error); a released folder without the file is probed with whichever of the two it holds. A
    diffusion or token policy is judged on the hidden states.
    """
    policy_config = read_policy_config(checkpoint_dir)
    if platform_name:
        platform = constants_for(platform_name)
    else:
        platform = policy_config.embodiment.platform() if policy_config is not None else config.platform
    if policy_config is None:
        policy_config = PolicyConfig(embodiment=EmbodimentConfig.from_platform(platform))
        present = {name for name in PROBED_COMPONENTS if any(checkpoint_dir.glob(f"{name}--*checkpoint*"))}
    else:
        policy_config.embodiment = EmbodimentConfig.from_platform(platform)
        present = set(component_names(policy_config, inference_only=True))
    norm_stats = load_dataset_statistics(checkpoint_dir) or config.norm_stats
    if not norm_stats:
        raise FileNotFoundError(
            f"The probe runs predict_action, which needs dataset statistics: {checkpoint_dir} has no "
            "dataset_statistics.json and the base config.json no norm_stats. Add the file or pass --skip_verify True."
        )
    heads = build_heads(policy_config, config.text_config.hidden_size)
    probed = {name for name in PROBED_COMPONENTS if name in present}
    if policy_config.action_head != "l1_regression":
        probed.discard("action_head")
    heads = {name: module for name, module in heads.items() if name in probed}
    try:
        load_components(heads, {name: find_checkpoint_file(checkpoint_dir, name) for name in heads})
    except ValueError as error:
        raise ValueError(
            f"{error}. The probe needs the L1 regression head of platform {platform.name!r} (action_dim "
            f"{platform.action_dim}, proprio_dim {platform.proprio_dim}): pass --platform <the dataset the checkpoint "
            "was trained on>, or --skip_verify True to merge without the check."
        ) from None
    return ProbeHeads(heads.get("action_head"), heads.get("proprio_projector"), norm_stats, platform)


@dataclass
class Prober:
    """Runs the probe through models loaded one at a time, in ``dtype`` on ``device``."""

    probe: ProbeInput
    heads: ProbeHeads
    device: torch.device
    dtype: torch.dtype

    @classmethod
    def for_checkpoint(cls, cfg: ConvertConfig, checkpoint_dir: Path) -> Prober:
        config = AutoConfig.from_pretrained(cfg.base_checkpoint)
        heads = load_probe_heads(checkpoint_dir, config, cfg.platform)
        has_processor = all((checkpoint_dir / name).is_file() for name in PROCESSOR_FILES)
        processor = AutoProcessor.from_pretrained(str(checkpoint_dir if has_processor else cfg.base_checkpoint))
        proprio_dim = heads.platform.proprio_dim if heads.proprio_projector is not None else None
        probe = build_probe_input(processor, proprio_dim)
        return cls(probe, heads, resolve_device(cfg.device), parse_dtype(cfg.probe_dtype, "probe_dtype"))

    @torch.no_grad()  # not inference_mode: peft flips requires_grad on these tensors afterwards
    def run(self, vla: PreTrainedModel) -> ProbeOutput:
        """``predict_action`` of ``vla`` (an OpenVLA, possibly with LoRA layers injected) on the probe."""
        vla.to(self.device, self.dtype).eval()
        vla.config.set_platform(self.heads.platform)
        vla.set_num_images_in_input(self.probe.num_images)
        vla.norm_stats = self.heads.norm_stats
        action_head, proprio_projector = (
            module.to(self.device, self.dtype) if module is not None else None
            for module in (self.heads.action_head, self.heads.proprio_projector)
        )
        _, hidden_states = vla.predict_action(
            input_ids=self.probe.input_ids.to(self.device),
            attention_mask=self.probe.attention_mask.to(self.device),
            pixel_values=self.probe.pixel_values.to(self.device, self.dtype),
            unnorm_key=next(iter(self.heads.norm_stats)),  # un-normalisation does not enter the comparison
            proprio=self.probe.proprio,
            proprio_projector=proprio_projector,
            action_head=action_head,
        )  # hidden_states: [1, chunk * action_dim, D]
        actions = action_head.predict_action(hidden_states)[0].float().cpu() if action_head is not None else None
        return ProbeOutput(actions, hidden_states[0].float().cpu())

    def run_fine_tuned(self, base_checkpoint: str, adapter_dir: Path) -> tuple[ProbeOutput, ProbeDifference]:
        """The model as trained (base + adapter, unmerged) on the probe, and the adapter's effect on it."""
        fine_tuned = PeftModel.from_pretrained(load_vla_strictly(base_checkpoint, self.dtype), str(adapter_dir))
        check_adapter_loaded(fine_tuned, adapter_dir)
        reference = self.run(fine_tuned.get_base_model())
        with fine_tuned.disable_adapter():
            base_output = self.run(fine_tuned.get_base_model())
        del fine_tuned
        self.free_memory()
        return reference, compare_probes("adapter effect (base alone vs base + adapter)", reference, base_output)

    def run_saved(self, model_dir: Path) -> ProbeOutput:
        """The merged model as ``from_pretrained`` reads it back from ``model_dir``, on the probe."""
        output = self.run(load_vla_strictly(model_dir, self.dtype))
        self.free_memory()
        return output

    def free_memory(self) -> None:
        """Returns a released model's memory before the next one is loaded (one model is resident at a time)."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def compare_probes(label: str, reference: ProbeOutput, candidate: ProbeOutput) -> ProbeDifference:
    """Largest elementwise differences of the actions (where both have them) and of the action-slot hidden states."""
    max_action_diff = None
    if reference.normalized_actions is not None and candidate.normalized_actions is not None:
        max_action_diff = (reference.normalized_actions - candidate.normalized_actions).abs().max().item()
    hidden_diff = (reference.action_hidden_states - candidate.action_hidden_states).abs().max().item()
    return ProbeDifference(label, max_action_diff, hidden_diff, reference.action_hidden_states.abs().max().item())


def install_merged_model(staging_dir: Path, checkpoint_dir: Path) -> list[Path]:
    """Move the files of ``staging_dir`` into ``checkpoint_dir``, the weight index last; return their paths.

    The old index goes first, so no reader ever pairs an index with shards of another merge; weight files of an
    earlier merge that the new index does not name are removed afterwards.
    """
    new_names = sorted(path.name for path in staging_dir.iterdir())
    old_weights = {path.name for path in checkpoint_dir.glob("model*.safetensors")} - set(new_names)
    (checkpoint_dir / WEIGHTS_INDEX_NAME).unlink(missing_ok=True)
    written = []
    for name in sorted(new_names, key=lambda name: name == WEIGHTS_INDEX_NAME):
        os.replace(staging_dir / name, checkpoint_dir / name)
        written.append(checkpoint_dir / name)
    for name in old_weights:
        (checkpoint_dir / name).unlink()
    staging_dir.rmdir()
    return written


def _check_files(cfg: ConvertConfig, checkpoint_dir: Path, adapter_dir: Path) -> None:
    """Every file the merge reads is present and intact, and the folder it writes is writable."""
    base_dir = Path(cfg.base_checkpoint)
    if not (base_dir / "config.json").is_file():
        raise UserError(
            f"--base_checkpoint {base_dir}: no config.json there: expected a local base VLA folder "
            "(the fine-tune's --vla_path, e.g. ckpts/openvla-7b)"
        )
    read_json_file(base_dir / "config.json", "--base_checkpoint")
    check_model_weights(base_dir, "--base_checkpoint")
    read_json_file(adapter_dir / "adapter_config.json", "--lora_finetuned_checkpoint_dir")
    check_safetensors(adapter_dir / ADAPTER_WEIGHTS_NAME, "--lora_finetuned_checkpoint_dir")
    for path in checkpoint_dir.glob("*--*checkpoint.pt"):
        check_torch_file(path, "--lora_finetuned_checkpoint_dir")
    if (checkpoint_dir / DATASET_STATISTICS_NAME).exists():
        read_json_file(checkpoint_dir / DATASET_STATISTICS_NAME, "--lora_finetuned_checkpoint_dir")
    if not cfg.verify_only:
        check_writable_dir(checkpoint_dir, "--lora_finetuned_checkpoint_dir")
    if cfg.tolerance < 0 or cfg.hidden_tolerance < 0:
        raise UserError(f"--tolerance {cfg.tolerance} / --hidden_tolerance {cfg.hidden_tolerance}: expected >= 0")
    parse_dtype(cfg.probe_dtype, "probe_dtype")
    resolve_device(cfg.device)
    if not cfg.ignore_base_model_check:
        verify_base_model(checkpoint_dir, base_dir, "--base_checkpoint")


def _check_flags(cfg: ConvertConfig) -> tuple[Path, Path]:
    if not cfg.lora_finetuned_checkpoint_dir:
        raise ValueError("--lora_finetuned_checkpoint_dir is required (the checkpoint folder holding lora_adapter/).")
    checkpoint_dir = Path(cfg.lora_finetuned_checkpoint_dir)
    check_folder(
        checkpoint_dir, "--lora_finetuned_checkpoint_dir", "the checkpoint folder training wrote (with lora_adapter/)"
    )
    settle_pending_install(checkpoint_dir, "--lora_finetuned_checkpoint_dir")
    adapter_dir = checkpoint_dir / LORA_ADAPTER_DIR
    for required in (adapter_dir / "adapter_config.json", adapter_dir / ADAPTER_WEIGHTS_NAME):
        if not required.is_file():
            raise FileNotFoundError(
                f"--lora_finetuned_checkpoint_dir {checkpoint_dir}: missing {required.relative_to(checkpoint_dir)} "
                f"(expected the peft adapter that training saved there){run_folder_hint(checkpoint_dir)}."
            )
    if cfg.verify_only and cfg.skip_verify:
        raise ValueError("--verify_only and --skip_verify exclude each other.")
    if cfg.verify_only and not has_merged_weights(checkpoint_dir):
        raise FileNotFoundError(
            f"--verify_only: {checkpoint_dir} holds no merged model ({WEIGHTS_INDEX_NAME} or {WEIGHTS_NAME}) to check."
        )
    return checkpoint_dir, adapter_dir


def _refuse_to_replace_disagreeing_merge(cfg: ConvertConfig, checkpoint_dir: Path, existing: ProbeDifference) -> None:
    """Merged weights that disagree with base + adapter may be the right ones (and --base_checkpoint the wrong base,
    in a way no record tells): they are kept unless --overwrite_merged, whether or not the base was verified."""
    tolerance = cfg.tolerance if existing.max_action_diff is not None else cfg.hidden_tolerance
    if existing.judged_value > tolerance and not cfg.overwrite_merged:
        raise UserError(
            f"the merged weights already in {checkpoint_dir} disagree with --base_checkpoint {cfg.base_checkpoint} "
            f"+ its adapter ({existing.describe()}): expected the base the adapter was trained on; pass "
            "--overwrite_merged True to replace them anyway"
        )


def merge_lora_checkpoint(cfg: ConvertConfig) -> MergeReport:
    """Merge ``lora_adapter/`` of a checkpoint folder into the base model, check the merge on the probe, and save
    it there (config + safetensors shards + index). Nothing is written when the check fails."""
    with user_errors():
        checkpoint_dir, adapter_dir = _check_flags(cfg)
        merge_dtype = parse_dtype(cfg.dtype, "dtype")
        _check_files(cfg, checkpoint_dir, adapter_dir)
    remove_stale_temporaries(checkpoint_dir)
    if has_merged_weights(checkpoint_dir) and not cfg.verify_only and cfg.skip_verify and not cfg.overwrite_merged:
        raise UserError(
            f"--skip_verify True would replace the merged weights in {checkpoint_dir} unchecked: expected the check "
            "(drop --skip_verify) or --overwrite_merged True"
        )
    trained_on = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if trained_on and trained_on != cfg.base_checkpoint:
        logger.warning(
            "%s records base_model_name_or_path=%s but --base_checkpoint is %s: merging into another base than the "
            "one trained on gives another model, which the probe cannot tell.",
            adapter_dir / "adapter_config.json",
            trained_on,
            cfg.base_checkpoint,
        )
    prober = None if cfg.skip_verify else Prober.for_checkpoint(cfg, checkpoint_dir)
    checks, adapter_effect = [], None
    if prober is not None:
        logger.info(
            "Probing %s + %s (unmerged) in %s on %s", cfg.base_checkpoint, adapter_dir, cfg.probe_dtype, prober.device
        )
        reference, adapter_effect = prober.run_fine_tuned(cfg.base_checkpoint, adapter_dir)
        if has_merged_weights(checkpoint_dir) and not cfg.verify_only:
            _refuse_to_replace_disagreeing_merge(
                cfg,
                checkpoint_dir,
                compare_probes("existing merged model vs base + adapter", reference, prober.run_saved(checkpoint_dir)),
            )

    staging_dir = checkpoint_dir / f"{STAGING_PREFIX}{os.getpid()}"
    try:
        if cfg.verify_only:
            checks.append(
                compare_probes("saved merged model vs base + adapter", reference, prober.run_saved(checkpoint_dir))
            )
        else:
            logger.info("Merging %s into %s in %s", adapter_dir, cfg.base_checkpoint, cfg.dtype)
            shutil.rmtree(staging_dir, ignore_errors=True)
            merged = merge_lora(cfg.base_checkpoint, adapter_dir, merge_dtype)
            merged.save_pretrained(staging_dir, max_shard_size=cfg.max_shard_size)
            if prober is not None:
                merged_output = prober.run(merged)
                del merged
                prober.free_memory()
                checks.append(compare_probes("merged vs base + adapter", reference, merged_output))
                reloaded_output = prober.run_saved(staging_dir)
                checks.append(compare_probes("reloaded vs in-memory merged model", merged_output, reloaded_output))

        report = MergeReport(checkpoint_dir, checks, adapter_effect, cfg.tolerance, cfg.hidden_tolerance, [])
        if report.passed and not cfg.verify_only:
            report.written = install_merged_model(staging_dir, checkpoint_dir)
        return report
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
