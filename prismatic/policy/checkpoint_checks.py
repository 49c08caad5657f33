"""Checks of a policy checkpoint folder that run before it is loaded: every file there, intact, and the right base.

Headers only (see ``prismatic.util.file_checks``): a missing, truncated or corrupt weight, adapter, component or
statistics file is a UserError naming it, and a LoRA-only checkpoint whose base is not the recorded one is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prismatic.models.family import CheckedCheckpoint
from prismatic.policy.base_model_record import verify_base_model
from prismatic.policy.components import component_names
from prismatic.util.checkpoint_files import (
    ADAPTER_WEIGHTS_NAME,
    DATASET_STATISTICS_NAME,
    LORA_ADAPTER_DIR,
    STEP_CHECKPOINT_SUFFIX,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)
from prismatic.util.checkpoint_install import settle_pending_install
from prismatic.util.cli import UserError
from prismatic.util.file_checks import (
    check_folder,
    check_model_weights,
    check_safetensors,
    check_torch_file,
    read_json_file,
)
from prismatic.vla.policy_config import PolicyConfig


def step_checkpoint_folders(run_dir: Path) -> dict[int, Path]:
    """The step checkpoint folders of a training run (``{run_dir}--{step}_chkpt``, beside it), by step."""
    prefix = f"{run_dir.name}--"
    steps = {}
    for folder in run_dir.parent.glob(f"{prefix}*{STEP_CHECKPOINT_SUFFIX}"):
        step = folder.name.removeprefix(prefix).removesuffix(STEP_CHECKPOINT_SUFFIX)
        if step.isdigit():
            steps[int(step)] = folder
    return dict(sorted(steps.items()))


def run_folder_hint(folder: Path) -> str:
    """When ``folder`` is a training run folder (metrics) with step checkpoints beside it: which folder to use
    instead, as a clause to append to an error ("" otherwise)."""
    steps = step_checkpoint_folders(folder)
    if not steps:
        return ""
    listed = ", ".join(path.name for path in steps.values())
    return (
        f"; {folder} is a training run folder (metrics, logs), its checkpoints are beside it ({listed}): use the "
        f"checkpoint folder, e.g. the latest {steps[max(steps)]}"
    )


def check_policy_checkpoint(
    checkpoint_dir: str | Path,
    flag: str,
    components: list[str],
    ignore_base_model_check: bool = False,
    require_statistics: bool = True,
) -> dict[str, Any]:
    """Checks the folder's weights (merged, or adapter + its base), the ``components`` files and the statistics;
    returns the action/proprio statistics (``dataset_statistics.json``, else the config's ``norm_stats``; without
    ``require_statistics`` a folder with neither gives ``{}``)."""
    checkpoint_dir = Path(checkpoint_dir)
    check_folder(checkpoint_dir, flag, "a checkpoint folder")
    settle_pending_install(checkpoint_dir, flag)
    adapter_dir = checkpoint_dir / LORA_ADAPTER_DIR
    if (checkpoint_dir / WEIGHTS_INDEX_NAME).is_file() or (checkpoint_dir / WEIGHTS_NAME).is_file():
        check_model_weights(checkpoint_dir, flag)
        model_dir = checkpoint_dir
    elif adapter_dir.is_dir():
        adapter_config = read_json_file(adapter_dir / "adapter_config.json", flag)
        check_safetensors(adapter_dir / ADAPTER_WEIGHTS_NAME, flag)
        model_dir = Path(adapter_config.get("base_model_name_or_path") or "")
        if not (model_dir / "config.json").is_file():
            raise UserError(
                f"{flag} {checkpoint_dir} holds only a LoRA adapter and its base {str(model_dir)!r} "
                f"({adapter_dir.name}/adapter_config.json base_model_name_or_path) is not a local model folder: "
                "expected the merged model (merge_lora_weights_and_save.py) or the base at that path"
            )
        check_model_weights(model_dir, f"{flag} (base model)")
        if not ignore_base_model_check:
            verify_base_model(checkpoint_dir, model_dir, f"{flag} {checkpoint_dir}: its base")
    else:
        raise UserError(
            f"{flag} {checkpoint_dir} holds no model weights: expected {WEIGHTS_INDEX_NAME} with its shards, "
            f"{WEIGHTS_NAME} or {LORA_ADAPTER_DIR}/{run_folder_hint(checkpoint_dir)}"
        )
    for component in components:
        files = sorted(checkpoint_dir.glob(f"{component}--*checkpoint*"))
        if not files:
            raise UserError(
                f"{flag} {checkpoint_dir} has no {component}--<step>_checkpoint.pt: expected the file training "
                f"saved (or the flags the checkpoint was trained with)"
            )
        for path in files:
            check_torch_file(path, flag)
    statistics_path = checkpoint_dir / DATASET_STATISTICS_NAME
    if statistics_path.exists():
        return read_json_file(statistics_path, flag)
    norm_stats = read_json_file(model_dir / "config.json", flag).get("norm_stats")
    if not norm_stats and require_statistics:
        raise UserError(
            f"{flag} {checkpoint_dir} has no {DATASET_STATISTICS_NAME} (and its config.json no norm_stats): expected "
            "the statistics file training saved beside the weights"
        )
    return norm_stats or {}


def check_checkpoint(
    checkpoint_dir: str | Path, flag: str, policy_config: PolicyConfig, ignore_base_model_check: bool = False
) -> CheckedCheckpoint:
    """:func:`check_policy_checkpoint` for the inference components of ``policy_config``; returns what it parsed,
    for the loader (``ModelFamily.load``) to use instead of reading the folder again."""
    components = component_names(policy_config, inference_only=True)
    norm_stats = check_policy_checkpoint(checkpoint_dir, flag, components, ignore_base_model_check)
    return CheckedCheckpoint(Path(checkpoint_dir), policy_config, norm_stats)
