"""The probes can tell depth-informative features from uninformative ones, and a seed fixes their result."""

from __future__ import annotations

import numpy as np
import torch

from prismatic.probing.data import load_probe_data
from prismatic.probing.probe import ProbeConfig, depth_metrics, depth_targets, fit_linear_probe, train_dpt_probe

# 28-pixel patches (an 8 x 8 grid) keep the DPT's fusion maps small enough for a CPU test.
PATCH = 28
GRID = (224 // PATCH, 224 // PATCH)
TINY_PROBE = ProbeConfig(dpt_steps=100, batch_size=4, learning_rate=1e-2, token_dim=8, dpt_features=4, target_size=16)


def patchified_log_depth(depth: np.ndarray) -> torch.Tensor:
    """[S, V, 224, 224] -> [S, V, 64, 784]: each token is the log-depth of its 28 x 28 patch."""
    scenes, views = depth.shape[:2]
    grid = depth.shape[-1] // PATCH
    log_depth = torch.as_tensor(np.log(depth))
    patches = log_depth.reshape(scenes, views, grid, PATCH, grid, PATCH).permute(0, 1, 2, 4, 3, 5)
    return patches.reshape(scenes, views, grid * grid, PATCH * PATCH)


def probe_abs_rel(features: torch.Tensor, depth: np.ndarray, train: list[int], test: list[int], cfg: ProbeConfig):
    targets = depth_targets(depth, cfg.target_size)
    dpt, _ = train_dpt_probe([features[train]] * 4, targets[train], GRID, cfg, torch.device("cpu"))
    dpt_metrics = depth_metrics(dpt.predict([features[test]] * 4, torch.device("cpu")), targets[test])
    linear = fit_linear_probe(features[train], torch.as_tensor(depth[train]), GRID, cfg)
    linear_metrics = depth_metrics(linear.predict(features[test]), targets[test])
    return dpt_metrics["all"]["abs_rel"], linear_metrics["all"]["abs_rel"]


def test_probes_reach_a_much_lower_abs_rel_on_depth_features_than_on_random_ones(probe_data, single_thread):
    data = load_probe_data(probe_data)
    train = [i for i, scene in enumerate(data.scenes) if scene.split == "train"]
    test = [i for i, scene in enumerate(data.scenes) if scene.split == "test"]
    informative = patchified_log_depth(data.depth)
    random = torch.randn(informative.shape, generator=torch.Generator().manual_seed(0))
    dpt_informative, linear_informative = probe_abs_rel(informative, data.depth, train, test, TINY_PROBE)
    dpt_random, linear_random = probe_abs_rel(random, data.depth, train, test, TINY_PROBE)
    assert dpt_informative < 0.5 * dpt_random, (dpt_informative, dpt_random)
    assert linear_informative < 0.2 * linear_random, (linear_informative, linear_random)


def test_the_seed_fixes_the_dpt_probe_and_another_seed_changes_it(single_thread):
    generator = torch.Generator().manual_seed(0)
    depth = 0.5 + torch.rand((6, 2, 224, 224), generator=generator)
    features = torch.randn((6, 2, 256, 8), generator=generator)
    cfg = ProbeConfig(dpt_steps=3, batch_size=2, token_dim=8, dpt_features=4, target_size=16)
    targets = depth_targets(depth, cfg.target_size)

    def metrics(seed: int) -> dict:
        probe_cfg = ProbeConfig(**{**cfg.__dict__, "seed": seed})
        dpt, losses = train_dpt_probe([features[:4]] * 4, targets[:4], (16, 16), probe_cfg, torch.device("cpu"))
        return {"losses": losses, **depth_metrics(dpt.predict([features[4:]] * 4, torch.device("cpu")), targets[4:])}

    first = metrics(0)
    assert metrics(0) == first
    assert metrics(1) != first
