"""Whole-crop face box against HOG detection, for datasets of pre-cut aligned faces (issue 21).

Research code, outside the package::

    python -m experiments.crop_box --chip runs/full-person-dlib --crop runs/full-person-crop [--seeds 5]

The two work folders hold the same manifest (same data, protocol and seed), extracted with
``--dlib-align chip`` (dlib's HOG detector finds the face box in each crop; the whole crop where it
finds none) and ``--dlib-align crop`` (the whole crop is the face box, no detection). Both go on to
dlib's 5-point landmarks and chip. The descriptor+mirror output is extracted here where missing
(cached), so the flip-averaged model that ships is compared too.

On the **validation split only** (the test split is not read), paired by image:

* a logistic regression on the standardised descriptor (deterministic);
* the frozen head (``mode frozen``), with and without flip averaging, for ``--seeds`` seeds each:
  accuracy per seed, mean, and the paired difference crop - chip;
* a person-bootstrap 95% interval of that difference (seed 0, 1000 resamples of people);
* the difference by age group and by source, where detection might matter most;
* how often the detector found a face at all, and how far the two descriptors of a face lie apart.

Writes ``<crop workdir>/reports/crop_box.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from gender_lib import config, metrics, modeling, stages
from gender_lib.fileio import write_json


def _fit(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, seed: int, flip: bool) -> np.ndarray:
    """P(female) on val of the frozen head (the config's defaults, this seed), thresholded on val."""
    cfg = config.DEFAULT.replace(seed=seed, flip_tta=flip)
    model = modeling.estimator_for(cfg)
    model.fit(x_train, y_train, x_val, y_val, progress=False)
    return (model.p_female(x_val) >= model.threshold_).astype(int)


def _logistic(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return model.fit(x_train, y_train).predict(x_val)


def _paired_interval(correct_a: np.ndarray, correct_b: np.ndarray, people: np.ndarray, n_boot: int = 1000) -> list[float]:
    """95% person-bootstrap interval of accuracy(b) - accuracy(a) on the same faces."""
    diff = correct_b.astype(float) - correct_a.astype(float)
    return metrics._person_bootstrap(lambda idx: {"d": float(diff[idx].mean())}, len(diff), people, n_boot, seed=0)["d"]


def compare(chip_work: Path, crop_work: Path, seeds: int) -> dict[str, Any]:
    runs: dict[str, dict[str, Any]] = {}
    tables = {}
    for name, work in (("chip", chip_work), ("crop", crop_work)):
        cfg = config.DEFAULT.replace(workdir=str(work))
        for output in ("descriptor", "descriptor+mirror"):
            data = stages.inputs(cfg, Path(cfg.workdir()), output)
            runs.setdefault(name, {})[output] = data
        tables[name] = runs[name]["descriptor"].table
    if not tables["chip"]["sha256"].equals(tables["crop"]["sha256"]) or not tables["chip"]["split"].equals(tables["crop"]["split"]):
        raise SystemExit("the two work folders do not hold the same faces in the same splits: build both from one data root, protocol and seed")
    table = tables["chip"]
    val = (table["split"] == "val").to_numpy()
    people = table["group"][val].to_numpy()
    out: dict[str, Any] = {"val_faces": int(val.sum()), "val_people": int(len(set(people)))}
    correct: dict[str, dict[str, list[np.ndarray]]] = {}
    for name in ("chip", "crop"):
        x_train, y_train = runs[name]["descriptor"].split("train")
        x_val, y_val = runs[name]["descriptor"].split("val")
        correct.setdefault(name, {})["logistic regression"] = [_logistic(x_train, y_train, x_val) == y_val]
        for flip in (False, True):
            data = runs[name]["descriptor+mirror" if flip else "descriptor"]
            xt, yt = data.split("train")
            xv, yv = data.split("val")
            key = "frozen head, flip averaging" if flip else "frozen head"
            correct[name][key] = [_fit(xt, yt, xv, yv, seed, flip) == yv for seed in range(seeds)]
    rows = {}
    for model in correct["chip"]:
        a, b = correct["chip"][model], correct["crop"][model]
        rows[model] = {
            "chip_accuracy": [float(c.mean()) for c in a],
            "crop_accuracy": [float(c.mean()) for c in b],
            "mean_difference": float(np.mean([cb.mean() - ca.mean() for ca, cb in zip(a, b)])),
            "difference_ci95_seed0": _paired_interval(a[0], b[0], people),
        }
        by = {}
        for column in ("age_group", "source"):
            groups = table[column][val].to_numpy()
            by[column] = {}
            for g in sorted(set(groups), key=str):
                rows_g = groups == g
                by[column][str(g)] = {"n": int(rows_g.sum()), "difference": float(np.mean([cb[rows_g].mean() - ca[rows_g].mean() for ca, cb in zip(a, b)]))}
        rows[model]["by"] = by
    out["models"] = rows
    xa, _ = runs["chip"]["descriptor"].split("val")
    xb, _ = runs["crop"]["descriptor"].split("val")
    distance = np.linalg.norm(xa - xb, axis=1)
    out["descriptor_distance_val"] = {
        "identical": float((distance == 0).mean()),
        "median": float(np.median(distance)),
        "p95": float(np.percentile(distance, 95)),
        "max": float(distance.max()),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chip", required=True, help="work folder extracted with --dlib-align chip")
    parser.add_argument("--crop", required=True, help="the same manifest extracted with --dlib-align crop")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    result = compare(Path(args.chip).resolve(), Path(args.crop).resolve(), args.seeds)
    out = Path(args.crop) / "reports" / "crop_box.json"
    write_json(out, result)
    print(f"validation split: {result['val_faces']} faces, {result['val_people']} people")
    for model, row in result["models"].items():
        lo, hi = row["difference_ci95_seed0"]
        print(
            f"{model:30s} chip {np.mean(row['chip_accuracy']):.4f}  crop {np.mean(row['crop_accuracy']):.4f}  "
            f"crop - chip {row['mean_difference']:+.4f} (seed 0: 95% CI {lo:+.4f} to {hi:+.4f})"
        )
        for column, groups in row["by"].items():
            print(f"    by {column}: " + ", ".join(f"{g} {v['difference']:+.3f} (n {v['n']})" for g, v in groups.items()))
    print(f"descriptor distance chip vs crop on val faces: {json.dumps(result['descriptor_distance_val'])}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
