"""Age groups, P(correct) and "uncertain": tiny synthetic inputs, plus the committed model on real faces."""

from __future__ import annotations

import numpy as np
import pytest

from gender_lib import config, metrics, modeling
from gender_lib.config import HeadConfig
from gender_lib.errors import ConfigError
from gender_lib.modeling import FrozenHead
from gender_lib.modeling.answers import AGE_GROUPS, AgeGroups, Answers, Correctness, choose_level, risk_coverage


def _faces(n: int = 400, seed: int = 0):
    """Descriptors (n, 16) where dims 0-7 hold the age group and dim 8 the gender (noisier for children)."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 8, n)
    gender = rng.integers(0, 2, n)
    x = rng.normal(scale=0.3, size=(n, 16))
    x[np.arange(n), group] += 2.0
    noise = np.where(group < 2, 3.0, 0.3)  # children: the gender signal drowns
    x[:, 8] = (2 * gender - 1) + rng.normal(size=n) * noise
    people = np.array([f"p{i // 2}" for i in range(n)])
    return x, gender, np.array(AGE_GROUPS)[group], people


@pytest.fixture(scope="module")
def fitted():
    x, y, age, people = _faces()
    xv, yv, agev, peoplev = _faces(seed=1)
    model = FrozenHead(HeadConfig(epochs=30, patience=30), seed=0).fit(x, y, xv, yv, progress=False)
    model.fit_answers(x, age, xv, yv, peoplev, target=0.95)
    return model, _faces(seed=2)


def test_age_groups_are_learned_and_reported_as_the_median_group():
    x, _, age, _ = _faces()
    model = AgeGroups().fit(x[:, None], age)
    xt, _, aget, _ = _faces(seed=3)
    p = model.predict_proba(xt[:, None])
    assert p.shape == (len(xt), 8) and np.allclose(p.sum(axis=1), 1)
    assert (np.array(AGE_GROUPS)[AgeGroups.median(p)] == aget).mean() > 0.9
    assert list(AgeGroups.median(np.array([[0.4, 0, 0, 0, 0, 0, 0, 0.6], [0.2, 0.2, 0.05, 0.05, 0, 0, 0, 0.5]]))) == [7, 3]


def test_unknown_ages_are_left_out_and_unseen_groups_get_zero():
    x, _, age, _ = _faces()
    age = np.where(np.isin(age, ("0-2", "60+")), "unknown", age)
    model = AgeGroups().fit(x[:, None], age)
    assert "0-2" not in model.groups_ and "60+" not in model.groups_
    full = model.full_proba(model.predict_proba(x[:5, None]))
    assert full.shape == (5, 8) and (full[:, [0, 7]] == 0).all()


def test_the_confidence_level_reaches_the_target_on_validation_or_answers_nothing():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=2000)
    correct = rng.uniform(size=2000) < p  # P(correct) calibrated by construction
    level, coverage, accuracy = choose_level(p, correct, 0.9)
    answered = p >= level
    assert accuracy >= 0.9 and coverage == pytest.approx(answered.mean()) and correct[answered].mean() == pytest.approx(accuracy)
    assert correct[p >= np.sort(p)[np.searchsorted(np.sort(p), level) - 5]].mean() < 0.9 or coverage == 1  # a lower level misses it
    level, coverage, accuracy = choose_level(np.full(10, 0.5), np.zeros(10), 0.9)  # never right: nothing is answered
    assert (level, coverage) == (1.0, 0.0) and np.isnan(accuracy)


def test_p_correct_is_calibrated_out_of_sample():
    rng = np.random.default_rng(0)
    margins = rng.exponential(size=6000)
    correct = rng.uniform(size=6000) < 1 / (1 + np.exp(-(2 * margins - 0.5)))
    people = np.arange(6000).astype(str)
    model = Correctness(0.95).fit(margins[:3000, None], correct[:3000], people[:3000])
    q = model.p_correct(margins[3000:, None])
    assert metrics.calibration_error(correct[3000:], q) < 0.03
    assert np.all(np.diff(model.p_correct(np.linspace(0, 5, 20)[:, None])) > 0)  # a larger margin is never less sure


def test_each_source_is_reported_at_the_pooled_level():
    rng = np.random.default_rng(0)
    margins = rng.exponential(size=4000)
    hard = np.arange(4000) >= 3000  # a quarter from a source where the same margin is right less often
    correct = rng.uniform(size=4000) < 1 / (1 + np.exp(-(2 * margins - np.where(hard, 1.5, -0.5))))
    model = Correctness(0.95).fit(margins[:, None], correct, np.arange(4000).astype(str), np.where(hard, "hard", "easy"))
    by = model.val_by_source_
    assert set(by) == {"easy", "hard"} and (by["easy"]["n"], by["hard"]["n"]) == (3000, 1000)
    assert by["hard"]["accuracy"] < model.target_ <= by["easy"]["accuracy"]  # pooled, the hard source misses the target: reported, not hidden
    assert model.record()["val_by_source"] == by and model.rule_ == "chosen on validation"


def test_a_validation_split_too_small_for_the_target_takes_the_fallback_level_and_says_so():
    rng = np.random.default_rng(0)
    margins, correct = rng.exponential(size=47), np.ones(47, bool)
    correct[:2] = False
    model = Correctness(0.985).fit(margins[:, None], correct, np.arange(47).astype(str), fallback=0.83)
    assert model.min_confidence_ == 0.83 and "47 validation faces are too few" in model.rule_ and "at least 667" in model.rule_
    assert Correctness(0.985).fit(margins[:, None], correct, np.arange(47).astype(str)).min_confidence_ != 0.83  # no fallback: chosen anyway


def test_children_are_uncertain_for_the_stated_reason_and_adults_are_answered(fitted):
    model, (x, y, age, _) = fitted
    said = model.answer(x)
    child, answered = np.isin(age, ("0-2", "3-7")), said.answered
    assert answered[~child].mean() > answered[child].mean() + 0.3
    assert set(said.label) <= {"F", "M", "uncertain"} and (said.label[~answered] == "uncertain").all()
    assert (said.forced == np.where(said.p_female >= model.threshold_, "F", "M")).all()
    reasons = np.array(said.reason)
    assert (reasons[answered] == "").all() and all(r for r in reasons[~answered])
    assert any("looks under 15" in r for r in reasons[~answered & child])
    assert (np.array(said.age_group)[~child] == age[~child]).mean() > 0.8


def test_min_confidence_zero_always_answers_and_one_never(fitted):
    model, (x, *_) = fitted
    assert (model.answer(x, 0.0).label != "uncertain").all()
    assert (model.answer(x, 1.0).label == "uncertain").all()
    assert model.answer(x, -1).level == model.confidence_.min_confidence_


def test_answers_survive_save_and_load(fitted, tmp_path):
    model, (x, *_) = fitted
    path = model.save(tmp_path / "m.npz", {"backbone": {"name": "toy", "id": "toy-1", "dim": 16, "output": "descriptor"}})
    back = modeling.load(path)
    a, b = model.answer(x), back.answer(x)
    assert np.array_equal(a.label, b.label) and np.allclose(a.p_correct, b.p_correct) and a.age_group == b.age_group
    assert back.meta_["answers"]["target_accuracy"] == 0.95 and back.meta_["age_groups"] == list(AGE_GROUPS)


def test_a_model_without_answers_answers_every_face_without_an_age(tmp_path):
    x, y, _, _ = _faces(100)
    model = FrozenHead(HeadConfig(epochs=2), seed=0).fit(x, y, x, y, progress=False)
    back = modeling.load(model.save(tmp_path / "m.npz", {"backbone": {"name": "toy", "id": "toy-1", "dim": 16, "output": "descriptor"}}))
    said = back.answer(x)
    assert back.confidence_ is None and back.age_ is None
    assert said.answered.all() and np.isnan(said.p_correct).all() and said.age_group == [""] * len(x)
    assert "every face answered" in back.answers_line()


def test_risk_coverage_ends_at_the_accuracy_of_every_face():
    rng = np.random.default_rng(0)
    q = rng.uniform(size=500)
    correct = rng.uniform(size=500) < q
    curve = risk_coverage(q, correct)
    assert curve["coverage"][-1] == 1.0 and curve["accuracy"][-1] == pytest.approx(correct.mean())
    assert curve["accuracy"][10] > curve["accuracy"][-1]  # answering the surest first is more accurate


def test_age_metrics_count_exact_one_off_children_and_years():
    p = np.zeros((4, 8))
    p[[0, 1, 2, 3], [0, 1, 5, 7]] = 1  # predicted 0-2, 3-7, 38-47, 60+
    report = metrics.age_metrics(["0-2", "8-14", "38-47", "25-37"], p, ["1", "10", "40", "30"], n_boot=20)
    assert report["exact"] == 0.5 and report["one_off"] == 0.75
    assert report["child_recall"] == 1.0 and report["child_precision"] == 1.0
    assert report["mae_years"] == pytest.approx((0 + 5 + 2.5 + 35) / 4)
    assert np.asarray(report["confusion_matrix"]).sum() == 4


def test_selective_metrics_report_both_protocols_by_group():
    import pandas as pd

    table = pd.DataFrame({"gender": ["F", "M", "F", "M"], "age_group": ["0-2", "0-2", "25-37", "25-37"], "group": list("abcd")})
    report = metrics.selective_metrics(np.array([1, 0, 1, 1], bool), np.array([0, 0, 1, 1], bool), np.array([0.4, 0.3, 0.9, 0.95]), 0.5, table, n_boot=10)
    assert report["coverage"] == 0.5 and report["accuracy"] == 1.0 and report["accuracy_all"] == 0.75
    assert report["by"]["age_group"]["0-2"]["coverage"] == 0.0
    assert "every face answered: accuracy 0.750" in "\n".join(metrics.selective_lines(report))


@pytest.mark.parametrize("name, value", [("target_accuracy", 0.4), ("target_accuracy", 1.2), ("min_confidence", 1.5), ("min_confidence", -0.5)])
def test_confidence_settings_out_of_range_are_config_errors(name, value):
    with pytest.raises(ConfigError, match=name):
        config.DEFAULT.replace({name: value})


def test_an_uncertain_answer_reads_as_such_with_the_forced_label():
    said = Answers(np.array([0.55, 0.9]), 0.5, np.array([0.6, 0.99]), 0.9, None)
    assert list(said.label) == ["uncertain", "F"] and said.reason == ["close to the threshold", ""]
    from gender_lib.predict import Face

    face = Face((0, 0, 9, 9), "uncertain", 0.55, 0.5, True, 0.6, "F", "close to the threshold", "3-7", 0.7)
    assert face.text().startswith("uncertain (close to the threshold; would be female), P(female) 0.550 (threshold 0.500), P(correct) 0.600, age 3-7")


def test_the_committed_model_says_uncertain_for_young_children_and_answers_adults(sample_faces):
    """The shipped model on the embedded real faces (some of which it trained on: this checks
    behaviour, the README's figures come from the test split)."""
    from gender_lib.predict import Predictor

    predictor = Predictor()
    toddlers = [f for path in sorted(sample_faces.glob("0[12]_*/*.jpg"))[:12] for f in predictor.predict(path, detect=False)]
    adults = [f for path in sorted(sample_faces.glob("[345]?_*/*.jpg"))[::3] for f in predictor.predict(path, detect=False)]
    assert sum(f.label == "uncertain" for f in toddlers) >= 8
    assert sum(f.label in ("F", "M") for f in adults) >= 0.8 * len(adults) and len(adults) >= 20
    assert all(f.age_group for f in toddlers + adults) and all(0 <= f.p_correct <= 1 for f in toddlers + adults)


def test_cli_says_uncertain_with_the_reason_and_min_confidence_zero_always_answers(sample_faces, tmp_path, capsys):
    import pandas as pd

    from gender_lib import cli

    child = sample_faces / "02_F" / "landmark_aligned_face.2056.9486741037_e54a9248f3_o.jpg"
    assert cli.main(["predict", str(child), "--csv", str(tmp_path / "out.csv")]) == 0
    out = capsys.readouterr().out
    assert "face 1: uncertain (looks under 15" in out and "would be " in out and "P(correct) 0." in out and ", age 3-7 (P 0." in out
    row = pd.read_csv(tmp_path / "out.csv", keep_default_na=False).iloc[0]
    assert row["label"] == "uncertain" and row["forced_label"] in ("F", "M") and row["reason"].startswith("looks under 15")
    assert 0 <= float(row["p_correct"]) < 1 and row["age_group"] == "3-7"
    assert cli.main(["predict", str(child), "--min-confidence", "0"]) == 0
    out = capsys.readouterr().out
    assert "uncertain" not in out and ("face 1: female," in out or "face 1: male," in out)
