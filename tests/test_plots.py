"""Figures: laid out for the number of layers, readable with 50+ CSC layers."""

import pytest

from csc_cli import plots


def test_panels_wrap_and_labels_shrink_with_the_number_of_layers():
    assert plots.panel_grid(1) == (1, 1, 1)
    assert plots.panel_grid(8) == (1, 1, 1)
    assert plots.panel_grid(9) == (2, 1, 2)
    panels, rows, cols = plots.panel_grid(55)
    assert panels * plots.LINES_PER_PANEL >= 55 and rows * cols >= panels and cols <= plots.PANEL_COLUMNS
    sizes = [plots.label_fontsize(n) for n in (1, 10, 20, 55, 500)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == sizes[1] and sizes[-1] >= 4.0


@pytest.mark.parametrize("layers", [3, 55])
def test_per_layer_figures_draw_every_layer(tmp_path, layers):
    from PIL import Image

    names = [f"layer{i // 2 + 1}.{i % 2}.conv{i % 3}" for i in range(layers)]
    hist = {"counts": [5, 3, 0, 1], "bin_edges_fraction_of_max": [0, 0.25, 0.5, 0.75, 1.0]}
    codes = {"layers": {n: {"nonzero": 0.1 + i / (2 * layers), "histogram": hist} for i, n in enumerate(names)}}
    path = plots.codes_figure(codes, tmp_path / "codes.png")
    lines = plots.lines_figure({n: ([1, 2, 3], [1.0, 0.1 * (i + 1), 0.01]) for i, n in enumerate(names)}, "K", "gap",
                               tmp_path / "lines.png", logy=True, marks={n: 2 for n in names})
    with Image.open(path) as a, Image.open(lines) as b:
        if layers > plots.LINES_PER_PANEL:  # wider and taller than the few-layer layout
            assert a.size[0] > 1100 and b.size[1] > 440 and b.size[0] > 660
        assert a.size[0] > 0 and b.size[0] > 0
