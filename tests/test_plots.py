"""What the figures show: the ROC operating point is the threshold rule's own, the reliability
legend covers no point and each point says how many faces it holds."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg

from gender_lib import metrics, plots


def test_roc_operating_point_is_the_threshold_rule_not_the_nearest_kept_threshold():
    # roc_curve keeps only the corners; a threshold between two kept ones used to snap to the nearest.
    y = np.array([0] * 11 + [1] * 7)
    p = np.r_[np.linspace(0.05, 0.6, 10), 0.9, np.array([0.3, 0.62, 0.65, 0.7, 0.8, 0.85, 0.95])]
    threshold = 0.64
    fpr, tpr = plots.operating_point(y, p, threshold)
    called = p >= threshold
    assert (fpr, tpr) == (called[y == 0].mean(), called[y == 1].mean())
    assert (round(fpr, 3), round(tpr, 3)) == (0.091, 0.714)  # 1 of 11 men, 5 of 7 women
    confusion = metrics.classification_metrics(y, p, threshold)["confusion_matrix"]
    assert fpr == confusion[0][1] / sum(confusion[0]) and tpr == confusion[1][1] / sum(confusion[1])
    figure = plots.roc(y, p, threshold).figure
    red = [c for c in figure.axes[0].collections if c.get_label().startswith("threshold")]
    np.testing.assert_allclose(red[0].get_offsets()[0], [fpr, tpr])


def _boxes_overlap(a, b) -> bool:
    return not (a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0)


def test_reliability_legend_covers_no_point_and_every_point_shows_its_count():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=400)
    y = (rng.uniform(size=400) < p).astype(int)
    curve = metrics.reliability_curve(y, p)
    plot = plots.reliability(curve, metrics.expected_calibration_error(y, p))
    canvas = FigureCanvasAgg(plot.figure)
    canvas.draw()  # lays the figure out as it is saved
    ax, renderer = plot.figure.axes[0], canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    points = ax.transData.transform(np.c_[curve["mean_predicted"], curve["fraction_female"]])
    assert not any(legend.contains(x, y) for x, y in points)
    labels = [t.get_text() for t in ax.texts]
    assert labels == [str(c) for c in curve["count"] if c]
    assert not any(_boxes_overlap(legend, t.get_window_extent(renderer)) for t in ax.texts)
