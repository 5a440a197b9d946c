"""The MLP head every estimator ends in, its training loop, the threshold rule and the baseline.

Default architecture as in the original work: Dense 16 relu, Dense 16 relu, Dropout 0.4,
Dense 1 sigmoid, with the input standardised by a Normalization layer fitted on the training
split. The output is P(female); the loss is binary cross-entropy on probabilities (the original
work's ``from_logits=True`` on a sigmoid was a bug). Training is seeded and deterministic on CPU;
early stopping on validation loss restores the best weights.

Training runs in Keras; the trained weights are kept as NumPy arrays (:class:`MLP`), whose
forward pass in float64 is what every estimator predicts with, so prediction never imports
TensorFlow for the head (equal to Keras' float64 forward pass to 1e-12, tested).
"""

from __future__ import annotations

import dataclasses
import platform
from typing import Any

import numpy as np

from gender_lib.config import HeadConfig
from gender_lib.errors import GenderLibError
from gender_lib.metrics import CLASSES

#: The head's arithmetic. In float32, training is sensitive to rounding: descriptors that differ by
#: 1e-6 (what the same backbone gives on two CPU generations) sent the sample's head down another
#: early-stopping path (best epoch 100 of 100 vs 89 of 97, threshold 0.641 vs 0.666; P(female)
#: apart by up to 0.099). In float64 the same perturbation moves P(female) by at most ~1e-4
#: (tests/test_machine_independence.py). The head is tiny, so float64 costs nothing measurable.
HEAD_DTYPE = "float64"


class HeadError(GenderLibError, ValueError):
    """Bad training data or a saved model that cannot be used; the message says what to do."""


def check_split(name: str, x: np.ndarray, y: np.ndarray, dim: int | None = None) -> None:
    """Raise :class:`HeadError` for a split a head cannot train or validate on."""
    if x.ndim != 2:
        raise HeadError(f"{name} descriptors must be a 2-d array (n, dim), got shape {x.shape}")
    if len(x) != len(y):
        raise HeadError(f"{name}: {len(x)} descriptors but {len(y)} labels")
    if len(x) == 0:
        raise HeadError(f"the {name} split is empty: check the manifest's split column and the sample size")
    if len(np.unique(y)) < 2:
        raise HeadError(f"the {name} split has only one class ({CLASSES[int(y[0])]}): a gender head needs both; use a larger sample or another seed")
    if dim is not None and x.shape[1] != dim:
        raise HeadError(f"{name} descriptors are {x.shape[1]}-d but the head expects {dim}-d: they come from another backbone")
    if not np.all(np.isfinite(x)):
        raise HeadError(f"{name} descriptors contain NaN or inf values")


@dataclasses.dataclass
class MLP:
    """A trained head as arrays: input ``mean`` and ``variance`` (d,), then (kernel, bias) per
    Dense layer, relu between and a sigmoid at the end (dropout is the identity at inference)."""

    mean: np.ndarray
    variance: np.ndarray
    dense: list[tuple[np.ndarray, np.ndarray]]

    @property
    def dim(self) -> int:
        return int(self.mean.shape[-1])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """P(female), float64 (n,), of inputs (n, dim)."""
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise HeadError(f"inputs must be (n, {self.dim}), got {x.shape}: they come from another backbone output")
        out = (x - self.mean) / np.maximum(np.sqrt(self.variance), 1e-7)
        for i, (kernel, bias) in enumerate(self.dense):
            out = out @ kernel + bias
            out = np.maximum(out, 0.0) if i < len(self.dense) - 1 else 1.0 / (1.0 + np.exp(-out))
        return out.reshape(-1)

    def arrays(self, prefix: str = "head") -> dict[str, np.ndarray]:
        """Named arrays for an npz (as trained: float32 or float64)."""
        out = {f"{prefix}/mean": self.mean, f"{prefix}/variance": self.variance}
        for i, (kernel, bias) in enumerate(self.dense):
            out |= {f"{prefix}/dense{i}/kernel": kernel, f"{prefix}/dense{i}/bias": bias}
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str = "head") -> MLP:
        n = sum(1 for k in arrays if k.startswith(f"{prefix}/dense") and k.endswith("/kernel"))
        dense = [(arrays[f"{prefix}/dense{i}/kernel"].astype(np.float64), arrays[f"{prefix}/dense{i}/bias"].astype(np.float64)) for i in range(n)]
        return cls(arrays[f"{prefix}/mean"].astype(np.float64), arrays[f"{prefix}/variance"].astype(np.float64), dense)

    @classmethod
    def from_keras(cls, model: Any) -> MLP:
        """The arrays of a Keras head built by :func:`build_keras`."""
        mean, variance = (np.asarray(w) for w in model.get_layer("standardize").get_weights()[:2])
        dense = [tuple(np.asarray(w) for w in layer.get_weights()) for layer in model.layers if layer.__class__.__name__ == "Dense"]
        return cls(mean.reshape(-1), variance.reshape(-1), dense)  # type: ignore[arg-type]


def build_keras(dim: int, config: HeadConfig, x_train: np.ndarray | None = None, seed: int = 0, dtype: str = HEAD_DTYPE) -> Any:
    """The MLP as a Keras model in ``dtype``, its input Normalization adapted to ``x_train`` when given."""
    import keras

    regularizer = keras.regularizers.L2(config.l2) if config.l2 else None
    inputs = keras.Input((dim,), name="descriptor", dtype=dtype)
    normalize = keras.layers.Normalization(name="standardize", dtype=dtype)
    if x_train is not None:
        normalize.adapt(np.asarray(x_train, dtype))
    x = normalize(inputs)
    for i, width in enumerate(config.widths):
        x = keras.layers.Dense(width, activation="relu", kernel_regularizer=regularizer, name=f"dense{i + 1}", dtype=dtype)(x)
    if config.dropout:
        x = keras.layers.Dropout(config.dropout, seed=seed, name="dropout", dtype=dtype)(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", kernel_regularizer=regularizer, name="p_female", dtype=dtype)(x)
    return keras.Model(inputs, outputs, name="gender_head")


def class_weights(y: np.ndarray, balance: bool) -> np.ndarray:
    """Per-class loss weights (M, F) that balance the classes, or ones."""
    if not balance:
        return np.ones(2)
    counts = np.bincount(np.asarray(y).astype(int), minlength=2)
    return len(y) / (2.0 * np.maximum(counts, 1))


def train_keras(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, config: HeadConfig, seed: int = 0, dtype: str = HEAD_DTYPE
) -> tuple[Any, dict[str, list[float]]]:
    """Adam and binary cross-entropy in ``dtype``, early stopping on val loss; returns (Keras model
    with the best weights, history with ``best_epoch``). Raises :class:`HeadError` for bad splits."""
    import keras
    import tensorflow as tf

    x_train, x_val = np.asarray(x_train, dtype), np.asarray(x_val, dtype)
    y_train, y_val = np.asarray(y_train, dtype), np.asarray(y_val, dtype)
    check_split("train", x_train, y_train)
    check_split("val", x_val, y_val, x_train.shape[1])
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()  # same seed -> same weights on CPU
    model = build_keras(x_train.shape[1], config, x_train, seed, dtype)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.BinaryCrossentropy(from_logits=False),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy")],
    )
    weights = class_weights(y_train, config.class_balance)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=config.epochs,
        batch_size=config.head_batch_size,
        class_weight={0: float(weights[0]), 1: float(weights[1])} if config.class_balance else None,
        callbacks=[stop],
        shuffle=True,
        verbose=0,
    )
    record = {key: [float(v) for v in values] for key, values in history.history.items()}
    record["best_epoch"] = [float(int(np.argmin(record["val_loss"])) + 1)]
    return model, record


def choose_threshold(y_val: np.ndarray, p_val: np.ndarray) -> float:
    """The threshold maximising balanced accuracy on validation data (ties: closest to 0.5)."""
    y_val, p_val = np.asarray(y_val).astype(int), np.asarray(p_val, np.float64)
    if len(np.unique(y_val)) < 2:
        raise HeadError("cannot choose a threshold on a validation split with one class")
    candidates = np.unique(np.r_[0.5, (np.unique(p_val)[:-1] + np.unique(p_val)[1:]) / 2]) if len(np.unique(p_val)) > 1 else np.array([0.5])
    best, best_score = 0.5, -1.0
    for t in candidates:
        pred = p_val >= t
        score = 0.5 * (pred[y_val == 1].mean() + (~pred[y_val == 0]).mean())
        if score > best_score + 1e-12 or (abs(score - best_score) <= 1e-12 and abs(t - 0.5) < abs(best - 0.5)):
            best, best_score = float(t), score
    return best


def logistic_baseline(x_train: np.ndarray, y_train: np.ndarray, seed: int = 0) -> Any:
    """scikit-learn baseline on the same descriptors: standardise + balanced logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    check_split("train", np.asarray(x_train), np.asarray(y_train))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced", random_state=seed))
    return model.fit(x_train, y_train)


def versions() -> dict[str, str]:
    """The library versions a model was trained with (recorded in its sidecar)."""
    import keras
    import sklearn
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }
