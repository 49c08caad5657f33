"""Figures of the depth probe: the data preview, metric vs layer, ground truth vs predictions, alignment maps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display in rendering processes or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from prismatic.probing.data import VIEWS, load_probe_data  # noqa: E402
from prismatic.util.io import atomic_output  # noqa: E402

DEPTH_COLORMAP = "turbo_r"  # near = red, far = blue
METRIC_LABELS = {
    "abs_rel": "AbsRel (lower is better)",
    "rmse": "RMSE [m] (lower is better)",
    "delta1": "δ<1.25 (higher is better)",
}


def _save(figure: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def _off(axis: plt.Axes, title: str | None = None) -> None:
    axis.set_xticks([])
    axis.set_yticks([])
    if title:
        axis.set_title(title, fontsize=8)


def save_preview_grid(data_dir: str | Path, num_scenes: int, path: str | Path) -> Path:
    """Rows: scenes (spread over the data set); columns: primary RGB, primary depth, wrist RGB, wrist depth."""
    data = load_probe_data(data_dir)
    picks = np.unique(np.linspace(0, len(data.scenes) - 1, min(num_scenes, len(data.scenes))).round().astype(int))
    figure, axes = plt.subplots(len(picks), 4, figsize=(8, 2.1 * len(picks)), squeeze=False)
    for row, index in enumerate(picks):
        scene = data.scenes[index]
        for view_index, view in enumerate(VIEWS):
            depth = data.depth[index, view_index]
            axes[row, 2 * view_index].imshow(data.rgb[index, view_index])
            shown = axes[row, 2 * view_index + 1].imshow(depth, cmap=DEPTH_COLORMAP)
            figure.colorbar(shown, ax=axes[row, 2 * view_index + 1], fraction=0.046)
            _off(axes[row, 2 * view_index], f"{scene.name} ({scene.split})\n{view} RGB" if view_index == 0 else view)
            _off(axes[row, 2 * view_index + 1], f"{view} depth [m] {depth.min():.2f}-{depth.max():.2f}")
    return _save(figure, path)


def save_layer_plot(metrics: dict[str, Any], suite: str, path: str | Path) -> Path:
    """Per metric, the linear probe's in-suite value vs layer (one line per checkpoint); the DPT probe (fed all
    layers) as a dashed line in the checkpoint's colour."""
    figure, axes = plt.subplots(1, len(METRIC_LABELS), figsize=(4.2 * len(METRIC_LABELS), 3.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, result) in enumerate(metrics["checkpoints"].items()):
        color = colors[index % len(colors)]
        layers = sorted(set(result["layers"]))
        for axis, metric in zip(axes, METRIC_LABELS, strict=True):
            values = [result["linear"][str(layer)][suite][suite]["all"][metric] for layer in layers]
            axis.plot(layers, values, marker="o", color=color, label=f"{name} linear")
            dpt_value = result["dpt"][suite][suite]["all"][metric]
            axis.axhline(dpt_value, color=color, linestyle="--", label=f"{name} DPT (layers {result['layers']})")
    for axis, metric in zip(axes, METRIC_LABELS, strict=True):
        axis.set_xlabel("LLM layer (hidden_states index)")
        axis.set_title(METRIC_LABELS[metric], fontsize=9)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"Depth probes on {suite} test scenes (trained on {suite} train scenes)", fontsize=10)
    return _save(figure, path)


def save_prediction_figure(
    rgb: np.ndarray, depth: np.ndarray, predictions: dict[str, np.ndarray], names: list[str], path: str | Path
) -> Path:
    """Rows: scenes; per view (primary, then wrist): RGB, ground truth, each checkpoint's DPT prediction.

    ``rgb`` [S, 2, H, W, 3], ``depth`` [S, 2, H, W], ``predictions[name]`` [S, 2, H, W]; one depth colour scale per
    scene and view, shared by ground truth and predictions.
    """
    columns_per_view = 2 + len(predictions)
    figure, axes = plt.subplots(
        len(names), 2 * columns_per_view, figsize=(1.9 * 2 * columns_per_view, 2.0 * len(names)), squeeze=False
    )
    for row, name in enumerate(names):
        for view_index, view in enumerate(VIEWS):
            column = view_index * columns_per_view
            low, high = float(depth[row, view_index].min()), float(depth[row, view_index].max())
            axes[row, column].imshow(rgb[row, view_index])
            _off(axes[row, column], f"{name}\n{view}" if view_index == 0 else view)
            axes[row, column + 1].imshow(depth[row, view_index], cmap=DEPTH_COLORMAP, vmin=low, vmax=high)
            _off(axes[row, column + 1], "ground truth")
            for offset, (checkpoint, predicted) in enumerate(predictions.items()):
                axes[row, column + 2 + offset].imshow(
                    predicted[row, view_index], cmap=DEPTH_COLORMAP, vmin=low, vmax=high
                )
                _off(axes[row, column + 2 + offset], checkpoint)
    return _save(figure, path)


def save_alignment_figure(
    images: np.ndarray, similarity: np.ndarray, vla_pca: np.ndarray, target_pca: np.ndarray, path: str | Path
) -> Path:
    """Rows: cameras; columns: image, cosine similarity overlaid, PCA of the VLA tokens, PCA of the VGGT targets.

    ``images`` [V, H, W, 3] uint8, ``similarity`` [V, h, w], ``vla_pca``/``target_pca`` [V, h, w, 3] in [0, 1].
    """
    figure, axes = plt.subplots(len(images), 4, figsize=(11, 2.9 * len(images)), squeeze=False)
    for row, image in enumerate(images):
        view = VIEWS[row] if row < len(VIEWS) else f"camera {row}"
        height, width = image.shape[:2]
        axes[row, 0].imshow(image)
        _off(axes[row, 0], view)
        axes[row, 1].imshow(image)
        shown = axes[row, 1].imshow(
            similarity[row], cmap="viridis", vmin=-1, vmax=1, alpha=0.6, extent=(0, width, height, 0)
        )
        figure.colorbar(shown, ax=axes[row, 1], fraction=0.046)
        _off(axes[row, 1], f"cos(projected VLA, VGGT target), mean {similarity[row].mean():.3f}")
        axes[row, 2].imshow(vla_pca[row], interpolation="nearest")
        _off(axes[row, 2], "VLA tokens, PCA (3 comp.)")
        axes[row, 3].imshow(target_pca[row], interpolation="nearest")
        _off(axes[row, 3], "VGGT targets, PCA (3 comp.)")
    return _save(figure, path)
