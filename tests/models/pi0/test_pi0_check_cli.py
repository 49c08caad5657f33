"""``python -m prismatic.models.pi0.check_checkpoint``: a good checkpoint loads and reports; bad input is one
``error:`` line, exit status 2, before any weight is loaded."""

from __future__ import annotations

import json
import runpy
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from prismatic.models.pi0 import Pi0Config, Pi0Model
from prismatic.testing.pi0_tiny import released_state_dict

MODULE = "prismatic.models.pi0.check_checkpoint"


@pytest.fixture
def config_file(tmp_path: Path, small_config: Pi0Config) -> Path:
    path = tmp_path / "pi0_config.json"
    path.write_text(small_config.to_json_string())
    return path


@pytest.fixture
def run_check(
    config_file: Path, sentencepiece_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> Callable[[list[str]], tuple[int, str, str]]:
    """Runs the module as ``python -m`` would, with the tiny tokenizer and config unless ``flags`` name their own;
    returns the exit status, stdout and stderr."""

    def run(flags: list[str]) -> tuple[int, str, str]:
        defaults = {"--tokenizer": str(sentencepiece_model), "--config_file": str(config_file)}
        extra = [item for flag, value in defaults.items() if flag not in flags for item in (flag, value)]
        monkeypatch.setattr(sys, "argv", [MODULE, *flags, *extra])
        code = 0
        try:
            runpy.run_module(MODULE, run_name="__main__", alter_sys=True)
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_good_checkpoint_is_checked_and_loaded(small_model: Pi0Model, write_checkpoint: Callable, run_check):
    folder = write_checkpoint(released_state_dict(small_model, "lerobot", torch.float32), config={"type": "pi0"})
    code, out, err = run_check(["--checkpoint", str(folder)])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].endswith(f"pi0, lerobot layout, {len(small_model.state_dict()) - 1} tensors; tokenizer 50 pieces")
    assert lines[2:4] == ["missing keys: none", "unexpected keys: none"]


def test_bad_input_is_one_line_exit_2_before_loading(
    tmp_path: Path,
    small_config: Pi0Config,
    small_model: Pi0Model,
    write_checkpoint: Callable,
    run_check,
    monkeypatch: pytest.MonkeyPatch,
):
    good = released_state_dict(small_model, "openpi", torch.float32)
    other_family = write_checkpoint({"vision_backbone.featurizer.cls_token": torch.zeros(1, 1, 4)}, "openvla")
    wrong_layout = write_checkpoint(
        {("model." + key if index < 3 else key): value for index, (key, value) in enumerate(good.items())}, "mixed"
    )
    openpi = write_checkpoint(good, "openpi")
    narrow_config = tmp_path / "narrow.json"
    narrow_config.write_text(json.dumps({**small_config.to_dict(), "max_action_dim": 24, "action_dim": 7}))
    cases = [
        (["--checkpoint", str(other_family)], "no paligemma_with_expert.* tensors"),
        (["--checkpoint", str(wrong_layout)], "3 of"),
        (["--checkpoint", str(openpi), "--tokenizer", str(tmp_path / "missing.model")], "no such tokenizer file"),
        (["--checkpoint", str(openpi), "--config_file", str(narrow_config)], "expected [16, 24]"),
        (["--checkpoint", str(tmp_path / "absent")], "no such file"),
        (["--checkpoint", str(openpi), "--config_file", str(tmp_path / "x.json")], "--config_file"),
    ]
    monkeypatch.setattr(
        "prismatic.models.pi0.loading_pi0.load_pi0_weights", lambda *args, **kwargs: pytest.fail("weights loaded")
    )
    for flags, expected in cases:
        code, out, err = run_check(flags)
        assert code == 2, (flags, err)
        assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, (flags, err)
        assert out == ""
