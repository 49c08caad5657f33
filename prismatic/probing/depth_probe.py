"""``probe_depth.py``: how much metric depth the frozen visual tokens of each checkpoint carry.

For every checkpoint: extract the visual tokens at ``layers`` for every scene, then for every suite of the data
train the DPT probe (four layers) and a linear probe per layer on that suite's train scenes, and score them on the
test scenes of every suite (in-suite and cross-suite). The probes' budget and seed are the same for every checkpoint.
Writes ``metrics.json``, ``layers.png`` (metric vs layer) and ``predictions.png`` (ground truth vs each checkpoint's
DPT prediction on a few in-suite test scenes, primary and wrist views side by side).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prismatic.models.family import CheckedCheckpoint
from prismatic.probing.data import load_probe_data
from prismatic.probing.features import (
    PAPER_LAYERS,
    check_probe_checkpoint,
    extract_features,
    load_probed_vla,
    resolve_layers,
)
from prismatic.probing.figures import save_layer_plot, save_prediction_figure
from prismatic.probing.probe import ProbeConfig, depth_metrics, depth_targets, fit_linear_probe, train_dpt_probe
from prismatic.util.cli import UserError
from prismatic.util.io import write_json_atomic

METRICS_NAME = "metrics.json"
LAYER_PLOT_NAME = "layers.png"
PREDICTIONS_NAME = "predictions.png"


@dataclass
class ProbeDepthConfig:
    checkpoint: list[Path] = field(default_factory=list)  # Checkpoint folders to compare ('[A,B]')
    data: Path = Path("data/depth_probe")  # Folder written by make_depth_probe_data.py
    out_dir: Path = Path("runs/depth_probe")  # Where metrics.json and the figures go
    layers: list[int] = field(default_factory=lambda: list(PAPER_LAYERS))  # hidden_states indices, earliest first
    probe: ProbeConfig = field(default_factory=ProbeConfig)  # Probe budget and sizes (--probe.dpt_steps ...)
    figure_scenes: int = 3  # Test scenes shown in predictions.png
    overwrite: bool = False  # Replace an existing metrics.json in out_dir

    def check(self) -> None:
        if not self.checkpoint:
            raise UserError(
                "--checkpoint: expected at least one checkpoint folder, e.g. --checkpoint '[ckpts/a,ckpts/b]'"
            )
        missing = [str(path) for path in self.checkpoint if not Path(path).is_dir()]
        if missing:
            raise UserError(f"--checkpoint {missing[0]}: not a folder; expected a checkpoint in the released layout")
        if len(self.layers) != 4:
            raise UserError(f"--layers {self.layers}: the DPT probe takes 4 layers (earliest first)")
        try:
            self.probe.check()
        except ValueError as error:
            raise UserError(str(error).replace("--", "--probe.")) from None
        if (self.out_dir / METRICS_NAME).exists() and not self.overwrite:
            raise UserError(
                f"--out_dir {self.out_dir} already holds {METRICS_NAME}; pass --overwrite true or a new --out_dir"
            )


def checkpoint_names(paths: list[Path]) -> list[str]:
    """Short, unique labels: the folder names, numbered where they repeat."""
    names = [path.resolve().name for path in paths]
    return [name if names.count(name) == 1 else f"{name}#{index}" for index, name in enumerate(names)]


def probe_checkpoint(
    features: dict[int, torch.Tensor],
    layers: list[int],
    grid_hw: tuple[int, int],
    depth_full: torch.Tensor,
    targets: torch.Tensor,
    suite_indices: dict[str, dict[str, list[int]]],
    cfg: ProbeConfig,
    device: torch.device,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Metrics of the DPT and linear probes for one checkpoint's features; also the DPT's in-suite test predictions.

    ``suite_indices[suite]["train" | "test"]`` are scene indices into ``features``; results are keyed
    ``[train_suite][test_suite][view]``.
    """
    result: dict[str, Any] = {"dpt": {}, "linear": {str(layer): {} for layer in sorted(set(layers))}, "dpt_loss": {}}
    predictions = {}
    for train_suite, split in suite_indices.items():
        train = split["train"]
        dpt, losses = train_dpt_probe(
            [features[layer][train] for layer in layers], targets[train], grid_hw, cfg, device
        )
        result["dpt_loss"][train_suite] = {"first": losses[0], "last": losses[-1]}
        linear = {
            layer: fit_linear_probe(features[layer][train], depth_full[train], grid_hw, cfg, device)
            for layer in set(layers)
        }
        result["dpt"][train_suite] = {}
        for test_suite, test_split in suite_indices.items():
            test = test_split["test"]
            predicted = dpt.predict([features[layer][test] for layer in layers], device)
            result["dpt"][train_suite][test_suite] = depth_metrics(predicted, targets[test])
            if test_suite == train_suite:
                predictions[train_suite] = predicted
            for layer, probe in linear.items():
                result["linear"][str(layer)].setdefault(train_suite, {})[test_suite] = depth_metrics(
                    probe.predict(features[layer][test]), targets[test]
                )
    return result, predictions


def compared_camera_count(checked: list[CheckedCheckpoint]) -> int:
    """The cameras every checkpoint reads (the probe data's leading views they are probed on); checkpoints that read
    different numbers of cameras are refused, since their probes would not compare."""
    counts = {str(c.path): c.policy_config.num_images_in_input for c in checked}
    if len(set(counts.values())) > 1:
        raise UserError(f"--checkpoint: the checkpoints read different numbers of cameras {counts}; expected one count")
    return next(iter(counts.values()))


def run_probe_depth(cfg: ProbeDepthConfig) -> dict[str, Any]:
    """Probe every checkpoint on the data and write the metrics and figures; returns the metrics."""
    cfg.check()
    data = load_probe_data(cfg.data)
    suite_indices = {}
    for suite in data.suites:
        split = {
            name: [i for i, s in enumerate(data.scenes) if s.suite == suite and s.split == name]
            for name in ("train", "test")
        }
        if not split["train"] or not split["test"]:
            raise UserError(
                f"--data {cfg.data}: suite {suite} needs train and test scenes; "
                f"has {len(split['train'])} and {len(split['test'])}"
            )
        suite_indices[suite] = split
    # every checkpoint, before the first one's tokens are extracted
    checked = [check_probe_checkpoint(Path(path), data) for path in cfg.checkpoint]
    data = data.leading_views(compared_camera_count(checked))
    targets = depth_targets(data.depth, cfg.probe.target_size)
    depth_full = torch.as_tensor(data.depth)
    names = checkpoint_names(cfg.checkpoint)
    metrics: dict[str, Any] = {
        "data": {
            "folder": str(cfg.data),
            "suites": data.suites,
            "scenes": {s: {k: len(v) for k, v in i.items()} for s, i in suite_indices.items()},
        },
        "probe": dataclasses.asdict(cfg.probe),
        "requested_layers": list(cfg.layers),
        "checkpoints": {},
    }
    figure_predictions = {}
    for name, path, parsed in zip(names, cfg.checkpoint, checked, strict=True):
        model = load_probed_vla(path, name, data.suites, parsed)
        layers, note = resolve_layers(cfg.layers, model.num_llm_layers)
        if note:
            print(f"{name}: {note}")
        features = extract_features(model, data, layers)
        device, grid_hw = model.device, model.grid_hw
        del model  # the probes only need the tokens
        result, predictions = probe_checkpoint(
            features, layers, grid_hw, depth_full, targets, suite_indices, cfg.probe, device
        )
        metrics["checkpoints"][name] = {"path": str(path), "layers": layers, "layer_note": note, **result}
        figure_predictions[name] = np.concatenate([predictions[s][: cfg.figure_scenes].numpy() for s in data.suites])
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cfg.out_dir / METRICS_NAME, metrics)
    save_layer_plot(metrics, cfg.out_dir / LAYER_PLOT_NAME)
    shown = [index for suite in data.suites for index in suite_indices[suite]["test"][: cfg.figure_scenes]]
    save_prediction_figure(
        data.rgb[shown],
        targets[shown].numpy(),
        figure_predictions,
        [data.scenes[i].name for i in shown],
        cfg.out_dir / PREDICTIONS_NAME,
    )
    return metrics
