"""The gender head, its threshold rule, the metrics (checked against scikit-learn), and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gender_lib import head as hd
from gender_lib import metrics


def _blobs(n: int, dim: int = 8, separation: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(int)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x[:, 0] += separation * (y - 0.5) * 2
    return x, y


@pytest.fixture(scope="module")
def separable():
    return _blobs(400, seed=1), _blobs(120, seed=2), _blobs(200, seed=3)


FAST = hd.HeadConfig(epochs=40, patience=5, head_batch_size=32)
SEED = 7


def test_head_learns_a_separable_problem(separable):
    (xt, yt), (xv, yv), (xs, ys) = separable
    model, history = hd.train_head(xt, yt, xv, yv, FAST, seed=SEED)
    p = hd.predict_proba(model, xs)
    assert ((p >= 0.5) == ys).mean() > 0.97
    assert history["val_loss"][int(history["best_epoch"][0]) - 1] == min(history["val_loss"])
    assert [layer.name for layer in model.layers][1:] == ["standardize", "dense1", "dense2", "dropout", "p_female"]
    assert model.layers[-1].activation.__name__ == "sigmoid"


def test_head_does_no_better_than_chance_on_noise():
    (xt, yt), (xv, yv), (xs, ys) = _blobs(300, separation=0, seed=4), _blobs(100, separation=0, seed=5), _blobs(400, separation=0, seed=6)
    model, _ = hd.train_head(xt, yt, xv, yv, FAST, seed=SEED)
    assert abs(((hd.predict_proba(model, xs) >= 0.5) == ys).mean() - 0.5) < 0.1


def test_same_seed_gives_same_metrics_to_four_decimals(separable):
    (xt, yt), (xv, yv), (xs, ys) = separable
    (xt, yt), (xv, yv) = _blobs(400, separation=1.0, seed=8), _blobs(120, separation=1.0, seed=9)
    runs = []
    for _ in range(2):
        model, history = hd.train_head(xt, yt, xv, yv, FAST, seed=SEED)
        runs.append((round(float(history["val_loss"][-1]), 4), np.round(hd.predict_proba(model, xs), 4)))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    other, _ = hd.train_head(xt, yt, xv, yv, hd.HeadConfig(epochs=40, patience=5, head_batch_size=32), seed=8)
    assert not np.array_equal(np.round(hd.predict_proba(other, xs), 4), runs[0][1])


def test_threshold_is_chosen_on_validation_to_maximise_balanced_accuracy():
    y = np.array([0, 0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.62, 0.65, 0.9])
    t = hd.choose_threshold(y, p)
    assert 0.62 < t <= 0.65
    assert hd.choose_threshold(np.array([0, 1]), np.array([0.2, 0.8])) == 0.5  # ties prefer 0.5
    with pytest.raises(hd.HeadError, match="one class"):
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


def test_head_saves_and_loads_with_metadata(tmp_path, separable):
    (xt, yt), (xv, yv), (xs, _) = separable
    model, _ = hd.train_head(xt, yt, xv, yv, FAST, seed=SEED)
    path = hd.save_head(model, {"backbone": {"id": "b1"}, "descriptor_dim": 8, "threshold": 0.5}, tmp_path / "h.keras")
    again, meta = hd.load_head(path)
    np.testing.assert_allclose(hd.predict_proba(again, xs), hd.predict_proba(model, xs), rtol=1e-6)
    assert meta["backbone"]["id"] == "b1" and meta["output"] == "P(female)" and "tensorflow" in meta["versions"]


# --------------------------------------------------------------------------- bad input


def test_empty_or_single_class_split_is_a_clear_error(separable):
    (xt, yt), (xv, yv), _ = separable
    with pytest.raises(hd.HeadError, match="val split is empty"):
        hd.train_head(xt, yt, xv[:0], yv[:0], FAST)
    with pytest.raises(hd.HeadError, match="train split has only one class"):
        hd.train_head(xt[yt == 1], yt[yt == 1], xv, yv, FAST)


def test_mismatched_dimensions_are_a_clear_error(separable):
    (xt, yt), (xv, yv), (xs, _) = separable
    with pytest.raises(hd.HeadError, match="val descriptors are 4-d but the head expects 8-d"):
        hd.train_head(xt, yt, xv[:, :4], yv, FAST)
    model, _ = hd.train_head(xt, yt, xv, yv, FAST, seed=SEED)
    with pytest.raises(hd.HeadError, match="128-d but the head expects 8-d.*another backbone"):
        hd.predict_proba(model, np.zeros((2, 128)))


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, separable):
    (xt, yt), (xv, yv), _ = separable
    model, _ = hd.train_head(xt, yt, xv, yv, FAST, seed=SEED)
    path = hd.save_head(model, {"descriptor_dim": 8}, tmp_path / "h.keras")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(hd.HeadError, match="h.keras: cannot load the head.*corrupt"):
        hd.load_head(path)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(hd.HeadError, match="h.json: head metadata missing or damaged"):
        hd.load_head(path)
    with pytest.raises(FileNotFoundError, match="no trained head"):
        hd.load_head(tmp_path / "missing.keras")


def test_wrong_gender_labels_are_rejected():
    with pytest.raises(metrics.LabelError, match="'M' or 'F'"):
        hd.labels_from_genders(["M", "female"])
    assert hd.labels_from_genders(pd.Series(["M", "F"])).tolist() == [0, 1]


def test_numpy_forward_pass_equals_keras_on_the_committed_head():
    """Prediction reads the head without TensorFlow; it must give Keras' numbers."""
    from gender_lib import config

    path = config.paths().frozen_head
    keras_model, _ = hd.load_head(path)
    numpy_model, meta = hd.load_head(path, backend="numpy")
    x = np.random.default_rng(0).normal(0, 0.1, (257, meta["descriptor_dim"])).astype(np.float32)
    np.testing.assert_allclose(hd.predict_proba(numpy_model, x), hd.predict_proba(keras_model, x), atol=1e-6)
    np.testing.assert_allclose(hd.predict_proba(numpy_model, x[:1]), hd.predict_proba(keras_model, x[:1]), atol=1e-6)


def test_numpy_head_refuses_layers_it_cannot_compute(tmp_path):
    import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.BatchNormalization()(inputs)))
    hd.save_head(model, {"descriptor_dim": 4, "threshold": 0.5}, tmp_path / "odd.keras")
    with pytest.raises(hd.HeadError, match="BatchNormalization"):
        hd.load_head(tmp_path / "odd.keras", backend="numpy")
