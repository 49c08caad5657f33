"""layers.png and predictions.png: every suite shown, short labels with a table, nothing overprinted, colour bars."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.transforms import Bbox

from prismatic.probing.figures import layer_figure, prediction_figure

SUITES = ["libero_object", "libero_spatial"]
NAMES = ["spatial-forcing-7b-finetuned-libero-spatial", "openvla-7b-oft-finetuned-libero-spatial"]


def _scores(rng: np.random.Generator) -> dict:
    return {"all": {"abs_rel": rng.uniform(0.1, 1), "rmse": rng.uniform(0.1, 1), "delta1": rng.uniform()}}


@pytest.fixture
def metrics() -> dict:
    rng = np.random.default_rng(0)
    layers = [6, 12, 18, 24]
    return {
        "data": {"suites": SUITES},
        "checkpoints": {
            name: {
                "layers": layers,
                "linear": {str(layer): {s: {s: _scores(rng)} for s in SUITES} for layer in layers},
                "dpt": {s: {s: _scores(rng)} for s in SUITES},
            }
            for name in NAMES
        },
    }


def _extent(artist, renderer) -> Bbox:
    return artist.get_window_extent(renderer)


def test_the_layer_plot_has_a_row_per_suite_and_its_legend_covers_no_axis(metrics):
    figure = layer_figure(metrics)
    renderer = figure.canvas.get_renderer()
    plots = [axis for axis in figure.axes]
    assert len(plots) == len(SUITES) * 3
    assert {axis.get_title().split(":")[0] for axis in plots} == set(SUITES)
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == ["A linear", "A DPT", "B linear", "B DPT"]
    assert not any(_extent(legend, renderer).overlaps(_extent(axis, renderer)) for axis in plots)
    table = figure.texts[-1].get_text()
    assert f"A: {NAMES[0]}" in table and f"B: {NAMES[1]}" in table


def test_prediction_titles_do_not_overprint_and_every_view_has_a_colour_bar():
    rng = np.random.default_rng(0)
    scenes = 4
    figure = prediction_figure(
        rng.integers(0, 256, (scenes, 2, 32, 32, 3), dtype=np.uint8),
        rng.uniform(0.5, 2.0, (scenes, 2, 32, 32)),
        {name: rng.uniform(0.5, 2.0, (scenes, 2, 32, 32)) for name in NAMES},
        [f"{suite}_t00_i00{index}_v00" for suite in SUITES for index in range(2)],
    )
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    images = [axis for axis in figure.axes if axis.get_label() != "<colorbar>"]
    colorbars = [axis for axis in figure.axes if axis.get_label() == "<colorbar>"]
    assert len(images) == scenes * 8 and len(colorbars) == scenes * 2  # per scene: a bar for each view
    assert all(axis.get_ylabel() == "depth [m]" for axis in colorbars)
    titles = [axis.title for axis in images[:8]]
    assert [title.get_text() for title in titles] == ["primary RGB", "truth", "A", "B", "wrist RGB", "truth", "A", "B"]
    boxes = [_extent(title, renderer) for title in titles]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert not any(_extent(bar, renderer).overlaps(_extent(axis, renderer)) for bar in colorbars for axis in images)
