"""The estimator (one kind, one registry, one loader), the threshold rule, the metrics (checked
against scikit-learn), and bad input."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from gender_lib import metrics, modeling
from gender_lib.config import HeadConfig
from gender_lib.modeling import FrozenHead, HeadError
from gender_lib.modeling import mlp as hd


def _blobs(n: int, dim: int = 8, separation: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(int)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x[:, 0] += separation * (y - 0.5) * 2
    return x, y


@pytest.fixture(scope="module")
def separable():
    return _blobs(400, seed=1), _blobs(120, seed=2), _blobs(200, seed=3)


FAST = HeadConfig(epochs=40, patience=5, head_batch_size=32)
SEED = 7


def _fit(xt, yt, xv, yv, head_config=FAST, seed=SEED) -> FrozenHead:
    return FrozenHead(head_config, seed=seed).fit(xt, yt, xv, yv)


@pytest.fixture(scope="module")
def fitted(separable) -> FrozenHead:
    """One model fitted on the separable problem, for the tests that do not train."""
    (xt, yt), (xv, yv), _ = separable
    return _fit(xt, yt, xv, yv)


def test_head_learns_a_separable_problem(separable, fitted):
    (xt, yt), (xv, yv), (xs, ys) = separable
    model = fitted
    assert (model.predict(xs) == np.where(ys == 1, "F", "M")).mean() > 0.97
    assert model.predict_proba(xs).shape == (len(xs), 2) and np.allclose(model.predict_proba(xs).sum(axis=1), 1)
    history = model.history_
    assert history["val_loss"][int(history["best_epoch"][0]) - 1] == min(history["val_loss"])
    assert [w.shape for w, _ in model.head_.dense] == [(8, 16), (16, 16), (16, 1)] and model.n_parameters_ == 8 * 16 + 16 + 16 * 16 + 16 + 17
    assert 0 < model.threshold_ < 1 and model.get_params()["seed"] == SEED


def test_numpy_forward_pass_equals_the_keras_model_it_was_trained_as(separable):
    """Every estimator predicts in NumPy (no TensorFlow at prediction); it must give Keras' numbers."""
    (xt, yt), (xv, yv), (xs, _) = separable
    keras_model, _ = hd.train_keras(xt, yt, xv, yv, FAST, seed=SEED)
    numpy_model = hd.MLP.from_keras(keras_model)
    np.testing.assert_allclose(numpy_model(xs), np.asarray(keras_model(xs.astype("float64"), training=False)).reshape(-1), atol=1e-12)


def test_head_does_no_better_than_chance_on_noise():
    (xt, yt), (xv, yv), (xs, ys) = _blobs(300, separation=0, seed=4), _blobs(100, separation=0, seed=5), _blobs(400, separation=0, seed=6)
    model = _fit(xt, yt, xv, yv)
    assert abs(((model.p_female(xs) >= 0.5) == ys).mean() - 0.5) < 0.1


def test_same_seed_gives_same_metrics_to_four_decimals(separable):
    (xs, ys) = separable[2]
    (xt, yt), (xv, yv) = _blobs(400, separation=1.0, seed=8), _blobs(120, separation=1.0, seed=9)
    short = dataclasses.replace(FAST, epochs=10, patience=10)  # the same path for any length
    runs = []
    for _ in range(2):
        model = _fit(xt, yt, xv, yv, short)
        runs.append((round(float(model.history_["val_loss"][-1]), 4), np.round(model.p_female(xs), 4)))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    other = _fit(xt, yt, xv, yv, short, seed=8)
    assert not np.array_equal(np.round(other.p_female(xs), 4), runs[0][1])


def test_flip_averaging_trains_on_both_views_and_averages_them(separable):
    (xt, yt), (xv, yv), (xs, _) = separable
    mirrored = [np.concatenate([x, x[:, ::-1]], axis=1) for x in (xt, xv, xs)]  # a stand-in "mirror image" of each row
    model = FrozenHead(dataclasses.replace(FAST, flip_tta=True), seed=SEED).fit(mirrored[0], yt, mirrored[1], yv)
    assert model.backbone_output == "descriptor+mirror" and FrozenHead(FAST).backbone_output == "descriptor"
    views = model.p_female_views(mirrored[2])
    np.testing.assert_allclose(model.p_female(mirrored[2]), views.mean(axis=1))
    np.testing.assert_allclose(views[:, 1], model.head_(xs[:, ::-1]))
    with pytest.raises(HeadError, match=r"expected descriptor rows \(n, 2 x dim\)"):
        model.p_female(np.zeros((2, 17)))


def test_threshold_is_chosen_on_validation_to_maximise_balanced_accuracy():
    y = np.array([0, 0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.62, 0.65, 0.9])
    t = hd.choose_threshold(y, p)
    assert 0.62 < t <= 0.65
    assert hd.choose_threshold(np.array([0, 1]), np.array([0.2, 0.8])) == 0.5  # ties prefer 0.5
    with pytest.raises(HeadError, match="one class"):
        hd.choose_threshold(np.array([1, 1]), np.array([0.2, 0.8]))


def test_metrics_match_counts_worked_out_by_hand():
    """Ten examples, counted by hand: TN 3, FP 1, FN 2, TP 4 at threshold 0.5; AUC from 24 pairs (one tie)."""
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.3, 0.9, 0.8, 0.4, 0.7, 0.55, 0.2])
    m = metrics.classification_metrics(y, p, threshold=0.5)
    assert m["confusion_matrix"] == [[3, 1], [2, 4]]
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert m["per_class"]["F"]["precision"] == pytest.approx(4 / 5) and m["per_class"]["F"]["recall"] == pytest.approx(4 / 6)
    assert m["per_class"]["M"]["precision"] == pytest.approx(3 / 5) and m["per_class"]["M"]["recall"] == pytest.approx(3 / 4)
    f1_f, f1_m = 2 * 0.8 * (4 / 6) / (0.8 + 4 / 6), 2 * 0.6 * 0.75 / (0.6 + 0.75)
    assert m["macro"]["f1"] == pytest.approx((f1_f + f1_m) / 2)
    assert m["roc_auc"] == pytest.approx(19.5 / 24)
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))


def test_calibration_error_is_zero_for_calibrated_and_large_for_overconfident_scores():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 200_000)
    y = (rng.uniform(0, 1, p.size) < p).astype(int)
    assert metrics.expected_calibration_error(y, p) < 0.01
    overconfident = np.where(p >= 0.5, 0.99, 0.01)
    assert metrics.expected_calibration_error(y, overconfident) > 0.2


def test_bootstrap_interval_resamples_people_and_contains_the_estimate():
    rng = np.random.default_rng(2)
    people = np.repeat(np.arange(60), 10)
    y = np.repeat(rng.integers(0, 2, 60), 10)
    person_offset = np.repeat(rng.uniform(-0.3, 0.3, 60), 10)  # some people are hard in every photo
    p = np.clip(0.25 + 0.5 * y + person_offset + rng.normal(0, 0.02, y.size), 0, 1)
    by_person = metrics.bootstrap_intervals(y, p, 0.5, people, n_boot=300)
    by_image = metrics.bootstrap_intervals(y, p, 0.5, None, n_boot=300)
    accuracy = ((p >= 0.5) == y).mean()
    assert by_person["accuracy"][0] <= accuracy <= by_person["accuracy"][1]
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(by_person["accuracy"]) > width(by_image["accuracy"])  # correlated photos: wider, honest


def test_breakdown_reports_each_group():
    y = np.array([0, 1, 0, 1, 1])
    p = np.array([0.2, 0.8, 0.7, 0.9, 0.1])
    rows = metrics.breakdown(y, p, 0.5, ["a", "a", "b", "b", "b"])
    assert rows["a"] == {"n": 2, "accuracy": 1.0, "recall_M": 1.0, "recall_F": 1.0, "roc_auc": 1.0}
    assert rows["b"]["accuracy"] == pytest.approx(1 / 3)


def test_a_saved_model_loads_through_the_one_loader_with_the_same_answers(tmp_path, separable, fitted):
    xs = separable[2][0]
    model = fitted
    path = model.save(tmp_path / "h.npz", {"backbone": {"id": "b1"}})
    again = modeling.load(path)
    assert type(again) is FrozenHead and again.threshold_ == model.threshold_ and again.config == model.config
    np.testing.assert_array_equal(again.p_female(xs), model.p_female(xs))
    meta = again.meta_
    assert meta["kind"] == "frozen" and meta["backbone"]["id"] == "b1" and meta["output"] == "P(female)" and "tensorflow" in meta["versions"]


# --------------------------------------------------------------------------- bad input


def test_empty_or_single_class_split_is_a_clear_error(separable):
    (xt, yt), (xv, yv), _ = separable
    with pytest.raises(HeadError, match="val split is empty"):
        _fit(xt, yt, xv[:0], yv[:0])
    with pytest.raises(HeadError, match="train split has only one class"):
        _fit(xt[yt == 1], yt[yt == 1], xv, yv)


def test_mismatched_dimensions_and_unfitted_models_are_clear_errors(separable, fitted):
    (xt, yt), (xv, yv), _ = separable
    with pytest.raises(HeadError, match="val descriptors are 4-d but the head expects 8-d"):
        _fit(xt, yt, xv[:, :4], yv)
    with pytest.raises(HeadError, match="not fitted yet"):
        FrozenHead().p_female(xt)
    model = fitted
    with pytest.raises(HeadError, match=r"\(n, 8\), got \(2, 128\).*another backbone output"):
        model.p_female(np.zeros((2, 128)))


def test_damaged_or_foreign_model_files_are_clear_errors(tmp_path, fitted):
    with pytest.raises(HeadError, match=r"saved with meta\['backbone'\]"):
        fitted.save(tmp_path / "h.npz", {})
    with pytest.raises(HeadError, match="not fitted yet"):
        FrozenHead().save(tmp_path / "h.npz", {"backbone": {}})
    path = fitted.save(tmp_path / "h.npz", {"backbone": {"id": "b1"}})
    with pytest.raises(HeadError, match=r"h\.keras: a model is saved as \.npz"):
        fitted.save(tmp_path / "h.keras", {})
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "kind": "forest"}))
    with pytest.raises(HeadError, match="unknown model kind 'forest'"):
        modeling.load(path)
    side.write_text(json.dumps({**meta, "kind": "finetune"}))  # a model of a kind 0.1 shipped
    with pytest.raises(HeadError, match="h.npz: the model kind 'finetune' was retired in gender_lib 0.2.*`gender-lib train`"):
        modeling.load(path)
    side.write_text(json.dumps({**meta, "backbone": {"id": "b1", "output": "descriptor+mirror"}}))  # edited by hand: the record no longer fits the model
    with pytest.raises(HeadError, match="a frozen model reads descriptor rows, but its backbone record gives descriptor\\+mirror"):
        modeling.load(path)
    side.write_text(json.dumps(["not", "a", "record"]))
    with pytest.raises(HeadError, match="model metadata missing or damaged"):
        modeling.load(path)
    side.write_text(json.dumps({**meta, "format": "gender_lib.head/1"}))
    with pytest.raises(HeadError, match="not a gender_lib.model/1 sidecar.*train again"):
        modeling.load(path)
    other = tmp_path / "other.npz"  # an npz of something else, its sidecar's sha256 made to match
    np.savez(other, weights=np.zeros(3))
    other.with_suffix(".json").write_text(json.dumps({**meta, "weights_sha256": hashlib.sha256(other.read_bytes()).hexdigest()}))
    with pytest.raises(HeadError, match=r"other\.npz: holds no MLP weights"):
        modeling.load(other)
    side.write_text(json.dumps(meta))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(HeadError, match=r"h\.npz: its weights do not match the sha256"):
        modeling.load(path)
    side.write_text("{not json")
    with pytest.raises(HeadError, match="h.json: model metadata missing or damaged"):
        modeling.load(path)
    with pytest.raises(FileNotFoundError, match="no trained model"):
        modeling.load(tmp_path / "missing.npz")


def test_wrong_gender_labels_are_rejected():
    with pytest.raises(metrics.LabelError, match="'M' or 'F'"):
        metrics.labels_from_genders(["M", "female"])
    assert metrics.labels_from_genders(pd.Series(["M", "F"])).tolist() == [0, 1]
