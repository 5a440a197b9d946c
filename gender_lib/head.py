"""The gender head: a small MLP on face descriptors, plus a logistic-regression baseline.

Default architecture as in the original work: Dense 16 relu, Dense 16 relu, Dropout 0.4,
Dense 1 sigmoid, with the descriptor standardised by a Normalization layer fitted on the
training split (saved inside the model). The output is P(female); the loss is binary
cross-entropy on probabilities (the original work's ``from_logits=True`` on a sigmoid was a
bug). Training is seeded and deterministic on CPU; early stopping on validation loss
restores the best weights. The decision threshold is chosen on validation data only.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gender_lib.fileio import atomic_write, write_json

CLASSES = ("M", "F")  # label 0 = male, 1 = female; the head outputs P(female)


class HeadError(ValueError):
    """Bad training data or a checkpoint that cannot be used; the message says what to do."""


@dataclasses.dataclass
class HeadConfig:
    """Everything that defines a training run of the head."""

    widths: tuple[int, ...] = (16, 16)
    dropout: float = 0.4
    l2: float = 0.0
    learning_rate: float = 1e-3
    batch_size: int = 64
    epochs: int = 100
    patience: int = 8
    class_balance: bool = True
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "widths": list(self.widths)}


def labels_from_genders(genders: Sequence[str]) -> np.ndarray:
    """'M'/'F' -> 0/1 (int); anything else is an error naming it."""
    genders = np.asarray(genders).astype(str)
    bad = sorted(set(genders) - set(CLASSES))
    if bad:
        raise HeadError(f"gender labels must be 'M' or 'F', found {bad[:5]}")
    return (genders == "F").astype(np.int32)


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


def build_head(dim: int, config: HeadConfig | None = None, x_train: np.ndarray | None = None) -> Any:
    """The MLP, with its input Normalization adapted to ``x_train`` when given."""
    import keras

    config = config or HeadConfig()
    regularizer = keras.regularizers.L2(config.l2) if config.l2 else None
    inputs = keras.Input((dim,), name="descriptor")
    normalize = keras.layers.Normalization(name="standardize")
    if x_train is not None:
        normalize.adapt(np.asarray(x_train, np.float32))
    x = normalize(inputs)
    for i, width in enumerate(config.widths):
        x = keras.layers.Dense(width, activation="relu", kernel_regularizer=regularizer, name=f"dense{i + 1}")(x)
    if config.dropout:
        x = keras.layers.Dropout(config.dropout, seed=config.seed, name="dropout")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", kernel_regularizer=regularizer, name="p_female")(x)
    return keras.Model(inputs, outputs, name="gender_head")


def train_head(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
    config: HeadConfig | None = None, verbose: int = 0,
) -> tuple[Any, dict[str, list[float]]]:
    """Train with Adam and binary cross-entropy; returns (model with best weights, history)."""
    import keras
    import tensorflow as tf

    config = config or HeadConfig()
    x_train, x_val = np.asarray(x_train, np.float32), np.asarray(x_val, np.float32)
    y_train, y_val = np.asarray(y_train, np.float32), np.asarray(y_val, np.float32)
    _check_split("train", x_train, y_train)
    _check_split("val", x_val, y_val, x_train.shape[1])
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()  # same seed -> same weights on CPU
    model = build_head(x_train.shape[1], config, x_train)
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
        x_train, y_train, validation_data=(x_val, y_val), epochs=config.epochs, batch_size=config.batch_size,
        class_weight=class_weight, callbacks=[stop], shuffle=True, verbose=verbose,
    )
    record = {key: [float(v) for v in values] for key, values in history.history.items()}
    record["best_epoch"] = [float(int(np.argmin(record["val_loss"])) + 1)]
    return model, record


def predict_proba(model: Any, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """P(female) for each descriptor row, float64 (n,)."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise HeadError(f"descriptors must be (n, dim), got {x.shape}")
    expected = int(model.inputs[0].shape[-1])
    if x.shape[1] != expected:
        raise HeadError(f"descriptors are {x.shape[1]}-d but the head expects {expected}-d: they come from another backbone")
    if len(x) == 0:
        return np.zeros(0)
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), np.float64).reshape(-1)


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

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "scikit-learn": sklearn.__version__}


def save_head(model: Any, meta: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Save ``<name>.keras`` and ``<name>.json`` (metadata) atomically."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"{path}: a head is saved with the .keras suffix")
    meta = {"format": "gender_lib.head/1", "classes": list(CLASSES), "output": "P(female)",
            "versions": versions(), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **meta}
    atomic_write(path, lambda tmp: model.save(tmp))
    write_json(path.with_suffix(".json"), meta)
    return path


def load_head(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """Load a saved head and its metadata; a clear :class:`HeadError` if either is missing or damaged."""
    import keras

    path = Path(path)
    side = path.with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained head here; run notebooks/03_train.ipynb or `gender-lib train`")
    try:
        meta = json.loads(side.read_text())
        if meta.get("format") != "gender_lib.head/1":
            raise ValueError("not a gender_lib head")
    except (OSError, ValueError) as error:
        raise HeadError(f"{side}: head metadata missing or damaged ({error}); retrain or restore the checkpoint") from None
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - Keras raises many types for damaged archives
        raise HeadError(f"{path}: cannot load the head ({type(error).__name__}: {error}); the file is corrupt, retrain or restore it") from None
    expected = int(model.inputs[0].shape[-1])
    if expected != int(meta.get("descriptor_dim", expected)):
        raise HeadError(f"{path}: model expects {expected}-d input but its metadata says {meta['descriptor_dim']}-d")
    return model, meta


# --------------------------------------------------------------------------- from a workdir (what notebooks and the CLI call)


@dataclasses.dataclass
class TrainResult:
    """A trained head with its metadata, history and the baseline trained beside it."""

    model: Any
    meta: dict[str, Any]
    history: dict[str, list[float]]
    baseline: Any
    path: Path


def load_split_descriptors(workdir: str | os.PathLike[str], backbone: dict[str, Any] | None = None, cache_root: str | os.PathLike[str] | None = None) -> tuple[Any, np.ndarray, dict[str, Any], dict[str, Any]]:
    """(manifest rows with descriptors, descriptors, extraction info, manifest meta) for a workdir.

    ``backbone`` (a head's recorded backbone) must match the descriptors the workdir was
    extracted with; a mismatch is a clear error rather than silently wrong predictions.
    """
    from gender_lib import dataset as ds
    from gender_lib.features import CacheMismatchError, open_cache

    workdir = Path(workdir)
    data = ds.read_manifest(workdir / "manifest.csv")
    info_path = workdir / "extraction.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path}: no descriptors were extracted for this manifest; run notebooks/02_extract.ipynb or `gender-lib extract`")
    info = json.loads(info_path.read_text())
    used = backbone or info["backbone"]
    if backbone is not None and backbone.get("id") != info["backbone"]["id"]:
        raise CacheMismatchError(f"the head was trained on {backbone.get('id')} descriptors but {workdir} was extracted with {info['backbone']['id']}; "
                                 f"extract again with that backbone or evaluate a head trained on it")
    # Rows whose image failed to decode at extraction have no descriptor; the cache is opened once.
    cache = open_cache(used["id"], int(used["dim"]), cache_root)
    table = data.table[data.table["sha256"].map(cache.__contains__)].reset_index(drop=True)
    x = cache.get(table["sha256"].tolist())
    return table, x, info, data.meta


def fit_from_workdir(
    workdir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: HeadConfig | None = None,
    cache_root: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Train the head on a workdir's train split, pick the threshold on val, save it with metadata."""
    config = config or HeadConfig()
    table, x, info, manifest_meta = load_split_descriptors(workdir, cache_root=cache_root)
    y = labels_from_genders(table["gender"])
    train, val = (table["split"] == "train").to_numpy(), (table["split"] == "val").to_numpy()
    model, history = train_head(x[train], y[train], x[val], y[val], config)
    p_val = predict_proba(model, x[val])
    threshold = choose_threshold(y[val], p_val)
    baseline = logistic_baseline(x[train], y[train], seed=config.seed)
    from gender_lib.evaluate import classification_metrics

    val_metrics = classification_metrics(y[val], p_val, threshold)
    baseline_val = classification_metrics(y[val], baseline.predict_proba(x[val])[:, 1], 0.5)
    meta = {
        "backbone": info["backbone"],
        "descriptor_dim": int(x.shape[1]),
        "preprocessing": info["backbone"].get("preprocessing"),
        "manifest": {"sha256": manifest_meta.get("manifest_sha256"), "protocol": manifest_meta.get("protocol"),
                     "leaky": manifest_meta.get("leaky"), "seed": manifest_meta.get("seed"), "layout": manifest_meta.get("layout"),
                     "root": manifest_meta.get("root"), "sample_size": manifest_meta.get("sample_size", 0)},
        "counts": {s: int((table["split"] == s).sum()) for s in ("train", "val", "test")},
        "threshold": threshold,
        "config": config.to_dict(),
        "val_metrics": {k: val_metrics[k] for k in ("accuracy", "balanced_accuracy", "roc_auc", "ece")} | {"macro_f1": val_metrics["macro"]["f1"]},
        "baseline_val_metrics": {"accuracy": baseline_val["accuracy"], "macro_f1": baseline_val["macro"]["f1"], "roc_auc": baseline_val["roc_auc"]},
        "history": history,
    }
    path = save_head(model, meta, out)
    return TrainResult(model, json.loads(path.with_suffix(".json").read_text()), history, baseline, path)


def describe(meta: dict[str, Any]) -> str:
    """Rounded, stable summary of a trained head (what notebooks print)."""
    history = meta.get("history", {})
    best = int(history.get("best_epoch", [0])[0])
    val = meta["val_metrics"]
    counts = meta["counts"]
    return "\n".join([
        f"backbone: {meta['backbone']['id']} ({meta['descriptor_dim']}-d)",
        f"split ({meta['manifest']['protocol']}{', LEAKY' if meta['manifest'].get('leaky') else ''}): train {counts['train']}, val {counts['val']}, test {counts['test']}",
        f"head: widths {meta['config']['widths']}, dropout {meta['config']['dropout']}, l2 {meta['config']['l2']}, seed {meta['config']['seed']}",
        f"best epoch {best} of {len(history.get('loss', []))}; threshold (chosen on val) {meta['threshold']:.3f}",
        f"val: accuracy {val['accuracy']:.3f}, macro F1 {val['macro_f1']:.3f}, ROC-AUC {val['roc_auc']:.3f}",
        f"logistic-regression baseline val: accuracy {meta['baseline_val_metrics']['accuracy']:.3f}, ROC-AUC {meta['baseline_val_metrics']['roc_auc']:.3f}",
    ])
