"""Honest evaluation metrics for a gender classifier: intervals, calibration, group breakdowns.

Pure functions on arrays (``y`` 0 = male, 1 = female; ``p`` = P(female)) plus thin writers.
Bootstrap intervals resample *people*, not images, because photos of one person are not
independent (resampling images would give intervals that are too narrow).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gender_lib.errors import GenderLibError
from gender_lib.fileio import write_json, write_text

CLASSES = ("M", "F")  # label 0 = male, 1 = female; P(female) is the score


def classification_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, per-class and macro precision/recall/F1, ROC-AUC, confusion matrix, ECE, Brier."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    y = np.asarray(y).astype(int)
    p = np.asarray(p, np.float64)
    if len(y) == 0:
        raise LabelError("no examples to evaluate")
    pred = (p >= threshold).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=[0, 1], zero_division=0)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "threshold": float(threshold),
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(np.mean([recall[0], recall[1]])),
        "per_class": {
            CLASSES[c]: {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]), "support": int(support[c])} for c in (0, 1)
        },
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "confusion_matrix": confusion_matrix(y, pred, labels=[0, 1]).tolist(),
        "roc_auc": float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else None,
        "brier": float(np.mean((p - y) ** 2)),
        "ece": expected_calibration_error(y, p),
    }
    return out


def reliability_curve(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    """Per equal-width bin of P(female): mean predicted, observed fraction female, count."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    mean_p, observed, count = [], [], []
    for b in range(bins):
        mask = index == b
        count.append(int(mask.sum()))
        mean_p.append(float(p[mask].mean()) if mask.any() else float("nan"))
        observed.append(float(y[mask].mean()) if mask.any() else float("nan"))
    return {"edges": edges.tolist(), "mean_predicted": mean_p, "fraction_female": observed, "count": count}


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE over equal-width bins of P(female): sum of |observed - predicted| weighted by bin size."""
    curve = reliability_curve(y, p, bins)
    n = max(1, sum(curve["count"]))
    return float(sum(c / n * abs(o - m) for c, o, m in zip(curve["count"], curve["fraction_female"], curve["mean_predicted"]) if c))


def bootstrap_intervals(
    y: np.ndarray, p: np.ndarray, threshold: float, groups: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0
) -> dict[str, list[float]]:
    """95% percentile intervals for accuracy, macro F1 and ROC-AUC, resampling people (``groups``)."""
    from sklearn.metrics import f1_score, roc_auc_score

    y, p = np.asarray(y).astype(int), np.asarray(p, np.float64)

    def stats(idx: np.ndarray) -> dict[str, float]:
        yb, pb = y[idx], p[idx]
        pred = (pb >= threshold).astype(int)
        return {
            "accuracy": float((pred == yb).mean()),
            "macro_f1": float(f1_score(yb, pred, average="macro", labels=[0, 1], zero_division=0)),
            "roc_auc": float(roc_auc_score(yb, pb)) if len(np.unique(yb)) == 2 else float("nan"),
        }

    return _person_bootstrap(stats, len(y), groups, n_boot, seed)


def breakdown(y: np.ndarray, p: np.ndarray, threshold: float, by: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Accuracy (and recall per class, AUC where both classes occur) for each value of ``by``."""
    from sklearn.metrics import roc_auc_score

    y, p, by = np.asarray(y).astype(int), np.asarray(p, np.float64), np.asarray(by).astype(str)
    out = {}
    for value in sorted(set(by), key=_natural):
        mask = by == value
        yv, pv = y[mask], p[mask]
        pred = pv >= threshold
        row: dict[str, Any] = {"n": int(mask.sum()), "accuracy": float((pred == yv).mean())}
        for c in (0, 1):
            if (yv == c).any():
                row[f"recall_{CLASSES[c]}"] = float((pred[yv == c] == c).mean())
        row["roc_auc"] = float(roc_auc_score(yv, pv)) if len(np.unique(yv)) == 2 else None
        out[value] = row
    return out


def _natural(label: str) -> tuple[float, str]:
    head = label.split("-")[0].rstrip("+")
    return (float(head), label) if head.replace(".", "", 1).isdigit() else (1e9, label)


def evaluate(y: np.ndarray, p: np.ndarray, threshold: float, table: Any | None = None, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Everything the report shows, for one set of predictions."""
    report = classification_metrics(y, p, threshold)
    groups = table["group"].tolist() if table is not None and "group" in table else None
    report["intervals_95"] = bootstrap_intervals(y, p, threshold, groups, n_boot=n_boot, seed=seed)
    report["reliability"] = reliability_curve(y, p)
    if table is not None:
        report["by"] = {column: breakdown(y, p, threshold, table[column].tolist()) for column in ("gender", "age_group", "source") if column in table}
        report["people"] = int(table["group"].nunique()) if "group" in table else None
    return report


def summary_lines(report: dict[str, Any], name: str = "head") -> list[str]:
    """The rounded headline numbers, as printed beside the plots."""
    ci = report.get("intervals_95", {})
    return [
        f"{name}: n={report['n']}, threshold={report['threshold']:.3f}",
        f"  accuracy {_ci(report['accuracy'], ci, 'accuracy')}, macro F1 {_ci(report['macro']['f1'], ci, 'macro_f1')}, "
        f"ROC-AUC {_ci(report['roc_auc'], ci, 'roc_auc')}",
        f"  F1 male {report['per_class']['M']['f1']:.3f}, F1 female {report['per_class']['F']['f1']:.3f}; ECE {report['ece']:.3f}; Brier {report['brier']:.3f}",
    ]


def markdown(results: dict[str, Any]) -> str:
    """A Markdown report of one evaluation run (``results`` as written by :func:`write_reports`)."""
    lines = [f"# Evaluation: {results.get('title', 'gender head')}", ""]
    meta = results.get("meta", {})
    if meta:
        lines += [f"- {k}: `{v}`" for k, v in meta.items()] + [""]
    lines += ["| model | n | accuracy (95% CI) | macro F1 (95% CI) | ROC-AUC | ECE |", "|---|---|---|---|---|---|"]
    for name, report in results["models"].items():
        ci = report.get("intervals_95", {})
        auc = f"{report['roc_auc']:.3f}" if report["roc_auc"] is not None else "n/a"
        accuracy, f1 = _with_interval(ci, "accuracy", report["accuracy"]), _with_interval(ci, "macro_f1", report["macro"]["f1"])
        lines.append(f"| {name} | {report['n']} | {accuracy} | {f1} | {auc} | {report['ece']:.3f} |")
    head = next(iter(results["models"].values()))
    for column, rows in head.get("by", {}).items():
        lines += ["", f"## By {column.replace('_', ' ')}", "", "| value | n | accuracy | recall M | recall F | ROC-AUC |", "|---|---|---|---|---|---|"]
        for value, row in rows.items():
            cells = " | ".join(_cell(row, k, "n/a") for k in ("accuracy", "recall_M", "recall_F", "roc_auc"))
            lines.append(f"| {value} | {row['n']} | {cells} |")
    if results.get("selective"):
        sel = results["selective"]
        lines += ["", "## Every face answered vs selective answers", ""] + [f"- {line.strip()}" for line in selective_lines(sel)]
        for column, rows in sel.get("by", {}).items():
            lines += ["", f"### Selective, by {column.replace('_', ' ')}", "", "| value | n | coverage | accuracy on answered |", "|---|---|---|---|"]
            lines += [f"| {v} | {r['n']} | {r['coverage']:.3f} | {_rate(r['accuracy'], 3)} |" for v, r in rows.items()]
    if results.get("ethnicity"):
        lines += ["", "## By ethnicity and age band (every face answered; selective)", ""]
        lines += ["| group | n | accuracy (95% CI) | coverage | accuracy on answered |", "|---|---|---|---|---|"]
        report = results["ethnicity"]
        for name, r in {**report["by"], **report["by_band"]}.items():
            accuracy = _with_interval(r["intervals_95"], "accuracy_all", r["accuracy_all"])
            lines.append(f"| {name} | {r['n']} | {accuracy} | {r['coverage']:.3f} | {_rate(r['accuracy'], 3)} |")
        if report.get("gap_adults"):
            gap = report["gap_adults"]
            lines += ["", f"Largest gap among adults 15-59: {gap['points']:.1f} points ({gap['best']} vs {gap['worst']})."]
    if results.get("age"):
        lines += ["", "## Age group", ""] + [f"- {line}" for line in age_lines(results["age"])]
    return "\n".join(lines) + "\n"


def _with_interval(ci: dict[str, list[float]], key: str, value: float) -> str:
    return f"{value:.3f}" + (f" ({ci[key][0]:.3f}-{ci[key][1]:.3f})" if key in ci else "")


def _cell(row: dict[str, Any], key: str, missing: str) -> str:
    return f"{row[key]:.3f}" if row.get(key) is not None else missing


def write_reports(results: dict[str, Any], out_dir: str | os.PathLike[str], name: str = "evaluation") -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` under ``out_dir`` atomically."""
    out_dir = Path(out_dir)
    json_path = write_json(out_dir / f"{name}.json", results)
    md_path = write_text(out_dir / f"{name}.md", markdown(json.loads(json_path.read_text())))
    return json_path, md_path


def breakdown_text(report: dict[str, Any]) -> str:
    """The group breakdowns as aligned text tables (rounded to 3 decimals)."""
    blocks = []
    for column, rows in report.get("by", {}).items():
        lines = [f"by {column.replace('_', ' ')}:", f"  {'value':<10}{'n':>6}{'accuracy':>10}{'recall M':>10}{'recall F':>10}"]
        for value, row in rows.items():
            cells = "".join(f"{_cell(row, k, '-'):>10}" for k in ("accuracy", "recall_M", "recall_F"))
            lines.append(f"  {value:<10}{row['n']:>6}{cells}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def prediction_arrays(results: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(y, P(female)) of the head's per-image predictions stored in ``results``."""
    predictions = results["predictions"]
    return labels_from_genders(predictions["gender"]), np.asarray(predictions["p_female"], np.float64)


class LabelError(GenderLibError, ValueError):
    """Labels other than 'M'/'F'."""


def labels_from_genders(genders: Sequence[str]) -> np.ndarray:
    """'M'/'F' -> 0/1 (int); anything else is an error naming it."""
    genders = np.asarray(genders).astype(str)
    bad = sorted(str(g) for g in set(genders) - set(CLASSES))
    if bad:
        raise LabelError(f"gender labels must be 'M' or 'F', found {bad[:5]}")
    return (genders == "F").astype(np.int32)


# --------------------------------------------------------------------------- selective answers and age groups


def _ci(value: float | None, ci: dict[str, list[float]], key: str) -> str:
    """``value [low, high]`` to 3 decimals (its 95% interval where ``ci`` has one; n/a for None or NaN)."""
    if value is None or value != value:
        return "n/a"
    return f"{value:.3f}" + (f" [{ci[key][0]:.3f}, {ci[key][1]:.3f}]" if key in ci else "")


def _person_bootstrap(statistics: Any, n: int, groups: Sequence[str] | None, n_boot: int, seed: int, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile intervals of ``statistics(index) -> {name: value}`` over resampled people (each row its own without ``groups``)."""
    groups = np.asarray(groups).astype(str) if groups is not None else np.arange(n)
    unique, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(unique), len(unique))])
        for key, value in statistics(idx).items():
            if value == value:  # not NaN
                draws.setdefault(key, []).append(float(value))
    tail = (1 - level) / 2 * 100
    return {k: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] for k, v in draws.items()}


def calibration_error(correct: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE of a probability of an event (here P(correct)) over equal-width bins."""
    return expected_calibration_error(np.asarray(correct, np.float64), p, bins)


def selective_metrics(
    correct: np.ndarray, answered: np.ndarray, p_correct: np.ndarray, level: float, table: Any | None = None, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Coverage and accuracy on the answered faces (95% person-bootstrap intervals), ECE of
    P(correct), the risk-coverage curve, and both by gender, age group and source.

    ``correct``: the forced label is right (bool, n); ``answered``: P(correct) >= ``level``."""
    from gender_lib.modeling.answers import risk_coverage

    c, a, q = np.asarray(correct, bool), np.asarray(answered, bool), np.asarray(p_correct, np.float64)

    def stats(idx: np.ndarray) -> dict[str, float]:
        answered_here = a[idx]
        return {"coverage": float(answered_here.mean()), "accuracy": float(c[idx][answered_here].mean()) if answered_here.any() else float("nan")}

    out: dict[str, Any] = {
        "min_confidence": float(level),
        "n": int(len(c)),
        "answered": int(a.sum()),
        **stats(np.arange(len(c))),
        "accuracy_all": float(c.mean()),
        "ece_p_correct": calibration_error(c, q) if np.isfinite(q).all() else None,
        "risk_coverage": risk_coverage(q, c) if np.isfinite(q).all() else None,
    }
    groups = table["group"].tolist() if table is not None and "group" in table else None
    out["intervals_95"] = _person_bootstrap(stats, len(c), groups, n_boot, seed)
    if table is not None:
        out["by"] = {}
        for column in ("gender", "age_group", "source"):
            if column in table:
                values = np.asarray(table[column]).astype(str)
                out["by"][column] = {v: {"n": int((values == v).sum()), **stats(np.flatnonzero(values == v))} for v in sorted(set(values), key=_natural)}
    return out


def age_metrics(
    true: Sequence[str], p: np.ndarray, ages: Sequence[Any] | None = None, groups: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Exact and one-group-off accuracy (95% person-bootstrap intervals), under-15 recall and
    precision, mean absolute error in years (group midpoints of :data:`GROUP_YEARS` against true
    ages, where they are whole numbers) and the confusion matrix, for the faces with a known group.

    ``true``: age-group names; ``p``: (n, 8) over :data:`~gender_lib.modeling.answers.AGE_GROUPS`."""
    from gender_lib.modeling.answers import AGE_GROUPS, CHILD_GROUPS, GROUP_YEARS, AgeGroups

    true = np.asarray(true).astype(str)
    known = np.isin(true, AGE_GROUPS)
    if not known.any():
        return {"n": 0}
    t = np.array([AGE_GROUPS.index(g) for g in true[known]])
    pred = AgeGroups.median(np.asarray(p)[known])
    child, child_pred = t < len(CHILD_GROUPS), pred < len(CHILD_GROUPS)

    def stats(idx: np.ndarray) -> dict[str, float]:
        return {"exact": float((pred[idx] == t[idx]).mean()), "one_off": float((np.abs(pred[idx] - t[idx]) <= 1).mean())}

    out: dict[str, Any] = {
        "n": int(known.sum()),
        "groups": list(AGE_GROUPS),
        **stats(np.arange(len(t))),
        "child_recall": float(child_pred[child].mean()) if child.any() else None,
        "child_precision": float(child[child_pred].mean()) if child_pred.any() else None,
        "confusion_matrix": np.array([[int(((t == i) & (pred == j)).sum()) for j in range(len(AGE_GROUPS))] for i in range(len(AGE_GROUPS))]).tolist(),
        "mae_years": None,
    }
    if ages is not None:
        years = np.array([float(a) if str(a).strip().isdigit() else np.nan for a in np.asarray(ages)[known]])
        if np.isfinite(years).any():
            guess = np.array([GROUP_YEARS[AGE_GROUPS[i]] for i in pred])
            out["mae_years"] = float(np.nanmean(np.abs(guess - years)))
    out["intervals_95"] = _person_bootstrap(stats, len(t), None if groups is None else np.asarray(groups)[known], n_boot, seed)
    return out


#: Age bands of the per-ethnicity report: children, adults, the elderly (by age group).
AGE_BANDS = {"0-2": "under 15", "3-7": "under 15", "8-14": "under 15", "60+": "60+"}
#: Groups smaller than this are listed but left out of the largest gap (their accuracy is too noisy).
GAP_MIN_FACES = 100


def by_ethnicity(correct: np.ndarray, answered: np.ndarray, table: Any, n_boot: int = 1000, seed: int = 0) -> dict[str, Any] | None:
    """Accuracy with every face answered and selective (coverage, accuracy on answered), with 95%
    person-bootstrap intervals, per ethnicity and per ethnicity and age band (:data:`AGE_BANDS`;
    others 15-59), for the faces whose source labels ethnicity (UTKFace's race field); and the
    largest gap in accuracy between ethnicities among adults 15-59 (groups of at least
    :data:`GAP_MIN_FACES`). None where no face has an ethnicity."""
    if table is None or "ethnicity" not in table:
        return None
    ethnicity = np.asarray(table["ethnicity"]).astype(str)
    labelled = ethnicity != ""
    if not labelled.any():
        return None
    c, a = np.asarray(correct, bool), np.asarray(answered, bool)
    band = np.array([AGE_BANDS.get(g, "15-59") if g != "unknown" else "unknown" for g in np.asarray(table["age_group"]).astype(str)])
    people = np.asarray(table["group"]).astype(str) if "group" in table else np.arange(len(c)).astype(str)

    def stats(idx: np.ndarray) -> dict[str, float]:
        answered_here = a[idx]
        return {
            "accuracy_all": float(c[idx].mean()),
            "coverage": float(answered_here.mean()),
            "accuracy": float(c[idx][answered_here].mean()) if answered_here.any() else float("nan"),
        }

    def row(mask: np.ndarray) -> dict[str, Any]:
        idx = np.flatnonzero(mask)
        interval = _person_bootstrap(lambda i: stats(idx[i]), len(idx), people[idx], n_boot, seed)
        return {"n": len(idx), **stats(idx), "intervals_95": interval}

    names = sorted(set(ethnicity[labelled]))
    rows = {name: row(ethnicity == name) for name in names}
    bands = {
        f"{name}, {b}": row((ethnicity == name) & (band == b))
        for name in names
        for b in ("under 15", "15-59", "60+")
        if ((ethnicity == name) & (band == b)).any()
    }
    adults = {name: r for name in names if (r := bands.get(f"{name}, 15-59")) and r["n"] >= GAP_MIN_FACES}
    gap = None
    if len(adults) >= 2:
        best, worst = max(adults, key=lambda k: adults[k]["accuracy_all"]), min(adults, key=lambda k: adults[k]["accuracy_all"])
        gap = {"best": best, "worst": worst, "points": 100 * (adults[best]["accuracy_all"] - adults[worst]["accuracy_all"])}
    return {"n": int(labelled.sum()), "by": rows, "by_band": bands, "gap_adults": gap}


def ethnicity_lines(report: dict[str, Any] | None) -> list[str]:
    """The per-ethnicity figures of :func:`by_ethnicity`, rounded (adults 15-59, then everyone)."""
    if not report:
        return []
    lines = [f"by ethnicity (n={report['n']}; every face answered, then selective coverage/accuracy):"]
    for name, r in report["by"].items():
        adult = report["by_band"].get(f"{name}, 15-59")
        ci = (adult or r)["intervals_95"].get("accuracy_all", [float("nan")] * 2)
        adults = f"adults 15-59 {adult['accuracy_all']:.3f} ({ci[0]:.3f}-{ci[1]:.3f}, n={adult['n']})" if adult else "adults 15-59: none"
        old = report["by_band"].get(f"{name}, 60+")
        elderly = f", 60+ {old['accuracy_all']:.3f} (n={old['n']})" if old else ""
        lines.append(f"  {name:<7} all {r['accuracy_all']:.3f} (n={r['n']}); {adults}{elderly}; selective {r['coverage']:.2f}/{_rate(r['accuracy'], 3)}")
    gap = report.get("gap_adults")
    if gap:
        lines.append(f"  largest gap, adults 15-59: {gap['points']:.1f} points ({gap['best']} vs {gap['worst']})")
    return lines


def _rate(value: float, digits: int) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN: no face answered there


def selective_lines(report: dict[str, Any]) -> list[str]:
    """Both protocols side by side, rounded (what evaluate prints)."""
    ci = report.get("intervals_95", {})
    ece = report.get("ece_p_correct")
    lines = [
        f"every face answered: accuracy {report['accuracy_all']:.3f} (n={report['n']})",
        f"selective (P(correct) >= {report['min_confidence']:.3f}): coverage {_ci(report['coverage'], ci, 'coverage')}, "
        f"accuracy on answered {_ci(report['accuracy'], ci, 'accuracy')}" + (f"; ECE of P(correct) {ece:.3f}" if ece is not None else ""),
    ]
    by_age = report.get("by", {}).get("age_group", {})
    if by_age:
        cells = ", ".join(f"{g} {r['coverage']:.2f}/{_rate(r['accuracy'], 2)}" for g, r in by_age.items())
        lines.append(f"  by age group (coverage/accuracy): {cells}")
    return lines


def age_lines(report: dict[str, Any]) -> list[str]:
    """The age-group metrics, rounded."""
    if not report.get("n"):
        return ["age group: no faces with a known age group"]
    ci = report.get("intervals_95", {})
    child = (
        f"under 15 recall {report['child_recall']:.3f}, precision {report['child_precision']:.3f}"
        if report.get("child_recall") is not None and report.get("child_precision") is not None
        else "under 15: n/a"
    )
    mae = f"; MAE {report['mae_years']:.1f} years" if report.get("mae_years") is not None else ""
    lines = [f"age group (n={report['n']}): exact {_ci(report['exact'], ci, 'exact')}, one-off {_ci(report['one_off'], ci, 'one_off')}; {child}{mae}"]
    for source, r in report.get("by_source", {}).items():
        if r.get("n"):
            years = f", MAE {r['mae_years']:.1f} years" if r.get("mae_years") is not None else ""
            lines.append(f"  {source}: n={r['n']}, exact {r['exact']:.3f}, one-off {r['one_off']:.3f}{years}")
    return lines


def face_found(box: Sequence[float], face: Sequence[float]) -> bool:
    """Whether a detected ``box`` finds a hand-marked ``face`` (both left, top, right, bottom): its
    centre lies inside the face's box and their widths are within a factor of 2.5 (the rule of
    docs/performance.md's detection table, after FDDB's practice of matching by overlap, made
    lenient to the two boxes' different conventions)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    ratio = (box[2] - box[0]) / max(face[2] - face[0], 1e-9)
    return face[0] <= cx <= face[2] and face[1] <= cy <= face[3] and 1 / 2.5 <= ratio <= 2.5


def detection_counts(faces: Sequence[Sequence[float]], boxes: Sequence[Sequence[float]], small: float = 60) -> dict[str, int]:
    """One photo's hand-marked ``faces`` against the detected ``boxes``: faces found, faces narrower
    than ``small`` px and how many of those were found, and boxes that find no face (unmatched)."""
    used = np.zeros(len(boxes), bool)
    out = {"faces": len(faces), "found": 0, "small": 0, "small_found": 0}
    for face in faces:
        hit = np.array([face_found(b, face) for b in boxes], bool)
        narrow = face[2] - face[0] < small
        out["small"] += int(narrow)
        if hit.any():
            out["found"] += 1
            out["small_found"] += int(narrow)
            used |= hit
    return {**out, "unmatched": int((~used).sum())}
