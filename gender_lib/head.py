"""The gender head: a small MLP on face descriptors, plus a logistic-regression baseline.

Default architecture as in the original work: Dense 16 relu, Dense 16 relu, Dropout 0.4,
Dense 1 sigmoid, with the descriptor standardised by a Normalization layer fitted on the
training split (saved inside the model). The output is P(female); the loss is binary
cross-entropy on probabilities (the original work's ``from_logits=True`` on a sigmoid was a
bug). Training is seeded and deterministic on CPU; early stopping on validation loss
restores the best weights. The decision threshold is chosen on validation data only.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from gender_lib.config import HeadConfig
from gender_lib.errors import GenderLibError, UserFileNotFoundError
from gender_lib.fileio import publish_together
from gender_lib.metrics import CLASSES, labels_from_genders

__all__ = [
    "CLASSES",
    "HeadConfig",
    "HeadError",
    "build_head",
    "train_head",
    "predict_proba",
    "choose_threshold",
    "logistic_baseline",
    "save_head",
    "load_head",
    "labels_from_genders",
    "describe",
]


class HeadError(GenderLibError, ValueError):
    """Bad training data or a checkpoint that cannot be used; the message says what to do."""


def _check_split(name: str, x: np.ndarray, y: np.ndarray, dim: int | None = None) -> None:
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


#: The head's arithmetic. In float32, training is sensitive to rounding: descriptors that differ by
#: 1e-6 (what the same backbone gives on two CPU generations) sent the sample's head down another
#: early-stopping path (best epoch 100 of 100 vs 89 of 97, threshold 0.641 vs 0.666; P(female)
#: apart by up to 0.099). In float64 the same perturbation moves P(female) by at most ~1e-4
#: (tests/test_machine_independence.py). The head is tiny, so float64 costs nothing measurable.
HEAD_DTYPE = "float64"


def build_head(dim: int, config: HeadConfig | None = None, x_train: np.ndarray | None = None, seed: int = 0, dtype: str = HEAD_DTYPE) -> Any:
    """The MLP in ``dtype``, with its input Normalization adapted to ``x_train`` when given."""
    import keras

    config = config or HeadConfig()
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


def train_head(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: HeadConfig | None = None,
    seed: int = 0,
    verbose: int = 0,
    dtype: str = HEAD_DTYPE,
) -> tuple[Any, dict[str, list[float]]]:
    """Train with Adam and binary cross-entropy in ``dtype``; returns (model with best weights, history)."""
    import keras
    import tensorflow as tf

    config = config or HeadConfig()
    x_train, x_val = np.asarray(x_train, dtype), np.asarray(x_val, dtype)
    y_train, y_val = np.asarray(y_train, dtype), np.asarray(y_val, dtype)
    _check_split("train", x_train, y_train)
    _check_split("val", x_val, y_val, x_train.shape[1])
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()  # same seed -> same weights on CPU
    model = build_head(x_train.shape[1], config, x_train, seed, dtype)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.BinaryCrossentropy(from_logits=False),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy")],
    )
    class_weight = None
    if config.class_balance:
        counts = np.bincount(y_train.astype(int), minlength=2)
        class_weight = {c: len(y_train) / (2.0 * counts[c]) for c in (0, 1)}
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=config.epochs,
        batch_size=config.head_batch_size,
        class_weight=class_weight,
        callbacks=[stop],
        shuffle=True,
        verbose=verbose,
    )
    record = {key: [float(v) for v in values] for key, values in history.history.items()}
    record["best_epoch"] = [float(int(np.argmin(record["val_loss"])) + 1)]
    return model, record


def predict_proba(model: Any, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """P(female) for each descriptor row, float64 (n,), computed in the model's own dtype."""
    x = np.asarray(x, np.float64 if _is_numpy(model) else _input_dtype(model))
    if x.ndim != 2:
        raise HeadError(f"descriptors must be (n, dim), got {x.shape}")
    expected = _input_dim(model)
    if x.shape[1] != expected:
        raise HeadError(f"descriptors are {x.shape[1]}-d but the head expects {expected}-d: they come from another backbone")
    if len(x) == 0:
        return np.zeros(0)
    if _is_numpy(model):
        return model(x)
    if len(x) <= batch_size:  # one traced call: no model.predict set-up, no eager overhead (154 -> 8 ms for a classifier)
        return np.asarray(_traced(model)(x), np.float64).reshape(-1)
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), np.float64).reshape(-1)


_TRACED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _traced(model: Any) -> Any:
    """``model(x, training=False)`` as a ``tf.function`` for any batch size, traced once per model."""
    if model not in _TRACED:
        import tensorflow as tf

        @tf.autograph.experimental.do_not_convert
        def call(x: Any) -> Any:
            return model(x, training=False)

        _TRACED[model] = tf.function(call, input_signature=[tf.TensorSpec((None, _input_dim(model)), _input_dtype(model))])
    return _TRACED[model]


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

    _check_split("train", np.asarray(x_train), np.asarray(y_train))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced", random_state=seed))
    return model.fit(x_train, y_train)


# --------------------------------------------------------------------------- save / load


def versions() -> dict[str, str]:
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


def save_head(model: Any, meta: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Save ``<name>.keras`` and ``<name>.json`` (metadata) atomically."""
    path = Path(path)
    if path.suffix != ".keras":
        raise HeadError(f"{path}: a head is saved with the .keras suffix")
    meta = {
        "format": "gender_lib.head/1",
        "classes": list(CLASSES),
        "output": "P(female)",
        "versions": versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **meta,
    }
    text = json.dumps(meta, indent=2, default=str) + "\n"
    publish_together([(path, lambda tmp: model.save(tmp)), (path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text))])
    return path


class NumpyHead:
    """A saved head's forward pass in NumPy, read straight from the ``.keras`` archive.

    Single-photo prediction uses it: importing TensorFlow costs seconds there, while this reads
    the archive's ``config.json`` and ``model.weights.h5`` (h5py) and computes the same
    P(female) (tested to 1e-6 against Keras). Only the layers a head is built from are known.
    """

    LAYERS = ("InputLayer", "Normalization", "Dense", "Dropout")
    numpy_forward = True

    def __init__(self, path: str | os.PathLike[str]):
        import io
        import zipfile

        import h5py

        self.path = Path(path)
        with zipfile.ZipFile(self.path) as archive:
            config = json.loads(archive.read("config.json"))
            weights = archive.read("model.weights.h5")
        layers = config["config"]["layers"]
        unknown = sorted({layer["class_name"] for layer in layers} - set(self.LAYERS))
        if unknown:
            raise HeadError(f"{self.path}: layers {unknown} have no NumPy forward pass; load it with backend='keras'")
        with h5py.File(io.BytesIO(weights), "r") as h5:
            stored = {}
            for group in h5["layers"].values():
                variables = group["vars"]
                stored[variables.attrs["name"]] = [np.asarray(variables[str(i)]) for i in range(len(variables))]
        self.steps: list[tuple[str, Any]] = []
        for layer in layers:
            kind, name = layer["class_name"], layer["config"]["name"]
            if kind == "Normalization":
                mean, variance = stored[name][0], stored[name][1]
                self.steps.append(("normalize", (mean.astype(np.float64), np.maximum(np.sqrt(variance.astype(np.float64)), 1e-7))))
            elif kind == "Dense":
                activation = layer["config"].get("activation", "linear")
                if activation not in ("relu", "sigmoid", "linear"):
                    raise HeadError(f"{self.path}: activation {activation!r} has no NumPy forward pass")
                kernel, bias = stored[name]
                self.steps.append((activation, (kernel.astype(np.float64), bias.astype(np.float64))))
            elif kind == "InputLayer":
                shape = layer["config"].get("batch_shape") or layer["config"].get("batch_input_shape")
                self.dim = int(shape[-1])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """P(female) for descriptors (n, dim), float64 (n,)."""
        out = np.asarray(x, np.float64)
        for kind, params in self.steps:
            if kind == "normalize":
                out = (out - params[0]) / params[1]
                continue
            out = out @ params[0] + params[1]
            if kind == "relu":
                out = np.maximum(out, 0.0)
            elif kind == "sigmoid":
                out = 1.0 / (1.0 + np.exp(-out))
        return out.reshape(-1)


def _input_dim(model: Any) -> int:
    return model.dim if _is_numpy(model) else int(model.inputs[0].shape[-1])


def _input_dtype(model: Any) -> str:
    return str(model.inputs[0].dtype)


def _is_numpy(model: Any) -> bool:
    """A forward pass in NumPy (:class:`NumpyHead`, :class:`gender_lib.finetune.NumpyFlipHead`)."""
    return bool(getattr(model, "numpy_forward", False))


def load_head(path: str | os.PathLike[str], backend: str = "keras") -> tuple[Any, dict[str, Any]]:
    """Load a saved head and its metadata; a clear :class:`HeadError` if either is missing or damaged.

    ``backend="numpy"`` gives a :class:`NumpyHead` (no TensorFlow import) for prediction only.
    Heads and classifiers alike (``.keras`` or ``.npz``): :func:`gender_lib.finetune.load_any`.
    """
    path = Path(path)
    side = path.with_suffix(".json")
    if not path.is_file():
        raise UserFileNotFoundError(f"{path}: no trained head here; run notebooks/03_train.ipynb or `gender-lib train`, or name another with --head")
    try:
        meta = json.loads(side.read_text())
        if meta.get("format") != "gender_lib.head/1":
            raise ValueError("not a gender_lib head")
    except (OSError, ValueError) as error:
        raise HeadError(f"{side}: head metadata missing or damaged ({error}); retrain or restore the checkpoint") from None
    try:
        if backend == "numpy":
            model: Any = NumpyHead(path)
        else:
            import keras

            model = keras.models.load_model(path, compile=False)
    except HeadError:
        raise
    except Exception as error:  # noqa: BLE001 - Keras, zipfile and h5py raise many types for damaged archives
        raise HeadError(f"{path}: cannot load the head ({type(error).__name__}: {error}); the file is corrupt, retrain or restore it") from None
    expected = _input_dim(model)
    if expected != int(meta.get("descriptor_dim", expected)):
        raise HeadError(f"{path}: model expects {expected}-d input but its metadata says {meta['descriptor_dim']}-d")
    return model, meta


def finetuned_levels(meta: dict[str, Any]) -> str:
    """Which of dlib's levels a classifier's head reads or tuned, in words."""
    if meta.get("mode") == "features":
        return "descriptor + pooled levels 2, 1, 0: 768-d, frozen"
    levels = int(meta.get("config", {}).get("finetune_levels", 1))
    plural = "s" if levels > 1 else ""
    if not meta.get("tuned_kept", True):
        return f"top {levels} residual level{plural} + fc fine-tuned, discarded: no epoch lowered the validation loss"
    return f"top {levels} residual level{plural} + fc tuned"


def describe(meta: dict[str, Any]) -> str:
    """Rounded, stable summary of a trained head (what notebooks print)."""
    history = meta.get("history", {})
    best = int(history.get("best_epoch", [0])[0])
    val = meta["val_metrics"]
    counts = meta["counts"]
    return "\n".join(
        [
            f"backbone: {meta['backbone']['id']} ({meta['descriptor_dim']}-d)",
            f"split ({meta['manifest']['protocol']}{', LEAKY' if meta['manifest'].get('leaky') else ''}): "
            f"train {counts['train']}, val {counts['val']}, test {counts['test']}",
            f"head: widths {meta['config']['widths']}, dropout {meta['config']['dropout']}, l2 {meta['config']['l2']}, "
            f"seed {meta.get('seed', meta['config'].get('seed'))}",
            f"mode {meta.get('mode', 'frozen')}"
            + (f" ({finetuned_levels(meta)}, flip averaging {'on' if meta.get('flip_tta') else 'off'})" if meta.get("mode", "frozen") != "frozen" else "")
            + (f"; head epochs 1-{history['finetune_from']}, fine-tuning after" if history.get("finetune_from") else ""),
            f"best epoch {best} of {len(history.get('loss', []))}; threshold (chosen on val) {meta['threshold']:.3f}",
            f"val: accuracy {val['accuracy']:.3f}, macro F1 {val['macro_f1']:.3f}, ROC-AUC {val['roc_auc']:.3f}",
            f"logistic-regression baseline val: accuracy {meta['baseline_val_metrics']['accuracy']:.3f}, ROC-AUC {meta['baseline_val_metrics']['roc_auc']:.3f}",
        ]
    )
