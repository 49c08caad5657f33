"""merge_lora_weights_and_save.py: merges, saves in the released layout, and refuses merges that predict otherwise."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForVision2Seq

from prismatic.training import merge_check
from prismatic.training.merge_check import ConvertConfig, install_merged_model, merge_lora_checkpoint
from prismatic.util.checkpoint_files import LORA_ADAPTER_DIR, WEIGHTS_INDEX_NAME
from prismatic.util.cli import UserError

from .conftest import SHARD_SIZE, merge_in_memory, run_cli_in_process, scale_lora_b

DEFAULT_TOLERANCE = ConvertConfig.tolerance


def reported(output: str, label: str) -> float:
    """The max |Δaction| the report prints on the line starting with ``label``."""
    match = re.search(rf"^{re.escape(label)}: max \|Δaction\| = ([0-9.e+-]+)", output, flags=re.MULTILINE)
    assert match, f"no {label!r} line in:\n{output}"
    return float(match.group(1))


def weight_files(folder: Path) -> set[str]:
    return {path.name for path in folder.glob("model*.safetensors*")}


def test_cli_merges_into_shards_index_and_config_and_passes_the_check(merged_run):
    folder, process = merged_run
    assert process.returncode == 0, process.stderr[-3000:]

    index = json.loads((folder / WEIGHTS_INDEX_NAME).read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all(re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", name) for name in shards)
    assert weight_files(folder) == shards | {WEIGHTS_INDEX_NAME}
    assert json.loads((folder / "config.json").read_text())["model_type"] == "openvla"
    assert not any(".base_layer." in key or "lora_" in key for key in index["weight_map"])
    assert not list(folder.glob(f"{merge_check.STAGING_PREFIX}*"))

    # bf16 merge, float32 probe: the rounding of the merged weights shows, well under the tolerance, while the
    # adapter itself moves the actions far more (so the merge was not trivial).
    merge_diff = reported(process.stdout, "merged vs base + adapter")
    adapter_effect = reported(process.stdout, "for scale, adapter effect (base alone vs base + adapter)")
    assert 0 < merge_diff <= DEFAULT_TOLERANCE / 2
    assert adapter_effect > 10 * DEFAULT_TOLERANCE
    assert reported(process.stdout, "reloaded vs in-memory merged model") == 0.0
    assert "merge check PASSED" in process.stdout


def test_saved_merge_reloads_to_the_weights_peft_merges(merged_run, tiny_base):
    folder, process = merged_run
    assert process.returncode == 0, process.stderr[-3000:]
    expected = merge_in_memory(tiny_base, folder / LORA_ADAPTER_DIR, torch.bfloat16).state_dict()
    reloaded = AutoModelForVision2Seq.from_pretrained(folder, dtype=torch.bfloat16).state_dict()
    assert reloaded.keys() == expected.keys()
    mismatched = [key for key in expected if not torch.equal(reloaded[key], expected[key])]
    assert not mismatched

    # Every adapted weight changed, the patch-embedding convolutions and lm_head included.
    base = AutoModelForVision2Seq.from_pretrained(tiny_base, dtype=torch.bfloat16).state_dict()
    adapter_keys = load_file(folder / LORA_ADAPTER_DIR / "adapter_model.safetensors")
    adapted = {
        key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        for key in adapter_keys
        if ".lora_A." in key
    }
    assert {"vision_backbone.featurizer.patch_embed.proj.weight", "language_model.lm_head.weight"} <= adapted
    assert [key for key in sorted(adapted) if torch.equal(reloaded[key], base[key])] == []


def test_verify_only_fails_for_an_adapter_corrupted_after_merging(merged_run, tiny_base, tmp_path, monkeypatch, capsys):
    source, process = merged_run
    assert process.returncode == 0, process.stderr[-3000:]
    folder = Path(shutil.copytree(source, tmp_path / source.name))
    merged_files = {name: (folder / name).read_bytes() for name in weight_files(folder)}
    scale_lora_b(folder / LORA_ADAPTER_DIR, 1.5)

    status = run_cli_in_process(
        [
            f"--base_checkpoint={tiny_base}",
            f"--lora_finetuned_checkpoint_dir={folder}",
            "--verify_only=True",
        ],
        monkeypatch,
    )

    output = capsys.readouterr().out
    assert status == 1
    difference = reported(output, "saved merged model vs base + adapter")
    assert difference > DEFAULT_TOLERANCE
    assert f"merge check FAILED: max |Δaction| (normalised) = {difference:.3e}, tolerance 5.000e-02" in output
    assert {name: (folder / name).read_bytes() for name in weight_files(folder)} == merged_files


def test_merging_another_adapter_than_the_verified_one_fails_and_writes_nothing(
    checkpoint_copy, tiny_base, tmp_path, monkeypatch, capsys
):
    other_adapter = Path(shutil.copytree(checkpoint_copy / LORA_ADAPTER_DIR, tmp_path / "other_adapter"))
    scale_lora_b(other_adapter, -1.0)
    merge_lora = merge_check.merge_lora
    monkeypatch.setattr(merge_check, "merge_lora", lambda base, adapter, dtype: merge_lora(base, other_adapter, dtype))

    status = run_cli_in_process(
        [f"--base_checkpoint={tiny_base}", f"--lora_finetuned_checkpoint_dir={checkpoint_copy}", "--dtype=float32"],
        monkeypatch,
    )

    output = capsys.readouterr().out
    assert status == 1
    assert reported(output, "merged vs base + adapter") > DEFAULT_TOLERANCE
    assert "merge check FAILED" in output and f"nothing was written into {checkpoint_copy}" in output
    assert weight_files(checkpoint_copy) == set() and not (checkpoint_copy / "config.json").exists()
    assert not list(checkpoint_copy.glob(f"{merge_check.STAGING_PREFIX}*"))


def test_without_an_action_head_the_check_judges_hidden_states(checkpoint_copy, tiny_base):
    next(checkpoint_copy.glob("action_head--*")).unlink()
    cfg = ConvertConfig(
        base_checkpoint=str(tiny_base),
        lora_finetuned_checkpoint_dir=str(checkpoint_copy),
        dtype="float32",
        max_shard_size=SHARD_SIZE,
        device="cpu",
    )

    report = merge_lora_checkpoint(cfg)

    assert report.passed and not report.compares_actions
    assert report.applied_tolerance == cfg.hidden_tolerance
    assert report.max_difference < 1e-5  # float32 merge: summation order only
    assert report.adapter_effect.relative_hidden_diff > 10 * cfg.hidden_tolerance
    assert "no action head: judged on hidden states" in report.summary()
    assert (checkpoint_copy / WEIGHTS_INDEX_NAME).is_file()


def test_adapter_whose_keys_match_no_module_is_rejected(checkpoint_copy, tiny_base):
    adapter_file = checkpoint_copy / LORA_ADAPTER_DIR / "adapter_model.safetensors"
    tensors = load_file(adapter_file)
    save_file({key.replace(".q_proj.", ".query_proj."): value for key, value in tensors.items()}, adapter_file)
    cfg = ConvertConfig(base_checkpoint=str(tiny_base), lora_finetuned_checkpoint_dir=str(checkpoint_copy))

    with pytest.raises(ValueError, match=r"adapter_model.safetensors does not fit the base model: 4 LoRA tensor"):
        merge_lora_checkpoint(cfg)
    assert weight_files(checkpoint_copy) == set()


def test_skip_verify_merges_and_saves_without_probing(checkpoint_copy, tiny_base):
    (checkpoint_copy / "dataset_statistics.json").unlink()  # the probe would need it; skipping it does not
    cfg = ConvertConfig(
        base_checkpoint=str(tiny_base),
        lora_finetuned_checkpoint_dir=str(checkpoint_copy),
        max_shard_size=SHARD_SIZE,
        skip_verify=True,
    )

    report = merge_lora_checkpoint(cfg)

    assert report.passed and report.checks == [] and report.adapter_effect is None
    index = json.loads((checkpoint_copy / WEIGHTS_INDEX_NAME).read_text())
    assert {path.name for path in report.written} == weight_files(checkpoint_copy) | {"config.json"}
    assert set(index["weight_map"].values()) | {WEIGHTS_INDEX_NAME} == weight_files(checkpoint_copy)


def test_install_replaces_an_earlier_merge_and_moves_the_index_last(tmp_path):
    checkpoint_dir, staging_dir = tmp_path / "ckpt", tmp_path / "ckpt" / ".merged-staging-1"
    staging_dir.mkdir(parents=True)
    old = {f"model-0000{i}-of-00003.safetensors": f"old {i}" for i in (1, 2, 3)}
    new = {f"model-0000{i}-of-00002.safetensors": f"new {i}" for i in (1, 2)}
    for name, content in old.items():
        (checkpoint_dir / name).write_text(content)
    (checkpoint_dir / WEIGHTS_INDEX_NAME).write_text(
        json.dumps({"weight_map": {f"w{i}": name for i, name in enumerate(old)}})
    )
    (checkpoint_dir / "action_head--latest_checkpoint.pt").write_text("head")
    for name, content in new.items():
        (staging_dir / name).write_text(content)
    (staging_dir / WEIGHTS_INDEX_NAME).write_text(json.dumps({"weight_map": {"a": next(iter(new))}}))
    (staging_dir / "config.json").write_text("{}")

    written = install_merged_model(staging_dir, checkpoint_dir)

    assert written[-1].name == WEIGHTS_INDEX_NAME
    assert weight_files(checkpoint_dir) == set(new) | {WEIGHTS_INDEX_NAME}
    assert all((checkpoint_dir / name).read_text() == content for name, content in new.items())
    assert (checkpoint_dir / "action_head--latest_checkpoint.pt").read_text() == "head"
    assert not staging_dir.exists()


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"lora_finetuned_checkpoint_dir": ""}, UserError, "--lora_finetuned_checkpoint_dir is required"),
        ({"lora_finetuned_checkpoint_dir": "{empty}"}, UserError, "missing lora_adapter/adapter_config.json"),
        ({"verify_only": True}, UserError, "--verify_only: .* holds no merged model"),
        ({"verify_only": True, "skip_verify": True}, UserError, "--verify_only and --skip_verify exclude"),
        ({"dtype": "bf16"}, UserError, "--dtype 'bf16' is not supported; expected one of"),
    ],
)
def test_bad_flags_are_named(pre_merge_checkpoint, tiny_base, tmp_path, overrides, error, message):
    fields = {"base_checkpoint": str(tiny_base), "lora_finetuned_checkpoint_dir": str(pre_merge_checkpoint)}
    fields |= {key: str(tmp_path) if value == "{empty}" else value for key, value in overrides.items()}
    with pytest.raises(error, match=message):
        merge_lora_checkpoint(ConvertConfig(**fields))
