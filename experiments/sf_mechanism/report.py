"""Figures and the report page of the Spatial Forcing mechanism experiment, generated from ``results.json`` alone."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prismatic.util.io import atomic_output  # noqa: E402

COLOURS = {"plain": "tab:gray", "sf_geometry": "tab:blue", "sf_rgb": "tab:orange"}


def _save(figure: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def learning_curves(results: dict, path: Path) -> Path:
    """Held-out action L1 against step per (task, fraction): the mean over seeds, the band spans min to max."""
    groups = list(results["groups"].values())
    figure, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.4), squeeze=False)
    for axis, group in zip(axes[0], groups, strict=True):
        for variant, row in group["variants"].items():
            if not row["steps"]:
                continue
            axis.plot(
                row["steps"], row["l1_mean"], label=f"{variant} ({len(row['seeds'])} seeds)", color=COLOURS.get(variant)
            )
            axis.fill_between(row["steps"], row["l1_min"], row["l1_max"], alpha=0.2, color=COLOURS.get(variant))
        axis.set_title(f"task {group['task']}, {group['fraction']:.0%} of demos")
        axis.set_xlabel("training step")
        axis.set_ylabel("held-out action L1")
        axis.legend(fontsize=7)
    return _save(figure, path)


def success_bars(results: dict, path: Path) -> Path:
    """Closed-loop success with Wilson 95 % intervals; a panel saying why when the stage was skipped."""
    groups = list(results["groups"].values())
    figure, axis = plt.subplots(figsize=(max(4.0, 1.6 * len(groups) * 3), 3.4))
    if results["closed_loop"] != "run":
        axis.text(0.5, 0.5, f"closed-loop evaluation {results['closed_loop']}", ha="center", va="center", wrap=True)
        axis.set_axis_off()
        return _save(figure, path)
    labels, rates, lows, highs, colours = [], [], [], [], []
    for group in groups:
        for variant, row in group["variants"].items():
            success = row["success"]
            labels.append(f"t{group['task']} {group['fraction']:.0%}\n{variant}")
            rates.append(success["rate"])
            lows.append(success["rate"] - success["wilson95"][0])
            highs.append(success["wilson95"][1] - success["rate"])
            colours.append(COLOURS.get(variant))
    axis.bar(range(len(rates)), rates, yerr=[lows, highs], capsize=3, color=colours)
    axis.set_xticks(range(len(rates)), labels, fontsize=7)
    axis.set_ylim(0, 1)
    axis.set_ylabel("success rate (Wilson 95 %)")
    return _save(figure, path)


def probe_by_layer(results: dict, path: Path) -> Path:
    """Linear depth-probe AbsRel against layer (lower is more depth-aware), per 100 % run; the aligned layer marked."""
    figure, axis = plt.subplots(figsize=(5, 3.4))
    for group in results["groups"].values():
        for variant, row in group["variants"].items():
            for index, probe in enumerate(row["probe"]):
                layers = sorted(probe["linear_abs_rel_by_layer"], key=int)
                values = [probe["linear_abs_rel_by_layer"][layer] for layer in layers]
                label = f"t{group['task']} {variant}" if index == 0 else None
                axis.plot([int(layer) for layer in layers], values, marker="o", color=COLOURS.get(variant), label=label)
    axis.axvline(results["aligned_layer"], linestyle="--", color="k", linewidth=0.8, label="aligned layer")
    axis.set_xlabel("hidden-states layer")
    axis.set_ylabel("linear probe AbsRel (test scenes)")
    axis.legend(fontsize=7)
    return _save(figure, path)


def write_figures(results: dict, folder: Path) -> dict[str, Path]:
    """Every figure of the run; none for a depth probe that was not run."""
    figures = {
        "learning_curves": learning_curves(results, folder / "learning_curves.png"),
        "success": success_bars(results, folder / "success.png"),
    }
    if results["depth_probe"] == "run":
        figures["probe"] = probe_by_layer(results, folder / "probe_layers.png")
    return figures


def _number(value: float | None, digits: int = 4) -> str:
    return "not reached" if value is None else f"{value:.{digits}f}"


def verdict(low: float, high: float) -> str:
    """Plain words for a variant's success against the baseline's, from the 95 % interval of their difference."""
    if low > 0:
        return "higher than plain"
    if high < 0:
        return "lower than plain (harm)"
    return "no difference from plain resolved (the interval holds 0)"


def write_report(results: dict, figures: dict[str, Path], path: Path) -> Path:
    """The report page: every number read from ``results``; no effect and harm are stated as plainly as an effect."""
    relative = {name: os.path.relpath(figure, path.parent) for name, figure in figures.items()}
    lines = [
        "# Spatial Forcing mechanism experiment",
        "",
        f"Generated by `experiments/sf_mechanism/run.py` from `results.json` (data: {results['data_source']}, "
        f"scale {results['scale']}). Sizes: {results['sizes']}. Learning rate (every variant): "
        f"{results['learning_rate']:g}.",
        "",
        f"- Primary metric (declared before the run): {results['primary_metric']}; height-dependent task: "
        f"libero_spatial {results['height_task']}.",
        f"- Secondary metric: {results['secondary_metric']}.",
        f"- Closed-loop evaluation: {results['closed_loop']}.",
        f"- Depth probe: {results['depth_probe']}.",
        *provenance(results),
        "",
        "## Held-out action L1 and the secondary metric",
        "",
        "Each fraction holds out its own last episodes, so L1 values compare variants within a fraction only.",
        "",
        "| task | fraction | variant | seeds | final L1 (mean) | steps to plain's final L1 | ratio vs plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for group in results["groups"].values():
        for variant, row in group["variants"].items():
            final = row["l1_mean"][-1] if row["l1_mean"] else None
            steps = row["steps_to_baseline_final_l1"]
            lines.append(
                f"| {group['task']} | {group['fraction']:.0%} | {variant} | {len(row['seeds'])} | {_number(final)} | "
                f"{'not reached' if steps is None else steps} | {_number(row['speedup_vs_plain'], 2)} |"
            )
    lines += ["", f"![learning curves]({relative['learning_curves']})", "", "## Closed-loop success", ""]
    if results["closed_loop"] == "run":
        lines += [
            "| task | fraction | variant | successes / episodes | per seed | rate | Wilson 95 % | minus plain (95 %) "
            "| against plain |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for group in results["groups"].values():
            for variant, row in group["variants"].items():
                success = row["success"]
                low, high = success["wilson95"]
                difference, comparison = "", "baseline"
                if variant != "plain":
                    change, change_low, change_high = success["difference_vs_plain"]
                    difference = f"{change:+.2f} [{change_low:+.2f}, {change_high:+.2f}]"
                    comparison = verdict(change_low, change_high)
                lines.append(
                    f"| {group['task']} | {group['fraction']:.0%} | {variant} | {success['successes']} / "
                    f"{success['episodes']} | {', '.join(map(str, success.get('per_seed', [])))} | "
                    f"{success['rate']:.2f} | [{low:.2f}, {high:.2f}] | {difference} | {comparison} |"
                )
        lines += [
            "",
            "Episodes are pooled over seeds; the difference's interval is Newcombe's hybrid score interval, which "
            "treats episodes as independent and so ignores the spread between seeds (see the per-seed column).",
        ]
    else:
        lines.append(f"Not measured: {results['closed_loop']}.")
    lines += [
        "",
        f"![success]({relative['success']})",
        "",
        "## Depth probe (linear probe AbsRel on test scenes; lower = more depth in the tokens)",
        "",
    ]
    lines += (
        probe_section(results, relative)
        if results["depth_probe"] == "run"
        else [
            f"Not measured: {results['depth_probe']}.",
            "",
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        temporary.write_text("\n".join(lines))
    return path


def provenance(results: dict) -> list[str]:
    """Where the numbers come from: the code commit, or the parts a --combine joined."""
    if "combined_from" not in results:
        return [f"- Code: commit {results['code_commit']}."] if results.get("code_commit") else []
    parts = [
        f"tasks {part['tasks']} seeds {part['seeds']} (commit {part['code_commit']})"
        for part in results["combined_from"]
    ]
    return [
        f"- Joined from runs of disjoint parts (same base checkpoints, sha256 {results['base_sha256'][:16]}): "
        + "; ".join(parts)
        + "."
    ]


def probe_section(results: dict, relative: dict[str, str]) -> list[str]:
    """The depth probe's table and figure, per 100 % run."""
    lines = [
        f"Aligned layer: {results['aligned_layer']}.",
        "",
        "| task | variant | seed run | AbsRel at the aligned layer | DPT probe AbsRel |",
        "|---|---|---|---|---|",
    ]
    for group in results["groups"].values():
        for variant, row in group["variants"].items():
            for seed, probe in zip(row["seeds"], row["probe"], strict=False):
                aligned = probe["linear_abs_rel_by_layer"].get(str(results["aligned_layer"]))
                lines.append(
                    f"| {group['task']} | {variant} | {seed} | {_number(aligned)} | {_number(probe['dpt_abs_rel'])} |"
                )
    return [*lines, "", f"![probe]({relative['probe']})", ""]
