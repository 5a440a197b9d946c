"""Person-disjoint splits and folds (gender_lib.splits): pure functions on tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gender_lib import splits


@pytest.fixture
def people_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for person in range(300):
        gender = "MF"[person % 2]
        for _ in range(int(rng.integers(1, 12))):
            rows.append({"gender": gender, "group": f"p{person}", "source": "s", "age_group": "25-37"})
    return pd.DataFrame(rows)


def test_person_split_keeps_every_person_on_one_side_with_balanced_sizes(people_table):
    table = splits.assign_splits(people_table, seed=3)
    assert splits.leaked_groups(table) == set() and splits.leaked_groups(table, "fold") == set()
    fractions = table["split"].value_counts(normalize=True)
    assert abs(fractions["train"] - 0.70) < 0.02 and abs(fractions["test"] - 0.15) < 0.02
    for split, part in table.groupby("split"):
        assert abs((part["gender"] == "F").mean() - (table["gender"] == "F").mean()) < 0.03, split
    assert sorted(table["fold"].unique()) == [0, 1, 2, 3, 4]


def test_same_seed_gives_same_split_and_another_seed_a_different_one(people_table):
    a, b, c = (splits.assign_splits(people_table, seed=s) for s in (1, 1, 2))
    assert a["split"].tolist() == b["split"].tolist() and a["fold"].tolist() == b["fold"].tolist()
    assert a["split"].tolist() != c["split"].tolist()


def test_original_protocol_is_image_level_and_leaks_people(people_table):
    table = splits.assign_splits(people_table, protocol="original", seed=0)
    assert len(splits.leaked_groups(table)) > 50
    assert round(len(table) * 0.15) == (table["split"] == "test").sum()


def test_bad_split_parameters_are_clear_errors(people_table):
    with pytest.raises(ValueError, match="sum to less than 1"):
        splits.assign_splits(people_table, val=0.5, test=0.5)
    with pytest.raises(ValueError, match="protocol"):
        splits.assign_splits(people_table, protocol="random")
    with pytest.raises(ValueError, match="k >= 2"):
        splits.assign_splits(people_table, k=1)
    with pytest.raises(ValueError, match="official fold"):
        splits.assign_splits(people_table, folds="official")


def _with_official_folds(people_table: pd.DataFrame) -> pd.DataFrame:
    table = people_table.copy()
    table["fold"] = table["group"].str[1:].astype(int) % 5  # person-disjoint, and not what assign_splits computes
    return table


def test_official_folds_are_kept_and_the_split_stays_person_disjoint(people_table):
    # Regression: assign_splits used to overwrite the official (Adience) folds with computed ones.
    table = _with_official_folds(people_table)
    out = splits.assign_splits(table, seed=3)
    assert out["fold"].tolist() == table["fold"].tolist()
    assert splits.leaked_groups(out) == set() and splits.leaked_groups(out, "fold") == set()
    assert splits.assign_splits(table, seed=3)["split"].tolist() == splits.assign_splits(people_table, seed=3)["split"].tolist()
    computed = splits.assign_splits(table, seed=3, folds="computed")
    assert computed["fold"].tolist() == splits.assign_splits(people_table, seed=3)["fold"].tolist()


def test_partial_official_folds_are_not_used(people_table):
    table = _with_official_folds(people_table)
    table.loc[0, "fold"] = None
    assert not splits.has_official_folds(table)
    assert splits.assign_splits(table, seed=3)["fold"].tolist() == splits.assign_splits(people_table, seed=3)["fold"].tolist()


def test_a_person_spanning_official_folds_moves_to_its_majority_fold():
    folds, moved = splits.person_disjoint_folds([0, 0, 1, 2, 3, 3], ["a", "a", "a", "b", "c", "c"])
    assert folds.tolist() == [0, 0, 0, 2, 3, 3] and moved == 1
    folds, moved = splits.person_disjoint_folds([4, 1], ["a", "a"])  # a tie goes to the lower fold
    assert folds.tolist() == [1, 1] and moved == 1
