"""Training on several sources: the choices of issue 29, made on the validation split only.

Research code, outside the package; ``make results`` runs the shipped recipe it chose::

    python -m experiments.sources inputs --workdir runs/both-person-dlib   # 128-d descriptor vs 256-d pooled
    python -m experiments.sources age --workdir runs/both-person-dlib      # age groups vs regression in years
    python -m experiments.sources unfamiliar --workdir runs/both-person-dlib  # inputs that flag unfamiliar faces
    python -m experiments.sources without --workdir runs/both-person-dlib     # the other sources' val faces, trained with and without UTKFace
    python -m experiments.sources original --workdir runs/full-person-dlib    # the original sources within the last evaluation

Every figure is on the **validation** split of the work folder's manifest (person-disjoint; UTKFace
has no identity labels, so there each image is its own person). Writes
``<workdir>/reports/sources_<step>.json`` and prints the rounded figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from gender_lib import config, metrics, stages
from gender_lib.fileio import write_json


def _val_figures(model: Any, data: Any) -> dict[str, Any]:
    """Accuracy every face answered on val, by source, by ethnicity and band; selective coverage/accuracy."""
    rows = (data.table["split"] == "val").to_numpy()
    table, x = data.table[rows].reset_index(drop=True), data.x[rows]
    y = metrics.labels_from_genders(table["gender"])
    said = model.answer(x)
    correct = (said.p_female >= model.threshold_).astype(int) == y
    ethnicity = metrics.by_ethnicity(correct, said.answered, table, n_boot=200)
    source = {s: float(correct[(table["source"] == s).to_numpy()].mean()) for s in sorted(set(table["source"]))}
    old = (table["age_group"] == "60+").to_numpy()
    return {
        "accuracy": float(correct.mean()),
        "coverage": float(said.answered.mean()),
        "accuracy_answered": float(correct[said.answered].mean()),
        "by_source": source,
        "over_60": float(correct[old].mean()),
        "adults_by_ethnicity": {k.split(",")[0]: round(v["accuracy_all"], 4) for k, v in (ethnicity or {}).get("by_band", {}).items() if "15-59" in k},
        "gap_adults": (ethnicity or {}).get("gap_adults"),
    }


def inputs(work: Path, seed: int = 0) -> dict[str, Any]:
    """The shipped recipe (flip-averaged frozen head) on each head input: dlib's 128-d descriptor
    and the 256-d pooled features it projects (the backbone's ``pooled`` output); validation figures."""
    from gender_lib.modeling import FrozenHead

    out = {}
    cfg = config.DEFAULT.replace(seed=seed, flip_tta=True)
    for output in ("descriptor+mirror", "pooled+mirror"):
        data = stages.inputs(cfg, work, output, progress=False)
        model = FrozenHead(cfg.head, seed=seed).fit(*data.split("train"), *data.split("val"), progress=False)
        stages._fit_answers(cfg, model, data)
        out[output] = _val_figures(model, data)
        print(output, json.dumps(out[output], indent=1), flush=True)
    return out


def age(work: Path, seed: int = 0, head_input: str = "descriptor") -> dict[str, Any]:
    """Age on val, MAE in years against the true ages (UTKFace's years, Adience's range midpoints
    are left out where not whole numbers): the shipped age groups (median group's midpoint), the
    expected years of their distribution (sum of P(group) x midpoint), and regressions in years on
    the same rows (ridge, and an MLP of 128 units), face and mirror image averaged."""
    from sklearn.linear_model import RidgeCV
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from gender_lib.modeling.answers import AGE_GROUPS, GROUP_YEARS, AgeGroups

    cfg = config.DEFAULT.replace(seed=seed, flip_tta=True)
    data = stages.inputs(cfg, work, f"{head_input}+mirror", progress=False)
    split, source = data.table["split"].to_numpy(), data.table["source"].to_numpy()
    years = np.array([float(a) if str(a).isdigit() else np.nan for a in data.table["age"]])
    groups = data.table["age_group"].astype(str).to_numpy()
    views = data.x.reshape(len(data.x), 2, -1)
    train, val = split == "train", split == "val"
    model = AgeGroups(seed=seed).fit(views[train], groups[train])
    p = model.full_proba(model.predict_proba(views[val]))
    middle = np.array([GROUP_YEARS[g] for g in AGE_GROUPS])
    guesses = {"median group": middle[AgeGroups.median(p)], "expected years": p @ middle}
    known = train & np.isfinite(years)
    x, y = views[known].reshape(-1, views.shape[-1]), np.repeat(years[known], 2)
    regressors = {
        "ridge": make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 3, 11))),
        "mlp 128": make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(128,), alpha=1e-3, early_stopping=True, random_state=seed, max_iter=200)),
    }
    for name, regressor in regressors.items():
        guesses[name] = regressor.fit(x, y).predict(views[val].reshape(-1, views.shape[-1])).reshape(-1, 2).mean(axis=1)
    truth = years[val]
    out: dict[str, Any] = {"groups": {k: metrics.age_metrics(groups[val], p, data.table["age"][val], n_boot=0).get(k) for k in ("n", "exact", "one_off")}}
    for name, guess in guesses.items():
        mae = {s: float(np.nanmean(np.abs(guess - truth)[source[val] == s])) for s in sorted(set(source[val])) if np.isfinite(truth[source[val] == s]).any()}
        out[name] = {"mae_years": float(np.nanmean(np.abs(guess - truth))), "by_source": mae}
        print(name, json.dumps(out[name]), flush=True)
    print("groups", json.dumps(out["groups"]))
    return out


def held_out_answers(estimator: Any, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """(margins, correct) of each validation face as answered by a head of ``estimator``'s recipe
    trained without the face's source (on the other sources' train split, stopped and thresholded
    on their val split): what the model's answers look like on a source it has never seen, which
    is what P(correct) must promise off its home data. One head per source (seconds each)."""
    from gender_lib import metrics
    from gender_lib.modeling.answers import margin

    source, split = data.table["source"].astype(str).to_numpy(), data.table["split"].to_numpy()
    y = metrics.labels_from_genders(data.table["gender"])
    val = np.flatnonzero(split == "val")
    margins, correct = np.zeros(len(val)), np.zeros(len(val), bool)
    for held in sorted(set(source[val])):
        train, stop = (split == "train") & (source != held), (split == "val") & (source != held)
        head = type(estimator)(estimator.config, seed=estimator.seed).fit(data.x[train], y[train], data.x[stop], y[stop], progress=False)
        rows = source[val] == held
        p = head.p_female(data.x[val[rows]])
        margins[rows], correct[rows] = margin(p, head.threshold_), (p >= head.threshold_).astype(int) == y[val[rows]]
    return margins, correct


def _distance_features(train: np.ndarray, seed: int, k: int = 32) -> Any:
    """Candidate inputs that flag unfamiliar faces, fitted on the train descriptors (n, d): the
    descriptor's norm, and the distance to the nearest of ``k`` k-means centroids (in units of
    the train faces' median distance)."""
    from sklearn.cluster import KMeans

    centroids = KMeans(k, n_init=3, random_state=seed).fit(train).cluster_centers_

    def nearest(x: np.ndarray) -> np.ndarray:
        return np.sqrt(((x[:, None, :] - centroids[None]) ** 2).sum(-1)).min(axis=1)

    scale = float(np.median(nearest(train)))
    return lambda x: np.stack([np.linalg.norm(x, axis=1), nearest(x) / scale], axis=1)


def unfamiliar(work: Path, seed: int = 0, head_input: str = "descriptor") -> dict[str, Any]:
    """Leave one source out on the **val** splits: for each source, the shipped recipe trained
    without it (P(correct) fitted on held-out-source answers of the other sources, as
    :func:`gender_lib.stages._fit_answers` does), with and without inputs that flag unfamiliar faces
    (:func:`_distance_features`), scored on the held-out source's val faces: answered accuracy at
    the level, coverage, ECE of P(correct)."""
    from gender_lib.modeling import FrozenHead, answers

    cfg = config.DEFAULT.replace(seed=seed, flip_tta=True)
    data = stages.inputs(cfg, work, f"{head_input}+mirror", progress=False)
    table = data.table
    source, split = table["source"].astype(str).to_numpy(), table["split"].to_numpy()
    y = metrics.labels_from_genders(table["gender"])
    out: dict[str, Any] = {}
    for held in sorted(set(source)):
        rest = source != held
        sub = stages.Inputs(table[rest].reset_index(drop=True), data.x[rest], data.record, data.manifest_meta)
        tr, va = (sub.table["split"] == "train").to_numpy(), (sub.table["split"] == "val").to_numpy()
        ho = (source == held) & (split == "val")
        model = FrozenHead(cfg.head, seed=seed).fit(*sub.split("train"), *sub.split("val"), progress=False)
        model.fit_answers(sub.x[tr], sub.table["age_group"][tr], *sub.split("val"), sub.table["group"][va], 0.985)
        margins, correct_va = held_out_answers(model, sub)
        extra = _distance_features(model.descriptors(sub.x[tr]), seed)
        p_ho = model.p_female(data.x[ho])
        correct = (p_ho >= model.threshold_).astype(int) == y[ho]
        results = {}
        for name in ("margin+age", "+norm+distance"):
            base_va = answers.correctness_features(margins, model._age_p(sub.x[va]))
            base_ho = answers.correctness_features(answers.margin(p_ho, model.threshold_), model._age_p(data.x[ho]))
            if name != "margin+age":
                base_va = np.hstack([base_va, extra(model.descriptors(sub.x[va]))])
                base_ho = np.hstack([base_ho, extra(model.descriptors(data.x[ho]))])
            c = answers.Correctness(0.985, seed).fit(base_va, correct_va, sub.table["group"][va])
            q = c.p_correct(base_ho)
            answered = q >= c.min_confidence_
            results[name] = {
                "n": int(ho.sum()),
                "accuracy_all": round(float(correct.mean()), 4),
                "level": round(float(c.min_confidence_), 4),
                "coverage": round(float(answered.mean()), 4),
                "accuracy_answered": round(float(correct[answered].mean()), 4) if answered.any() else None,
                "ece": round(metrics.calibration_error(correct, q), 4),
            }
        out[held] = results
        print(held, json.dumps(results), flush=True)
    return out


def without(work: Path, source: str = "utkface", seed: int = 0) -> dict[str, Any]:
    """Does a second source cost the others anything? The shipped recipe trained with and without
    ``source``, scored on the **val** faces of the other sources (accuracy every face, by source)."""
    from gender_lib.modeling import FrozenHead

    cfg = config.DEFAULT.replace(seed=seed, flip_tta=True)
    data = stages.inputs(cfg, work, "descriptor+mirror", progress=False)
    keep = (data.table["source"] != source).to_numpy()
    others = (data.table["split"] == "val").to_numpy() & keep
    y = metrics.labels_from_genders(data.table["gender"])
    out = {}
    for name, rows in (("with", np.ones(len(keep), bool)), ("without", keep)):
        sub = stages.Inputs(data.table[rows].reset_index(drop=True), data.x[rows], data.record, data.manifest_meta)
        model = FrozenHead(cfg.head, seed=seed).fit(*sub.split("train"), *sub.split("val"), progress=False)
        correct = (model.p_female(data.x[others]) >= model.threshold_).astype(int) == y[others]
        by = {s: round(float(correct[(data.table["source"][others] == s).to_numpy()].mean()), 4) for s in sorted(set(data.table["source"][others]))}
        out[name] = {"n": int(others.sum()), "accuracy": round(float(correct.mean()), 4), "by_source": by}
        print(name, source, json.dumps(out[name]), flush=True)
    return out


def original(work: Path, name: str = "evaluation") -> dict[str, Any]:
    """The original work's sources (adience, imdb, wiki) within an evaluation's test split
    (``<workdir>/reports/<name>.json``): every face answered, and selective, with person-bootstrap
    intervals; for the targets stated on "the original data's person-disjoint test split"."""
    import pandas as pd

    from gender_lib.manifest import read_manifest

    results = json.loads((work / "reports" / f"{name}.json").read_text())
    pred = pd.DataFrame(results["predictions"])
    table = read_manifest(work).table.set_index("path")
    pred["source"], pred["group"] = table.loc[pred["path"], "source"].to_numpy(), table.loc[pred["path"], "group"].to_numpy()
    rows = pred["source"].isin(["adience", "imdb", "wiki"]).to_numpy()
    threshold = results["models"]["mlp head"]["threshold"]
    correct = (pred["p_female"].to_numpy() >= threshold).astype(int) == metrics.labels_from_genders(pred["gender"])
    answered = (pred["label"] != "uncertain").to_numpy()
    figures = metrics.selective_metrics(
        correct[rows], answered[rows], pred["p_correct"].to_numpy(float)[rows], results["selective"]["min_confidence"], pred[rows]
    )
    out = {k: figures[k] for k in ("n", "accuracy_all", "coverage", "accuracy", "intervals_95")}
    print(json.dumps(out, indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("inputs", "age", "unfamiliar", "without", "original"))
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--head-input", default="descriptor")
    args = parser.parse_args(argv)
    steps = {"inputs": lambda: inputs(args.workdir), "age": lambda: age(args.workdir, head_input=args.head_input)}
    steps["unfamiliar"] = lambda: unfamiliar(args.workdir, head_input=args.head_input)
    steps["original"] = lambda: original(args.workdir)
    steps["without"] = lambda: without(args.workdir)
    result = steps[args.step]()
    write_json(args.workdir / "reports" / f"sources_{args.step}.json", json.loads(json.dumps(result, default=str)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
