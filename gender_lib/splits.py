"""Person-disjoint splits: pure functions on tables and arrays (no files, no images).

:func:`assign_splits` gives every image a ``split`` (train/val/test, grouped by person and
stratified) and a ``fold``: the dataset's official fold where every image has one (Adience),
otherwise a computed k-fold index, grouped the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from gender_lib.errors import ConfigError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FOLD_SOURCES = ("auto", "official", "computed")


def grouped_stratified_assign(labels: Sequence[str], groups: Sequence[str], fractions: Sequence[float], seed: int) -> np.ndarray:
    """Assign every item to one of ``len(fractions)`` parts so no group spans two parts.

    Greedy and seeded: groups are shuffled, then taken largest first, each into the part
    where it most reduces the squared distance between the per-label counts and their
    targets; exact ties (common with many small strata) go to the part furthest below its total
    size (breaking them always the same way left the sample's test split at 26 of 300 images).
    Gives parts close to ``fractions`` and to the overall label balance.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    fractions = np.asarray(fractions, float) / np.sum(fractions)
    classes, label_idx = np.unique(labels, return_inverse=True)
    group_ids, group_idx = np.unique(groups, return_inverse=True)
    counts = np.zeros((len(group_ids), len(classes)))
    np.add.at(counts, (group_idx, label_idx), 1)
    targets = fractions[:, None] * counts.sum(axis=0)[None, :]
    order = np.random.default_rng(seed).permutation(len(group_ids))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    filled = np.zeros_like(targets)
    total_targets, sizes = targets.sum(axis=1), counts.sum(axis=1)
    part_of_group = np.empty(len(group_ids), int)
    for g in order:
        cost = ((filled + counts[g] - targets) ** 2 - (filled - targets) ** 2).sum(axis=1)
        totals = filled.sum(axis=1)
        tie_break = (totals + sizes[g] - total_targets) ** 2 - (totals - total_targets) ** 2
        cost = cost + 1e-9 * tie_break / (1.0 + np.abs(tie_break).max())
        part = int(np.argmin(cost))
        part_of_group[g] = part
        filled[part] += counts[g]
    return part_of_group[group_idx]


def has_official_folds(table: pd.DataFrame) -> bool:
    """Whether every row carries an official fold (a ``fold`` column with no blanks or negatives)."""
    if "fold" not in table or len(table) == 0:
        return False
    folds = pd.to_numeric(table["fold"], errors="coerce")
    return bool(folds.notna().all() and (folds >= 0).all())


def person_disjoint_folds(folds: Sequence[int], groups: Sequence[str]) -> tuple[np.ndarray, int]:
    """Move every group that spans several folds into the fold holding most of its images.

    Official folds are disjoint by their own identity labels; people merged through a shared
    image can still span two. Returns (folds, number of images moved); ties go to the lower fold.
    """
    frame = pd.DataFrame({"fold": np.asarray(folds, int), "group": np.asarray(groups)})
    counts = frame.groupby(["group", "fold"]).size().reset_index(name="n")
    counts = counts.sort_values(["group", "n", "fold"], ascending=[True, False, True])
    majority = counts.drop_duplicates("group").set_index("group")["fold"]
    fixed = frame["group"].map(majority).to_numpy(int)
    return fixed, int((fixed != frame["fold"].to_numpy()).sum())


def assign_splits(
    table: pd.DataFrame,
    *,
    val: float = 0.15,
    test: float = 0.15,
    k: int = 5,
    seed: int = 0,
    protocol: str = "person",
    folds: str = "auto",
) -> pd.DataFrame:
    """Add ``split`` (train/val/test) and ``fold`` columns.

    ``protocol="person"`` (default): grouped by person (``group``), stratified by gender and
    also by source and age group, so that val and test look like train (large Adience
    albums of children would otherwise pile up on one side).
    ``protocol="original"``: the original work's image-level random split, which puts the
    same people on both sides; it is leaky and exists only to measure that inflation.

    ``folds="auto"`` (default) keeps the official folds of a dataset that has them for every
    row (Adience), made person-disjoint (:func:`person_disjoint_folds`), and otherwise computes
    ``k`` folds like the split. ``"official"`` requires them; ``"computed"`` ignores them.
    """
    if not 0 < val < 1 or not 0 < test < 1 or val + test >= 1:
        raise ConfigError(f"val ({val}) and test ({test}) must be in (0, 1) and sum to less than 1")
    if k < 2:
        raise ConfigError(f"k-fold needs k >= 2, got {k}")
    if protocol not in ("person", "original"):
        raise ConfigError(f"protocol must be 'person' or 'original' (leaky, image-level), got {protocol!r}")
    if folds not in FOLD_SOURCES:
        raise ConfigError(f"folds must be one of {FOLD_SOURCES}, got {folds!r}")
    official = has_official_folds(table)
    if folds == "official" and not official:
        raise ConfigError("folds='official' needs a dataset whose every image has an official fold (the Adience layout)")
    use_official = official and folds != "computed"
    out = table.copy()
    if len(out) == 0:
        out["split"], out["fold"] = [], []
        return out
    if protocol == "person":
        strata = out["gender"].astype(str) + "|" + out["source"].astype(str) + "|" + out["age_group"].astype(str)
        parts = grouped_stratified_assign(strata, out["group"], [1 - val - test, val, test], seed)
        computed = None if use_official else grouped_stratified_assign(strata, out["group"], [1.0] * k, seed + 1)
    else:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(out))
        n_test, n_val = round(test * len(out)), round(val * len(out))
        parts = np.zeros(len(out), int)
        parts[order[:n_test]] = 2
        parts[order[n_test : n_test + n_val]] = 1
        computed = rng.permutation(np.arange(len(out)) % k)
    if use_official:
        fold_values, moved = person_disjoint_folds(out["fold"].astype(int), out["group"])
        if moved:
            log.info("official folds: %d images moved to the fold holding most of their person's images", moved)
    else:
        fold_values = computed
    out["split"] = np.asarray(SPLITS)[parts]
    out["fold"] = np.asarray(fold_values).astype(int)
    return out


def leaked_groups(table: pd.DataFrame, column: str = "split") -> set[str]:
    """People (groups) that appear in more than one value of ``column``: empty for a sound split."""
    spans = table.groupby("group")[column].nunique()
    return set(spans[spans > 1].index)
