"""Which model kind to ship: frozen, features and finetune compared on the person-disjoint split.

Research code, outside the package (``make compare``); the retired kinds live in :mod:`experiments.kinds`::

    python -m experiments.comparison --workdir runs/levels-person [--methods NAME ...] [--folds 5]

The work folder must hold a manifest; the level-2 maps are extracted first where missing (cached;
~13 min for the 29k faces on 2 cores). Writes ``<workdir>/reports/methods.json`` and ``methods.md``
(kept after each step of a long run).

Protocol (issue 11): every method trains on the train split; its variant (with or without
mirror-image averaging) and its threshold are chosen on the validation split, and so is the
winner. Only then, in one final pass, are the test predictions computed. 5-fold person-disjoint
cross-validation (the manifest's ``fold`` column; fold k tests, fold k+1 validates, the rest
train) then measures the spread of accuracy for the baseline and the winner.

All methods read the level-2 maps of the work folder (extracted here where missing); the
frozen descriptor is computed from them by dlib's frozen top levels (equal to the descriptor
output to 1e-5, tested), so every method sees exactly the same faces.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gender_lib import config
from gender_lib.config import Config
from gender_lib.errors import ConfigError, GenderLibError

log = logging.getLogger(__name__)

#: name -> (mode, finetune_levels); the rows of the comparison.
METHODS: dict[str, tuple[str, int]] = {
    "frozen descriptor (a)": ("frozen", 1),
    "multi-level features (b)": ("features", 1),
    "fine-tune top level (c)": ("finetune", 1),
    "fine-tune top 2 levels (c)": ("finetune", 2),
}
BASELINE = "frozen descriptor (a)"


@dataclasses.dataclass
class Trained:
    """A trained method: P(female) of each view for any level2 vectors, and what it cost."""

    name: str
    per_view: Any  # (n, 16384) -> (n, 2) probabilities
    seconds: float
    record: dict[str, Any]


def train_method(name: str, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, config: Config, progress: bool = False) -> Trained:
    """Train one row of :data:`METHODS` with ``config``'s head settings and seed (its estimator
    from :data:`experiments.kinds.KINDS`, or the package's frozen head; flip averaging on where it reads both views)."""
    from experiments import kinds
    from gender_lib.modeling import FrozenHead

    mode, levels = METHODS[name]
    started = time.perf_counter()
    head = dataclasses.replace(config.head, flip_tta=True)
    if mode != "frozen":
        extra = {"levels": levels} if mode == "finetune" else {}
        estimator = kinds.KINDS[mode](head, seed=config.seed, **extra)
        estimator.fit(x_train, y_train, x_val, y_val, progress=progress)
        return Trained(name, estimator.p_female_views, time.perf_counter() - started, {"history": estimator.history_})
    # The frozen descriptor, from the same maps by dlib's frozen top (equal to the descriptor output to 1e-5):
    # the head as shipped before flip averaging, trained on the face's descriptor only.
    top = kinds.top_levels()
    estimator = FrozenHead(dataclasses.replace(config.head, flip_tta=False), seed=config.seed)
    estimator.fit(kinds.per_view(top, x_train)[:, 0], y_train, kinds.per_view(top, x_val)[:, 0], y_val)

    def per_view(x: np.ndarray) -> np.ndarray:
        d = kinds.per_view(top, x)
        return np.stack([estimator.p_female(d[:, v]) for v in (0, 1)], axis=1)

    return Trained(name, per_view, time.perf_counter() - started, {"history": estimator.history_})


def variants(p_views: np.ndarray) -> dict[str, np.ndarray]:
    """The two ways to read a method: the face alone, and averaged with its mirror image (d)."""
    return {"face": p_views[:, 0], "flip-averaged": p_views.mean(axis=1)}


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def compare(
    config: Config,
    workdir: str | os.PathLike[str] | None = None,
    methods: Sequence[str] = tuple(METHODS),
    folds: int = 5,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the comparison on a work folder with a manifest (its level-2 maps are extracted first
    where missing); returns the results (also written to ``<workdir>/reports/methods.json`` and ``methods.md``)."""
    from experiments import kinds
    from gender_lib import metrics, stages
    from gender_lib.fileio import write_json, write_text
    from gender_lib.modeling.mlp import choose_threshold

    work = config.workdir() if workdir is None else Path(workdir)
    # the level-2 maps every method reads (cached: a rerun only reads them)
    stages.extract(config, work, progress=progress, backbone=kinds.Level2Backbone(config.backbone.dlib_align))
    data = stages.load_descriptors(config, work, "level2")
    table, x, info, manifest_meta = data.table, data.x, data.record, data.manifest_meta
    if folds:  # before an hour of training, not after
        _check_folds(folds, table["fold"].nunique())
    y = metrics.labels_from_genders(table["gender"])
    split = table["split"].to_numpy()
    tr, va, te = split == "train", split == "val", split == "test"
    trained: dict[str, Trained] = {}
    rows: dict[str, dict[str, Any]] = {}
    for name in methods:
        log.info("training %s", name)
        t = trained[name] = train_method(name, x[tr], y[tr], x[va], y[va], config, progress)
        val = {}
        for variant, p in variants(t.per_view(x[va])).items():
            threshold = choose_threshold(y[va], p)
            val[variant] = {"threshold": threshold, "accuracy": float(((p >= threshold) == y[va]).mean()), "log_loss": _log_loss(y[va], p)}
        chosen = max(val, key=lambda v: (val[v]["accuracy"], -val[v]["log_loss"]))
        rows[name] = {"val": val, "chosen_variant": chosen, "train_seconds": round(t.seconds, 1)}
        log.info("%s: val %s; chosen %s", name, {v: round(r["accuracy"], 4) for v, r in val.items()}, chosen)
    winner = max(rows, key=lambda n: (rows[n]["val"][rows[n]["chosen_variant"]]["accuracy"], -rows[n]["val"][rows[n]["chosen_variant"]]["log_loss"]))
    # Everything is chosen: now, once, the test split.
    for name, row in rows.items():
        p_test = variants(trained[name].per_view(x[te]))
        row["test"] = {
            v: metrics.evaluate(y[te], p_test[v], row["val"][v]["threshold"], table[te], n_boot=config.evaluation.n_boot, seed=config.seed) for v in p_test
        }
        row["images_per_s"] = inference_rate(trained[name], config)
    results: dict[str, Any] = {
        "workdir": str(work),
        "backbone": info["backbone"]["id"],
        "manifest_sha256": manifest_meta.get("manifest_sha256"),
        "counts": {"train": int(tr.sum()), "val": int(va.sum()), "test": int(te.sum())},
        "seed": config.seed,
        "head": config.head.to_dict(),
        "methods": rows,
        "winner": winner,
        "winner_variant": rows[winner]["chosen_variant"],
    }
    del trained
    out = work / "reports"

    def publish() -> None:  # after the comparison and after each cross-validation: a long run keeps what it finished
        write_json(out / "methods.json", results)
        write_text(out / "methods.md", markdown(results))

    publish()
    if folds:
        results["cross_validation"] = {}
        for name in dict.fromkeys([BASELINE, winner]):
            results["cross_validation"][name] = cross_validate(name, rows[name]["chosen_variant"], table, x, y, config, folds, progress)
            publish()
    return results


def _check_folds(folds: int, available: int) -> None:
    if not 3 <= folds <= available:
        raise ConfigError(f"cross-validation needs 3 to {available} folds (one tests, the next validates, the rest train); got {folds}")


def cross_validate(name: str, variant: str, table: Any, x: np.ndarray, y: np.ndarray, config: Config, folds: int = 5, progress: bool = False) -> dict[str, Any]:
    """Accuracy on each person-disjoint fold k (trained on the other folds but k+1, which validates)."""
    from gender_lib.modeling.mlp import choose_threshold

    fold = table["fold"].to_numpy().astype(int)
    available = len(np.unique(fold))
    _check_folds(folds, available)
    accuracies = []
    for k in range(folds):
        te, va = fold == k, fold == (k + 1) % folds
        tr = ~(te | va)
        t = train_method(name, x[tr], y[tr], x[va], y[va], config, progress)
        p_val, p_test = variants(t.per_view(x[va]))[variant], variants(t.per_view(x[te]))[variant]
        threshold = choose_threshold(y[va], p_val)
        accuracies.append(float(((p_test >= threshold) == y[te]).mean()))
        log.info("%s, fold %d: accuracy %.4f", name, k, accuracies[-1])
    return {
        "variant": variant,
        "folds": folds,
        "of_folds": available,
        "accuracy": accuracies,
        "mean": float(np.mean(accuracies)),
        "std": float(np.std(accuracies, ddof=1)),
    }


def inference_rate(trained: Trained, config: Config, n: int = 128) -> float:
    """Images/s from aligned 150x150 chips to P(female) (backbone output plus the method), on this machine.

    The decode, detection and 5-point alignment before it cost the same for every method."""
    from experiments import kinds
    from gender_lib.config import paths
    from gender_lib.images import load_rgb

    net = kinds.Level2Backbone()
    chips = np.stack([net.prepare(load_rgb(p)) for p in sorted(paths().sample.glob("*/*.jpg"))[:n]])
    trained.per_view(net.embed(chips[:8]))  # warm-up: load, trace
    started = time.perf_counter()
    trained.per_view(net.embed(chips))
    return round(len(chips) / (time.perf_counter() - started), 1)


def markdown(results: dict[str, Any]) -> str:
    """The README's comparison table (test split; variant and threshold chosen on validation)."""
    rows = results["methods"]
    first = next(iter(rows.values()))["test"]["face"]["by"]
    ages, sources = list(first["age_group"]), list(first["source"])
    head = ["method", "read as", "val acc", "test acc [95% CI]", "macro F1", "ROC-AUC", "ECE", *ages, *sources, "men", "women", "train s", "img/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        for variant, report in row["test"].items():
            ci = report["intervals_95"]["accuracy"]
            by = report["by"]
            chosen = variant == row["chosen_variant"]
            mark = " **(chosen on val)**" if chosen else ""
            cells = [
                name if variant == "face" else "",
                variant + mark,
                f"{row['val'][variant]['accuracy']:.3f}",
                f"{report['accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]",
                f"{report['macro']['f1']:.3f}",
                f"{report['roc_auc']:.3f}",
                f"{report['ece']:.3f}",
                *(f"{by['age_group'][a]['accuracy']:.3f}" for a in ages),
                *(f"{by['source'][s]['accuracy']:.3f}" for s in sources),
                f"{by['gender']['M']['accuracy']:.3f}",
                f"{by['gender']['F']['accuracy']:.3f}",
                f"{row['train_seconds']:.0f}" if variant == "face" else "",
                f"{row['images_per_s']:.0f}" if variant == "face" else "",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Winner on validation: **{results['winner']}**, {results['winner_variant']}.", ""]
    for name, cv in results.get("cross_validation", {}).items():
        per_fold = ", ".join(f"{a:.3f}" for a in cv["accuracy"])
        k, of = len(cv["accuracy"]), cv.get("of_folds", len(cv["accuracy"]))
        tested = f"{k}-fold" if k == of else f"{k} of {of} folds tested,"
        lines.append(f"- {tested} person-disjoint CV, {name} ({cv['variant']}): accuracy {cv['mean']:.4f} ± {cv['std']:.4f} (folds: {per_fold})")
    return "\n".join(lines) + "\n"


__all__ = ["BASELINE", "METHODS", "compare", "cross_validate", "markdown", "train_method"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="work folder with a manifest and level-2 maps")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="NAME")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds for the baseline and the winner (0: none)")
    parser.add_argument("--seed", type=int, default=config.DEFAULT.seed)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("absl", "tensorflow", "h5py", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    cfg = config.DEFAULT.replace(workdir=args.workdir, seed=args.seed)
    try:
        compare(cfg, methods=args.methods, folds=args.folds, progress=False)
    except GenderLibError as error:  # user input (folder, folds): one line, like the CLI
        print(f"experiments.comparison: error: {error}", file=sys.stderr)
        return 2
    print((cfg.workdir() / "reports" / "methods.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
