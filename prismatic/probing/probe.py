"""Training and scoring depth probes on frozen per-patch features (any features: VLA tokens, or controls in tests).

Features of a set of scenes are ``{layer: [S, V, P, D]}`` (S scenes, V camera views, P = h * w patches); depth is
``[S, V, H, W]`` metres. Every (scene, view) pair is one sample; one probe serves both views. Two probes:

* DPT probe (:class:`~prismatic.probing.heads.DPTDepthProbe`): four layers in, trained with AdamW on the L1 loss of
  log-depth, a fixed budget (steps x batch) from a fixed seed.
* Linear probe, one per layer: ridge regression (closed form, so deterministic and cheap) from a token to the
  log-depth of its patch on a ``k x k`` sub-grid, upsampled bilinearly to the evaluation size.

Metrics (on all valid pixels of all test samples at ``target_size``): AbsRel = mean |d - d*| / d*, RMSE (metres) and
δ<1.25 = share of pixels with max(d / d*, d* / d) < 1.25.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from prismatic.probing.data import VIEWS
from prismatic.probing.heads import NUM_DPT_LAYERS, DPTDepthProbe

DELTA_THRESHOLD = 1.25
MIN_VALID_DEPTH = 1e-3


@dataclass
class ProbeConfig:
    """The probes' budget and sizes: identical for every checkpoint of a comparison."""

    dpt_steps: int = 2000  # Optimiser steps of the DPT probe
    batch_size: int = 8  # (scene, view) samples per step
    learning_rate: float = 3e-4
    weight_decay: float = 1e-4
    token_dim: int = 256  # Width the 2-layer MLPs map the LLM tokens to
    dpt_features: int = 128  # DPT fusion width
    target_size: int = 224  # Resolution of predictions and metrics (ground truth is area-pooled to it)
    linear_patch_pixels: int = 4  # Linear probe: each token predicts a k x k block of its patch
    ridge_lambda: float = 1e-3  # Linear probe: ridge strength, relative to the mean feature variance
    seed: int = 0

    def check(self) -> None:
        for name in ("dpt_steps", "batch_size", "token_dim", "dpt_features", "target_size", "linear_patch_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.ridge_lambda <= 0:
            raise ValueError("--learning_rate and --ridge_lambda must be > 0")


def depth_targets(depth: np.ndarray | Tensor, size: int) -> Tensor:
    """Ground truth ``[S, V, H, W]`` area-pooled to ``[S, V, size, size]`` (float32)."""
    depth = torch.as_tensor(np.asarray(depth), dtype=torch.float32)
    if depth.shape[-1] == size and depth.shape[-2] == size:
        return depth
    flat = depth.reshape(-1, 1, *depth.shape[-2:])
    return F.interpolate(flat, size=(size, size), mode="area").reshape(*depth.shape[:2], size, size)


def depth_metrics(predicted: Tensor, target: Tensor) -> dict[str, dict[str, float]]:
    """AbsRel, RMSE and δ<1.25 per view and over all views; both ``[S, V, H, W]`` metres."""
    results = {}
    groups = {view: [index] for index, view in enumerate(VIEWS[: target.shape[1]])}
    groups["all"] = list(range(target.shape[1]))
    for name, views in groups.items():
        prediction, truth = predicted[:, views].double(), target[:, views].double()
        valid = torch.isfinite(truth) & (truth > MIN_VALID_DEPTH)
        prediction, truth = prediction[valid].clamp(min=MIN_VALID_DEPTH), truth[valid]
        ratio = torch.maximum(prediction / truth, truth / prediction)
        results[name] = {
            "abs_rel": float(((prediction - truth).abs() / truth).mean()),
            "rmse": float(((prediction - truth) ** 2).mean().sqrt()),
            "delta1": float((ratio < DELTA_THRESHOLD).double().mean()),
        }
    return results


def _samples(features: Tensor) -> Tensor:
    """``[S, V, P, D]`` -> ``[S * V, P, D]``."""
    return features.reshape(-1, *features.shape[2:])


@dataclass
class FeatureNorm:
    """Per-channel standardisation from the training features (LLM states have channels of very large scale)."""

    mean: Tensor  # [D]
    std: Tensor  # [D]

    @classmethod
    def fit(cls, features: Tensor) -> FeatureNorm:
        flat = features.reshape(-1, features.shape[-1]).double()
        return cls(flat.mean(0).float(), flat.std(0).clamp(min=1e-6).float())

    def __call__(self, features: Tensor) -> Tensor:
        return (features.float() - self.mean.to(features.device)) / self.std.to(features.device)


@dataclass
class TrainedDPT:
    probe: DPTDepthProbe
    norms: list[FeatureNorm]
    grid_hw: tuple[int, int]
    target_size: int

    @torch.no_grad()
    def predict(self, layer_features: list[Tensor], device: torch.device, batch_size: int = 16) -> Tensor:
        """Depth ``[S, V, size, size]`` metres from ``NUM_DPT_LAYERS`` feature sets ``[S, V, P, D]``."""
        self.probe.eval()
        num_scenes, num_views = layer_features[0].shape[:2]
        flat = [_samples(features) for features in layer_features]
        outputs = []
        for start in range(0, flat[0].shape[0], batch_size):
            batch = [
                norm(features[start : start + batch_size].to(device))
                for norm, features in zip(self.norms, flat, strict=True)
            ]
            outputs.append(self.probe(batch, self.grid_hw, self.target_size).exp().cpu())
        return torch.cat(outputs)[:, 0].reshape(num_scenes, num_views, self.target_size, self.target_size)


def train_dpt_probe(
    layer_features: list[Tensor], depth: Tensor, grid_hw: tuple[int, int], cfg: ProbeConfig, device: torch.device
) -> tuple[TrainedDPT, list[float]]:
    """Train a DPT probe from scratch; ``layer_features``: four ``[S, V, P, D]``; ``depth``: ``[S, V, size, size]``.

    Returns the probe and its loss per step. The seed fixes the initialisation and the batch order.
    """
    if len(layer_features) != NUM_DPT_LAYERS:
        raise ValueError(f"the DPT probe needs {NUM_DPT_LAYERS} layers of features; got {len(layer_features)}")
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    norms = [FeatureNorm.fit(features) for features in layer_features]
    flat = [_samples(features) for features in layer_features]
    log_depth = depth.reshape(-1, 1, cfg.target_size, cfg.target_size).clamp(min=MIN_VALID_DEPTH).log()
    probe = DPTDepthProbe(flat[0].shape[-1], cfg.token_dim, cfg.dpt_features)
    with torch.no_grad():  # start from the mean log-depth, so the steps go to structure rather than to an offset
        probe.head[-1].weight.zero_()
        probe.head[-1].bias.fill_(float(log_depth.mean()))
    probe = probe.to(device)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.dpt_steps)
    losses = []
    probe.train()
    for _ in range(cfg.dpt_steps):
        batch = torch.randint(0, flat[0].shape[0], (cfg.batch_size,), generator=generator)
        inputs = [norm(features[batch].to(device)) for norm, features in zip(norms, flat, strict=True)]
        predicted = probe(inputs, grid_hw, cfg.target_size)
        loss = F.l1_loss(predicted, log_depth[batch].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    return TrainedDPT(probe, norms, grid_hw, cfg.target_size), losses


@dataclass
class LinearProbe:
    norm: FeatureNorm
    weights: Tensor  # [D + 1, k * k] (last row: bias)
    grid_hw: tuple[int, int]
    patch_pixels: int
    target_size: int

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        """Depth ``[S, V, size, size]`` metres from features ``[S, V, P, D]``."""
        num_scenes, num_views = features.shape[:2]
        height, width = self.grid_hw
        k = self.patch_pixels
        inputs = self.norm(_samples(features))  # [N, P, D]
        inputs = torch.cat([inputs, torch.ones_like(inputs[..., :1])], dim=-1).double()
        blocks = (inputs @ self.weights).float()  # [N, P, k * k]
        blocks = blocks.reshape(-1, height, width, k, k).permute(0, 1, 3, 2, 4).reshape(-1, 1, height * k, width * k)
        log_depth = F.interpolate(
            blocks, size=(self.target_size, self.target_size), mode="bilinear", align_corners=False
        )
        return log_depth.exp()[:, 0].reshape(num_scenes, num_views, self.target_size, self.target_size)


def _patch_blocks(depth: Tensor, grid_hw: tuple[int, int], k: int) -> Tensor:
    """Log-depth ``[S, V, H, W]`` -> per-patch ``k x k`` blocks ``[S * V, P, k * k]`` (area-pooled)."""
    height, width = grid_hw
    pooled = F.interpolate(depth.reshape(-1, 1, *depth.shape[-2:]), size=(height * k, width * k), mode="area")
    log_depth = pooled.clamp(min=MIN_VALID_DEPTH).log()[:, 0]  # [N, h*k, w*k]
    blocks = log_depth.reshape(-1, height, k, width, k).permute(0, 1, 3, 2, 4)
    return blocks.reshape(log_depth.shape[0], height * width, k * k)


def fit_linear_probe(
    features: Tensor,
    depth: Tensor,
    grid_hw: tuple[int, int],
    cfg: ProbeConfig,
    device: torch.device | str = "cpu",
    chunk: int = 8192,
) -> LinearProbe:
    """Ridge regression of patch log-depth blocks on standardised tokens (``depth`` at full resolution).

    The normal equations are accumulated in float64 on ``device`` (for 4096-wide tokens, a GPU's job)."""
    norm = FeatureNorm.fit(features)
    inputs = norm(_samples(features)).reshape(-1, features.shape[-1])  # [N * P, D]
    targets = _patch_blocks(depth, grid_hw, cfg.linear_patch_pixels).reshape(inputs.shape[0], -1).double()
    dim = inputs.shape[1] + 1
    gram = torch.zeros(dim, dim, dtype=torch.float64, device=device)
    cross = torch.zeros(dim, targets.shape[1], dtype=torch.float64, device=device)
    for start in range(0, inputs.shape[0], chunk):
        rows = inputs[start : start + chunk].to(device, torch.float64)
        rows = torch.cat([rows, torch.ones_like(rows[:, :1])], dim=1)
        gram += rows.T @ rows
        cross += rows.T @ targets[start : start + chunk].to(device)
    penalty = cfg.ridge_lambda * inputs.shape[0] * torch.ones(dim, dtype=torch.float64, device=device)
    penalty[-1] = 0.0  # no penalty on the bias
    weights = torch.linalg.solve(gram + torch.diag(penalty), cross).cpu()
    return LinearProbe(norm, weights, grid_hw, cfg.linear_patch_pixels, cfg.target_size)
