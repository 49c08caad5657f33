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


def checkpoint_labels(names: list[str]) -> dict[str, str]:
    """Short labels (A, B, ...) for the figures; ``_legend_table`` maps them back to the checkpoint names."""
    return {name: chr(ord("A") + index) if index < 26 else f"C{index}" for index, name in enumerate(names)}


def _legend_table(figure: plt.Figure, labels: dict[str, str], notes: dict[str, str] | None = None, y: float = 0.0):
    """The label -> checkpoint table below the axes, at figure height ``y`` (the saved figure is cropped to hold it)."""
    rows = [f"{label}: {name}{notes.get(name, '') if notes else ''}" for name, label in labels.items()]
    figure.text(0.01, y, "\n".join(rows), fontsize=8, family="monospace", va="top", ha="left")


def layer_figure(metrics: dict[str, Any]) -> plt.Figure:
    """Rows: the data's suites; columns: metrics. The linear probes' in-suite value vs layer (solid, one line per
    checkpoint) and the DPT probe fed all layers (dashed, the checkpoint's colour); short labels, legend below."""
    suites = metrics["data"]["suites"]
    checkpoints = metrics["checkpoints"]
    labels = checkpoint_labels(list(checkpoints))
    figure, axes = plt.subplots(
        len(suites), len(METRIC_LABELS), figsize=(4.2 * len(METRIC_LABELS), 3.0 * len(suites)), squeeze=False
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, suite in enumerate(suites):
        for index, (name, result) in enumerate(checkpoints.items()):
            color = colors[index % len(colors)]
            layers = sorted(set(result["linear"]), key=int)
            for axis, metric in zip(axes[row], METRIC_LABELS, strict=True):
                values = [result["linear"][layer][suite][suite]["all"][metric] for layer in layers]
                axis.plot(
                    [int(layer) for layer in layers], values, marker="o", color=color, label=f"{labels[name]} linear"
                )
                axis.set_xticks([int(layer) for layer in layers])
                dpt_value = result["dpt"][suite][suite]["all"][metric]
                axis.axhline(dpt_value, color=color, linestyle="--", label=f"{labels[name]} DPT")
        for axis, metric in zip(axes[row], METRIC_LABELS, strict=True):
            axis.set_xlabel("LLM layer (hidden_states index)", fontsize=8)
            axis.set_title(f"{suite}: {METRIC_LABELS[metric]}", fontsize=9)
            axis.grid(alpha=0.3)
    figure.suptitle("Depth probes, in-suite test scenes (trained on the suite's train scenes)", fontsize=10)
    figure.tight_layout()
    handles, names = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(names), fontsize=8)
    notes = {name: f" (DPT layers {result['layers']})" for name, result in checkpoints.items()}
    _legend_table(figure, labels, notes, y=-0.1 / len(suites))  # below the legend row
    return figure


def save_layer_plot(metrics: dict[str, Any], path: str | Path) -> Path:
    return _save(layer_figure(metrics), path)


def prediction_figure(
    rgb: np.ndarray, depth: np.ndarray, predictions: dict[str, np.ndarray], names: list[str]
) -> plt.Figure:
    """Rows: scenes (every suite's); per view (primary, then wrist): RGB, ground truth, each checkpoint's DPT
    prediction (columns titled with short labels, the table below), and a colour bar in metres.

    ``rgb`` [S, V, H, W, 3], ``depth`` [S, V, H, W], ``predictions[name]`` [S, V, H, W] (V: 1 or 2 views); one depth
    colour scale per scene and view, shared by ground truth and predictions.
    """
    labels = checkpoint_labels(list(predictions))
    columns_per_view = 2 + len(predictions)
    num_views = rgb.shape[1]
    figure, axes = plt.subplots(
        len(names),
        num_views * columns_per_view,
        figsize=(2.0 * num_views * columns_per_view + 1.0, 2.1 * len(names)),
        squeeze=False,
        layout="constrained",
    )
    for row, name in enumerate(names):
        for view_index, view in enumerate(VIEWS[:num_views]):
            column = view_index * columns_per_view
            low, high = float(depth[row, view_index].min()), float(depth[row, view_index].max())
            axes[row, column].imshow(rgb[row, view_index])
            _off(axes[row, column], f"{view} RGB")
            if view_index == 0:
                axes[row, column].set_ylabel(name, fontsize=7)
            shown = axes[row, column + 1].imshow(depth[row, view_index], cmap=DEPTH_COLORMAP, vmin=low, vmax=high)
            _off(axes[row, column + 1], "truth")
            for offset, (checkpoint, predicted) in enumerate(predictions.items()):
                axes[row, column + 2 + offset].imshow(
                    predicted[row, view_index], cmap=DEPTH_COLORMAP, vmin=low, vmax=high
                )
                _off(axes[row, column + 2 + offset], labels[checkpoint])
            depth_axes = list(axes[row, column + 1 : column + columns_per_view])
            colorbar = figure.colorbar(shown, ax=depth_axes, fraction=0.02, pad=0.01, aspect=12)
            colorbar.ax.tick_params(labelsize=6)
            colorbar.set_label("depth [m]", fontsize=6)
    _legend_table(figure, labels)
    return figure


def save_prediction_figure(
    rgb: np.ndarray, depth: np.ndarray, predictions: dict[str, np.ndarray], names: list[str], path: str | Path
) -> Path:
    return _save(prediction_figure(rgb, depth, predictions, names), path)


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
