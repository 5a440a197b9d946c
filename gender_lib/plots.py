"""Figures: training curves, confusion matrix, ROC, reliability diagram, the 30-face grid, detections.

Every function returns a :class:`Plot`: a matplotlib figure (made without pyplot, so nothing
depends on a GUI backend) that a notebook displays as a PNG image (``_repr_png_``) with a
short, stable text form beside it (what nbval compares). ``Plot.save`` writes the PNG atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gender_lib.fileio import atomic_write, display_path
from gender_lib.metrics import CLASSES


class Plot:
    """A figure that shows itself as an image in notebooks (and as one stable line of text elsewhere)."""

    def __init__(self, figure: Any, title: str, dpi: int = 110):
        self.figure, self.title, self.dpi = figure, title, dpi

    def png(self) -> bytes:
        buffer = io.BytesIO()
        self.figure.savefig(buffer, dpi=self.dpi, bbox_inches="tight", format="png")
        return buffer.getvalue()

    def _repr_png_(self) -> bytes:
        return self.png()

    def __repr__(self) -> str:
        return f"<figure: {self.title}>"

    def save(self, path: str | os.PathLike[str]) -> Plot:
        """Write the PNG to ``path`` atomically; returns itself so a notebook cell can end with it."""
        atomic_write(Path(path), lambda tmp: self.figure.savefig(tmp, dpi=self.dpi, bbox_inches="tight", format="png"))
        return self


def training_curves(history: dict[str, list[float]]) -> Any:
    """Accuracy and loss per epoch for train and validation, best epoch marked."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.6))
    axes = figure.subplots(1, 2)
    epochs = np.arange(1, len(history["loss"]) + 1)
    best = int(history.get("best_epoch", [np.argmin(history["val_loss"]) + 1])[0])
    for ax, key, title in ((axes[0], "accuracy", "accuracy"), (axes[1], "loss", "binary cross-entropy")):
        ax.plot(epochs, history[key], label="train")
        ax.plot(epochs, history[f"val_{key}"], label="validation")
        ax.axvline(best, color="grey", linestyle=":", label=f"best epoch {best}")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend()
    figure.tight_layout()
    return Plot(figure, "training curves")


def confusion(matrix: Sequence[Sequence[int]], title: str = "test split") -> Any:
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    figure = Figure(figsize=(3.8, 3.4))
    ax = figure.subplots()
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, f"{value}\n{value / max(1, matrix[i].sum()):.1%}", ha="center", va="center", color="white" if value > matrix.max() / 2 else "black")
    ax.set_xticks([0, 1], [f"pred {c}" for c in CLASSES])
    ax.set_yticks([0, 1], [f"true {c}" for c in CLASSES])
    ax.set_title(f"confusion matrix ({title})")
    figure.tight_layout()
    return Plot(figure, f"confusion matrix ({title})")


def age_confusion(report: dict[str, Any], title: str = "test split") -> Plot:
    """The age-group confusion matrix of :func:`gender_lib.metrics.age_metrics`, each row as shares
    of its true group (the diagonal is exact, its neighbours one group off)."""
    from matplotlib.figure import Figure

    matrix = np.asarray(report["confusion_matrix"], np.float64)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    groups = report["groups"]
    figure = Figure(figsize=(5.6, 4.8))
    ax = figure.subplots()
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(shares):
        if matrix[i, j]:
            ax.text(j, i, f"{value:.0%}", ha="center", va="center", fontsize=8, color="white" if value > 0.5 else "black")
    ax.set_xticks(range(len(groups)), groups, rotation=45)
    ax.set_yticks(range(len(groups)), groups)
    ax.set_xlabel("predicted age group")
    ax.set_ylabel("true age group")
    ax.set_title(f"age groups ({title}): exact {report['exact']:.3f}, one-off {report['one_off']:.3f}", fontsize=10)
    figure.tight_layout()
    return Plot(figure, f"age-group confusion matrix ({title})")


def risk_coverage(report: dict[str, Any]) -> Plot:
    """Accuracy on the answered faces against coverage (the most confident answered first), with
    the operating point of the confidence level (a :func:`gender_lib.metrics.selective_metrics` report)."""
    from matplotlib.figure import Figure

    curve = report["risk_coverage"]
    figure = Figure(figsize=(5, 3.6))
    ax = figure.subplots()
    ax.plot(curve["coverage"], curve["accuracy"], label="answering the surest first")
    ax.axhline(report["accuracy_all"], color="grey", linestyle=":", label=f"every face answered ({report['accuracy_all']:.3f})")
    if report["answered"]:
        ax.scatter([report["coverage"]], [report["accuracy"]], color="red", zorder=3, label=f"P(correct) >= {report['min_confidence']:.2f}")
    ax.set_xlabel("coverage (share of faces answered)")
    ax.set_ylabel("accuracy on answered faces")
    ax.set_ylim(max(0.0, min(curve["accuracy"]) - 0.02), 1.005)
    ax.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    return Plot(figure, "risk-coverage curve")


def roc(y: np.ndarray, p: np.ndarray, threshold: float | None = None) -> Any:
    """ROC curve of P(female), with the threshold's operating point (:func:`operating_point`) in red."""
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    figure = Figure(figsize=(3.8, 3.6))
    ax = figure.subplots()
    ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(y, p):.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    if threshold is not None:
        point = operating_point(y, p, threshold)
        ax.scatter([point[0]], [point[1]], color="red", zorder=3, label=f"threshold {threshold:.2f}")
    ax.set_xlabel("false female rate (men called women)")
    ax.set_ylabel("true female rate")
    ax.set_title("ROC (test split)")
    ax.legend(loc="lower right")
    figure.tight_layout()
    return Plot(figure, "ROC curve")


def operating_point(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float]:
    """(false female rate, true female rate) of the rule ``P(female) >= threshold``: the rule itself,
    not the nearest threshold ``roc_curve`` kept, which can be far off on a small test split."""
    y, called_female = np.asarray(y).astype(int), np.asarray(p, np.float64) >= threshold
    return float(called_female[y == 0].mean()), float(called_female[y == 1].mean())


def reliability(curve: dict[str, list[float]], ece: float | None = None) -> Any:
    """Observed fraction female against mean P(female) per bin, each point labelled with its face count.

    The legend sits outside the axes so that it covers no point."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.6, 3.6))
    ax = figure.subplots()
    mean_p, observed, count = (np.asarray(curve[k], float) for k in ("mean_predicted", "fraction_female", "count"))
    ok = count > 0
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    ax.plot(mean_p[ok], observed[ok], marker="o", label="head" + (f" (ECE {ece:.3f})" if ece is not None else ""))
    for x, y, n in zip(mean_p[ok], observed[ok], count[ok]):
        ax.annotate(f"{int(n)}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7, color="tab:blue")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("predicted P(female)")
    ax.set_ylabel("observed fraction female")
    ax.set_title("reliability (test split; faces per bin)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=8, frameon=False)
    figure.tight_layout()
    return Plot(figure, "reliability diagram")


def face_grid(
    images: Sequence[np.ndarray],
    p_female: Sequence[float],
    true: Sequence[str],
    threshold: float = 0.5,
    columns: int = 6,
    labels: Sequence[str] | None = None,
    ages: Sequence[str] | None = None,
) -> Any:
    """Faces titled with the label and P(female) (and the age group; :func:`gender_lib.predict.caption`);
    wrong answers framed in red with the true label, uncertain ones (``labels``) titled ``?`` in grey."""
    from matplotlib.figure import Figure

    from gender_lib.predict import caption

    rows = int(np.ceil(len(images) / columns))
    figure = Figure(figsize=(columns * 1.7, rows * 1.95))
    axes = np.atleast_1d(figure.subplots(rows, columns)).reshape(-1)
    for ax in axes:
        ax.axis("off")
    labels = labels if labels is not None else ["F" if p >= threshold else "M" for p in p_female]
    ages = ages if ages is not None else [""] * len(images)
    for ax, image, p, label, predicted, age in zip(axes, images, p_female, true, labels, ages):
        unsure = predicted not in ("F", "M")
        wrong = not unsure and predicted != label
        ax.imshow(image)
        title = caption(predicted, p, age) + (f"\n(true {label})" if wrong else "")
        ax.set_title(title, fontsize=8, color="red" if wrong else "grey" if unsure else "black")
        if wrong:
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color("red")
                spine.set_linewidth(3)
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
    figure.tight_layout()
    return Plot(figure, f"{len(images)} faces", dpi=72)


def prediction_grid(results: dict[str, Any], n: int = 30, seed: int = 0, columns: int = 6) -> tuple[Plot, list[str]]:
    """The 30-face grid from an evaluation's per-image predictions: a seeded sample of test faces.

    Returns (plot, one text line per face) so notebooks can print what the picture shows.
    """
    from gender_lib.images import load_rgb
    from gender_lib.predict import caption

    predictions = results["predictions"]
    root = Path(results.get("root") or ".")
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(predictions["path"]), size=min(n, len(predictions["path"])), replace=False))
    threshold = results["models"]["mlp head"]["threshold"]
    images = [load_rgb(root / predictions["path"][i]) for i in picks]
    p = [predictions["p_female"][i] for i in picks]
    true = [predictions["gender"][i] for i in picks]
    said = [predictions["label"][i] for i in picks] if "label" in predictions else ["F" if q >= threshold else "M" for q in p]
    ages = [predictions["age_group"][i] for i in picks] if "age_group" in predictions else [""] * len(picks)
    lines = []
    for i, probability, label, answer, age in zip(picks, p, true, said, ages):
        wrong = "  WRONG" if answer in ("F", "M") and answer != label else ""
        name = display_path(Path(predictions["path"][i]).name)[:40]
        lines.append(f"{name:<40} {caption(answer, probability, age):<22} true {label}{wrong}")
    return face_grid(images, p, true, threshold, columns, said, ages), lines


def detections(rgb: np.ndarray, faces: Sequence[Any], title: str = "") -> Plot:
    """The image with each face's box, label and P(female) (faces: :class:`gender_lib.predict.Face`)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    height, width = rgb.shape[:2]
    figure = Figure(figsize=(5, 5 * height / max(width, 1)))
    ax = figure.subplots()
    ax.imshow(rgb)
    for face in faces:
        left, top, right, bottom = face.box
        color = {"F": "#d6336c", "M": "#1c7ed6"}.get(face.label, "#868e96")  # grey: uncertain
        ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, edgecolor=color, linewidth=2.5))
        ax.text(
            left,
            max(0, top - 4),
            face.caption(),
            color="white",
            fontsize=11,
            va="bottom",
            bbox={"facecolor": color, "edgecolor": "none", "pad": 2},
        )
    ax.set_title(title or ("no face found" if not faces else ""), fontsize=10)
    ax.axis("off")
    figure.tight_layout()
    return Plot(figure, f"{title or 'image'}: {len(faces)} face(s)", dpi=90)
