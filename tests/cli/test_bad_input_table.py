"""Bad input to every CLI: exit status 2, one line ``error: ...`` naming the culprit, no traceback, nothing written.

The cases run in one subprocess (``case_runner.py``: each case is the script run as ``__main__`` with its argv), so
the imports are paid once; a few cases also run as separate processes, with and without ``--debug``.
"""

from __future__ import annotations

import dataclasses

import pytest

from prismatic.training.config import FinetuneConfig

from .conftest import DATASET_NAME, CliWorld, run_cases, run_script

FINETUNE_ALIGN = "vla-scripts/finetune_align.py"
FINETUNE = "vla-scripts/finetune.py"
MERGE = "vla-scripts/merge_lora_weights_and_save.py"
EVAL = "experiments/robot/libero/run_libero_eval.py"
INSPECT = "vla-scripts/inspect_dataset.py"
CONVERT = "vla-scripts/convert_libero_hdf5.py"
SYNTHETIC = "vla-scripts/make_synthetic_libero.py"
PROBE = "vla-scripts/probe_depth.py"
TINY = "vla-scripts/make_tiny_checkpoints.py"
PLAIN_FLAGS = {field.name for field in dataclasses.fields(FinetuneConfig)}


def bad_inputs(world: CliWorld) -> list[tuple[str, str, list[str], str]]:
    """(case id, script, args, text the one error line must contain)."""
    root, broken = world.root, world.root / "broken"

    def align(**overrides: object) -> list[str]:
        return world.train_flags(**overrides)

    def plain(**overrides: object) -> list[str]:
        return [flag for flag in world.train_flags(**overrides) if flag[2:].split("=")[0] in PLAIN_FLAGS]

    def merge(checkpoint: object = world.adapter_checkpoint, *extra: str, base: object = world.base) -> list[str]:
        return [f"--base_checkpoint={base}", f"--lora_finetuned_checkpoint_dir={checkpoint}", "--device=cpu", *extra]

    def probe(data: object) -> list[str]:
        return [f"--checkpoint=[{world.eval_checkpoint}]", f"--data={data}", f"--out_dir={root / 'probe_out'}"]

    def evaluate(checkpoint: object = world.eval_checkpoint, *extra: str) -> list[str]:
        return [f"--pretrained_checkpoint={checkpoint}", f"--local_log_dir={root / 'eval_logs'}", "--run_id=e1", *extra]

    return [
        ("negative_lr", FINETUNE_ALIGN, align(learning_rate=-1), "--learning_rate -1.0"),
        ("zero_batch", FINETUNE_ALIGN, align(batch_size=0), "--batch_size"),
        ("quantized_fsdp", FINETUNE_ALIGN, align(quantize_base="nf4", strategy="fsdp"), "--quantize_base nf4 with"),
        ("batch_not_int", FINETUNE_ALIGN, align(batch_size="abc"), "--batch_size: Couldn't parse 'abc'"),
        ("unknown_flag", FINETUNE_ALIGN, [*align(), "--no_such_flag=1"], "--no_such_flag"),
        ("missing_vla", FINETUNE_ALIGN, align(vla_path=root / "nowhere"), "--vla_path"),
        ("vla_config_corrupt", FINETUNE_ALIGN, align(vla_path=broken / "vla_bad_config"), "config.json"),
        ("vla_shard_truncated", FINETUNE_ALIGN, align(vla_path=broken / "vla_truncated"), "model-00002-of-00003"),
        ("no_dataset", FINETUNE_ALIGN, align(data_root_dir=root / "empty_dir"), "--data_root_dir"),
        ("unknown_dataset", FINETUNE_ALIGN, align(dataset_name="libero_kitchen"), "'libero_kitchen'"),
        ("vggt_text_file", FINETUNE_ALIGN, align(vggt_path=broken / "vggt_text.pt"), "--vggt_path"),
        ("vggt_truncated", FINETUNE_ALIGN, align(vggt_path=broken / "vggt_truncated.pt"), "vggt_truncated.pt"),
        ("vggt_layer", FINETUNE_ALIGN, align(vggt_layers_align=5), "--vggt_layers_align 5"),
        ("vggt_image_size", FINETUNE_ALIGN, align(vggt_image_size=100), "--vggt_image_size 100"),
        ("vla_layer", FINETUNE_ALIGN, align(vla_layers_align=9), "--vla_layers_align 9"),
        ("run_root_is_file", FINETUNE_ALIGN, align(run_root_dir=broken / "a_file" / "runs"), "--run_root_dir"),
        ("rerun_without_resume", FINETUNE_ALIGN, align(run_id_override="r1"), "run 'r1' already exists"),
        (
            "resume_changed_lr",
            FINETUNE_ALIGN,
            align(run_id_override="r1", resume=True, learning_rate=1e-3),
            "--learning_rate",
        ),
        ("resume_nothing", FINETUNE_ALIGN, align(resume=True), "no complete checkpoint of run 'fresh'"),
        (
            "resume_step_missing",
            FINETUNE_ALIGN,
            align(run_id_override="r1", resume=True, resume_step=7),
            "--resume_step 7",
        ),
        (
            "resume_other_base",
            FINETUNE_ALIGN,
            align(run_id_override="r1", resume=True, vla_path=world.other_base),
            "--vla_path",
        ),
        (
            "resume_changed_alignment",
            FINETUNE_ALIGN,
            align(run_id_override="r1", resume=True, vla_layers_align=0),
            "--vla_layers_align 1 -> 0",
        ),
        (
            "resume_other_data",
            FINETUNE_ALIGN,
            align(run_id_override="r1", resume=True, data_root_dir=root / "other_data"),
            f"--resume: the data of --data_root_dir {root / 'other_data'} --dataset_name {DATASET_NAME} is not what",
        ),
        (
            "resume_other_teacher",
            FINETUNE_ALIGN,
            align(run_id_override="r1", resume=True, vggt_path=root / "other_vggt.pt"),
            f"--resume: the teacher of --vggt_path {root / 'other_vggt.pt'} is not what run 'r1' was trained on",
        ),
        (
            "resume_no_record_changed_flag",
            FINETUNE_ALIGN,
            align(run_id_override="r2", resume=True, align_loss_coeff=0.9),
            "--align_loss_coeff 0.5 -> 0.9 differ from what",
        ),
        (
            "lerobot_truncated_video",
            FINETUNE_ALIGN,
            align(data_root_dir=root / "lerobot_truncated", dataset_name="libero_like_v30"),
            "5.900 s; the video is shorter than its episode's data (the last frame of episode 3)",
        ),
        (
            "lerobot_nan_state",
            FINETUNE,
            plain(data_root_dir=root / "lerobot_nan", dataset_name="libero_like_v21"),
            "episode_000001.parquet: column 'observation.state' of episode 1, frame 4 (dimension 7) is nan",
        ),
        ("plain_scheduler", FINETUNE, plain(scheduler="linear"), "--scheduler 'linear'"),
        ("plain_dropout", FINETUNE, plain(lora_dropout=1.5), "--lora_dropout 1.5"),
        ("plain_cameras", FINETUNE, plain(num_images_in_input=3), "--num_images_in_input 3"),
        ("plain_two_heads", FINETUNE, plain(use_diffusion=True), "--use_diffusion"),
        ("merge_no_checkpoint", MERGE, merge(""), "--lora_finetuned_checkpoint_dir is required"),
        ("merge_no_adapter", MERGE, merge(root / "empty_dir"), "lora_adapter/adapter_config.json"),
        (
            "merge_adapter_truncated",
            MERGE,
            merge(broken / "adapter_truncated"),
            "adapter_model.safetensors is truncated",
        ),
        ("merge_head_truncated", MERGE, merge(broken / "head_truncated"), "action_head--"),
        ("merge_stats_corrupt", MERGE, merge(broken / "stats_corrupt"), "dataset_statistics.json is not valid JSON"),
        ("merge_wrong_base", MERGE, merge(base=world.other_base), "is not the base model"),
        ("merge_missing_base", MERGE, merge(base=root / "nowhere"), "--base_checkpoint"),
        ("merge_dtype", MERGE, merge(world.adapter_checkpoint, "--dtype=float8"), "--dtype 'float8'"),
        ("merge_tolerance", MERGE, merge(world.adapter_checkpoint, "--tolerance=-1"), "--tolerance -1.0"),
        ("eval_suite", EVAL, evaluate(world.eval_checkpoint, "--task_suite_name=libero_100"), "--task_suite_name"),
        ("eval_no_checkpoint", EVAL, evaluate(""), "--pretrained_checkpoint is empty"),
        ("eval_missing_checkpoint", EVAL, evaluate(root / "nowhere"), "--pretrained_checkpoint"),
        ("eval_workers", EVAL, evaluate(world.eval_checkpoint, "--num_workers=0"), "--num_workers"),
        ("eval_task_ids", EVAL, evaluate(world.eval_checkpoint, "--task_ids=[3,12]"), "--task_ids [3, 12]"),
        ("eval_no_statistics", EVAL, evaluate(broken / "eval_no_stats"), "no dataset_statistics.json"),
        ("eval_head_truncated", EVAL, evaluate(broken / "eval_head_truncated"), "action_head--"),
        ("eval_lora_other_base", EVAL, evaluate(broken / "eval_lora_other_base"), "is not the base model"),
        (
            "eval_log_dir_is_file",
            EVAL,
            evaluate(world.eval_checkpoint, f"--local_log_dir={broken / 'a_file' / 'x'}"),
            "--local_log_dir",
        ),
        (
            "eval_states_corrupt",
            EVAL,
            evaluate(world.eval_checkpoint, f"--initial_states_path={broken / 'states_corrupt.json'}"),
            "states_corrupt.json",
        ),
        (
            "eval_unnorm_key",
            EVAL,
            evaluate(world.eval_checkpoint, "--unnorm_key=bridge_orig"),
            "--unnorm_key 'bridge_orig'",
        ),
        ("inspect_no_dataset", INSPECT, [f"--data_root_dir={root / 'empty_dir'}"], "--data_root_dir"),
        ("inspect_batches", INSPECT, [f"--data_root_dir={world.data}", "--num_batches=0"], "--num_batches 0"),
        (
            "inspect_corrupt_cache",
            INSPECT,
            [f"--data_root_dir={root / 'corrupt_cache_data'}", f"--dataset_name={DATASET_NAME}"],
            "statistics cache",
        ),
        (
            "convert_no_hdf5",
            CONVERT,
            [f"--hdf5_dir={root / 'empty_dir'}", f"--data_root_dir={root / 'out'}"],
            "--hdf5_dir",
        ),
        (
            "convert_dataset_name",
            CONVERT,
            [f"--hdf5_dir={root / 'empty_dir'}", "--dataset_name=foo"],
            "--dataset_name 'foo'",
        ),
        ("synthetic_episodes", SYNTHETIC, [f"--data_root_dir={root / 'out'}", "--num_episodes=0"], "--num_episodes 0"),
        ("synthetic_exists", SYNTHETIC, [f"--data_root_dir={world.data}"], "already exists"),
        ("tiny_out_dir_is_file", TINY, [f"--out_dir={broken / 'a_file' / 'x'}"], "--out_dir"),
        ("tiny_image_size", TINY, [f"--out_dir={root / 'tiny_100'}", "--image_size=100"], "--image_size 100"),
        # Issue 20: data files, refused pickles, evaluation flags, LeRobot metadata, depth-probe folders, typos.
        ("rlds_empty_folder", FINETUNE_ALIGN, align(data_root_dir=root / "rlds_empty"), "No RLDS dataset"),
        ("rlds_no_tfrecords", FINETUNE_ALIGN, align(data_root_dir=root / "rlds_no_tfrecords"), "Missing tfrecord"),
        ("rlds_truncated", FINETUNE_ALIGN, align(data_root_dir=root / "rlds_truncated"), "Truncated tfrecord"),
        (
            "inspect_truncated",
            INSPECT,
            [f"--data_root_dir={root / 'rlds_truncated'}", "--num_batches=1"],
            "Truncated tfrecord",
        ),
        ("inspect_empty_folder", INSPECT, [f"--data_root_dir={root / 'rlds_empty'}"], "No RLDS dataset"),
        (
            "convert_text_hdf5",
            CONVERT,
            [f"--hdf5_dir={root / 'hdf5_text'}", f"--data_root_dir={root / 'converted'}"],
            "demo.hdf5 is not a readable HDF5 file",
        ),
        ("vggt_pickle", FINETUNE_ALIGN, align(vggt_path=broken / "vggt_pickle.pt"), "unsafe: it names posix.system"),
        ("eval_three_cameras", EVAL, evaluate(world.eval_checkpoint, "--num_images_in_input=3"), "renders 2 cameras"),
        (
            "eval_trials",
            EVAL,
            evaluate(world.eval_checkpoint, "--num_trials_per_task=60"),
            "--num_trials_per_task 60: LIBERO has 50",
        ),
        ("eval_task_ids_comma", EVAL, evaluate(world.eval_checkpoint, "--task_ids=0,1"), "e.g. --task_ids [0,1]"),
        ("flag_typo", FINETUNE_ALIGN, [*align(), "--learning_rat=1"], "did you mean --learning_rate?"),
        ("eval_checkpoint_is_file", EVAL, evaluate(broken / "a_file"), "a_file is a file, not a folder"),
        ("merge_missing_folder", MERGE, merge(root / "nowhere"), "nowhere does not exist: expected the checkpoint"),
        ("vla_path_is_file", FINETUNE_ALIGN, align(vla_path=broken / "a_file"), "--vla_path"),
        (
            "resume_max_steps_done",
            FINETUNE_ALIGN,
            align(run_id_override="r1", resume=True, max_steps=2),
            "--max_steps 2: the run resumes from its checkpoint of step 2",
        ),
        (
            "resume_latest_max_steps_done",
            FINETUNE_ALIGN,
            align(run_id_override="r3", resume=True, max_steps=3),
            "--max_steps 3: the run resumes from its checkpoint of step 3",
        ),
        *[
            (case, FINETUNE, plain(data_root_dir=root / "lerobot", dataset_name=case), culprit)
            for case, culprit in (
                ("lerobot_escape", "leaves the dataset folder"),
                ("lerobot_no_data_path", "malformed LeRobot metadata"),
                ("lerobot_fps_text", "could not convert string to float: 'fast'"),
                ("lerobot_no_length", "missing key 'length'"),
            )
        ],
        *[
            (case, PROBE, probe(root / case), culprit)
            for case, culprit in (
                ("probe_no_scenes", "no 'scenes' list"),
                ("probe_escape", "scene name '../../outside' leaves scenes/"),
                ("probe_nan_depth", "has no finite value"),
                ("probe_corrupt_scene", "unreadable scene"),
            )
        ],
    ]


def test_every_bad_input_is_one_line_exit_2_and_writes_nothing(cli_world, tmp_path):
    cases = bad_inputs(cli_world)
    assert len(cases) >= 30
    results = run_cases([(script, args) for _, script, args, _ in cases], cli_world.root, tmp_path)

    failures = []
    for (case_id, _, _, culprit), result in zip(cases, results, strict=True):
        lines = [line for line in result["stderr"].splitlines() if line.strip()]
        problems = []
        if result["code"] != 2:
            problems.append(f"exit {result['code']}")
        if len(lines) != 1 or not lines[0].startswith("error: "):
            problems.append(f"{len(lines)} stderr lines")
        if "Traceback" in result["stderr"]:
            problems.append("traceback")
        if culprit not in result["stderr"]:
            problems.append(f"culprit {culprit!r} not named")
        if result["changed"]:
            problems.append(f"changed {result['changed']}")
        if problems:
            failures.append(f"{case_id}: {', '.join(problems)}: {result['stderr'][-600:]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("debug", [False, True])
def test_a_real_process_prints_one_line_and_debug_shows_the_traceback(cli_world, debug):
    args = cli_world.train_flags(learning_rate=-1) + (["--debug"] if debug else [])

    process = run_script(FINETUNE_ALIGN, args, cli_world.root)

    if debug:
        assert process.returncode == 1
        assert (
            "Traceback" in process.stderr and "UserError: --learning_rate -1.0: expected a value > 0" in process.stderr
        )
    else:
        assert process.returncode == 2
        assert process.stderr.strip() == "error: --learning_rate -1.0: expected a value > 0"
