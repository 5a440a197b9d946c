"""Past the frozen descriptor: multi-level features and fine-tuning dlib's top residual levels.

Both start from the dlib backbone's ``level2`` output (:data:`gender_lib.backbones.OUTPUTS`):
the 8x8x128 activation map after the third residual level, for the face chip and for its mirror
image, cached like descriptors. Everything above that map is a fifth of the network's work, so
training it for an epoch over 20k faces takes minutes on two cores instead of hours.

* ``features`` (frozen): the descriptor plus the global-average-pooled outputs of the last three
  residual levels (128 + 256 + 256 + 128 = 768-d); the head is trained on both views.
* ``finetune``: the head is trained on the frozen descriptors first (a fresh head trained together
  with the network is unstable), then the top ``levels`` residual levels and the fc layer are
  trained with it: Adam with a step of ``finetune_learning_rate`` times each weight tensor's RMS
  for the network (its conv weights differ in scale by orders of magnitude) and a tenth of the
  head's learning rate for the head, a random view (face or mirror image) per face and epoch, early
  stopping on validation loss. dlib's affine layers stay fixed (they hold no batch statistics).

Where no fine-tuning epoch lowers the validation loss, dlib's weights are kept unchanged and
nothing of them is saved (``tuned_kept`` false in the sidecar).

The result is a :class:`keras.Model` from the ``level2`` vector (n, 16384) to P(female),
averaging the two views when ``flip_tta``: stages, the predictor and the widget use it as they use a
head. It is saved as ``<name>.npz`` (the weights that differ from dlib's: the tuned levels in
float16, the head in float32) with a ``<name>.json`` sidecar recording the npz's sha256, checked
on load; the rest is rebuilt from the verified conversion of dlib's model.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from gender_lib.backbones import LEVEL2_DIM, LEVEL2_LAYER, LEVEL2_SHAPE
from gender_lib.config import HeadConfig
from gender_lib.errors import GenderLibError, UserFileNotFoundError
from gender_lib.fileio import publish_together, sha256_bytes, sha256_file

log = logging.getLogger(__name__)

FORMAT = "gender_lib.classifier/1"
#: Where the trainable part starts for ``finetune_levels`` 1 (the last level, 2x2x256) and 2 (also the 4x4x256 one).
SPLIT_LAYERS = {1: "relu_117", 2: LEVEL2_LAYER}
#: Layers whose global average pool joins the descriptor in ``features`` mode (level 2's is the input itself).
POOLED_LAYERS = ("relu_117", "relu_128")
FEATURES_DIM = 128 + 256 + 256 + 128
#: Fine-tuning stops after this many epochs without a lower validation loss (best weights restored).
FINETUNE_PATIENCE = 2
MODES = ("features", "finetune")


class ClassifierError(GenderLibError, ValueError):
    """A saved classifier that cannot be used (damaged, changed, another network)."""


# --------------------------------------------------------------------------- the network's parts


def dlib_model(cache_root: str | os.PathLike[str] | None = None) -> Any:
    """A fresh copy of dlib's network converted to Keras (verified on conversion; converted on first use)."""
    from gender_lib.converters import dlib_keras

    model, _ = dlib_keras.load(dlib_keras.ensure_converted(cache_root))
    return model


def part(model: Any, start: str, end: str | None = None, name: str = "part") -> Any:
    """The layers of ``model`` from after ``start`` up to ``end`` (default: the output) as a model."""
    import keras

    return keras.Model(model.get_layer(start).output, model.get_layer(end).output if end else model.output, name=name)


def chain(first: Any, second: Any) -> Any:
    """``second(first(x))`` as one model."""
    import keras

    inputs = keras.Input(first.inputs[0].shape[1:], name="level2_map")
    return keras.Model(inputs, second(first(inputs)), name="trunk")


def features_model(model: Any) -> Any:
    """(n, 8, 8, 128) level-2 map -> (n, 768): pooled level 2, 1, 0 outputs and the descriptor."""
    import keras

    top = keras.Model(model.get_layer(LEVEL2_LAYER).output, [*(model.get_layer(n).output for n in POOLED_LAYERS), model.output])
    inputs = keras.Input(LEVEL2_SHAPE, name="level2_map")
    *maps, descriptor = top(inputs)
    pooled = [keras.layers.GlobalAveragePooling2D(name=f"pool_{i}")(m) for i, m in enumerate([inputs, *maps])]
    return keras.Model(inputs, keras.layers.Concatenate(name="levels_and_descriptor")([*pooled, descriptor]), name="dlib_features")


def frozen_descriptors(x: np.ndarray, cache_root: str | os.PathLike[str] | None = None) -> np.ndarray:
    """(n, 128) dlib descriptors of the faces (not the mirror images) of level2 vectors: what
    mode frozen and the logistic-regression baseline read (equal to the descriptor output to 1e-5, tested)."""
    return apply(part(dlib_model(cache_root), LEVEL2_LAYER, None, "top_levels"), views(x)[:, 0])


def views(x: np.ndarray) -> np.ndarray:
    """(n, 16384) level2 vectors -> (n, 2, 8, 8, 128): the face's map, then its mirror image's."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] != LEVEL2_DIM:
        raise ClassifierError(f"expected level2 vectors (n, {LEVEL2_DIM}), got {x.shape}: extract with the level2 output (mode features/finetune)")
    return x.reshape(len(x), 2, *LEVEL2_SHAPE)


def apply(model: Any, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """``model`` over the first axis in batches (no ``predict`` set-up per call), float32."""
    if len(x) == 0:
        return np.zeros((0, *model.outputs[0].shape[1:]), np.float32)
    return np.concatenate([np.asarray(model(x[i : i + batch_size], training=False), np.float32) for i in range(0, len(x), batch_size)])


def per_view(model: Any, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """``model`` on both views of level2 vectors: (n, 2, *output)."""
    v = views(x)
    out = apply(model, v.reshape(-1, *LEVEL2_SHAPE), batch_size)
    return out.reshape(len(v), 2, *out.shape[1:])


# --------------------------------------------------------------------------- the classifier


def build_classifier(trunk: Any, head: Any, flip_tta: bool = True) -> Any:
    """(n, 16384) level2 vectors -> (n, 1) P(female): ``head(trunk(view))``, averaged over the
    face and its mirror image when ``flip_tta``, else of the face alone."""
    import keras

    inputs = keras.Input((LEVEL2_DIM,), name="level2")
    maps = keras.layers.Reshape((2, *LEVEL2_SHAPE), name="views")(inputs)
    p_face = head(trunk(maps[:, 0]))
    if not flip_tta:
        return keras.Model(inputs, p_face, name="gender_classifier")
    p_mirror = head(trunk(maps[:, 1]))
    return keras.Model(inputs, keras.layers.Average(name="flip_average")([p_face, p_mirror]), name="gender_classifier")


def _class_weights(y: np.ndarray, balance: bool) -> np.ndarray:
    if not balance:
        return np.ones(2, np.float32)
    counts = np.bincount(y.astype(int), minlength=2)
    return (len(y) / (2.0 * np.maximum(counts, 1))).astype(np.float32)


def train(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    mode: str,
    config: HeadConfig | None = None,
    seed: int = 0,
    cache_root: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Train a ``features`` or ``finetune`` classifier on level2 vectors; returns (model, record).

    The record holds the history (per-epoch loss/accuracy of the head's training and, for
    finetune, of the joint training) and ``parts``: the sub-models whose weights are saved.
    Fine-tuned weights are rounded to float16 before returning, so what is evaluated is what is saved.
    """
    import keras
    import tensorflow as tf

    from gender_lib import head as hd

    if mode not in MODES:
        raise ClassifierError(f"mode must be one of {list(MODES)}, got {mode!r}")
    config = config or HeadConfig()
    y_train, y_val = np.asarray(y_train, np.float32), np.asarray(y_val, np.float32)
    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    model = dlib_model(cache_root)
    if mode == "features":
        trunk = features_model(model)
        f_train, f_val = per_view(trunk, x_train), per_view(trunk, x_val)
        # Both views are training faces (mirror-image augmentation); validation scores the face itself.
        head, history = hd.train_head(f_train.reshape(-1, FEATURES_DIM), np.repeat(y_train, 2), f_val[:, 0], y_val, config, seed=seed, dtype="float32")
        record = {"history": history, "parts": {"head": head}, "trunk": "features"}
    else:
        levels = config.finetune_levels
        fixed = part(model, LEVEL2_LAYER, SPLIT_LAYERS[levels], "fixed_levels") if levels == 1 else None
        tuned = part(model, SPLIT_LAYERS[levels], None, "tuned_levels")
        for layer in tuned.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False  # dlib's affine layers: fixed scale and shift, inference mode

        def split_input(x: np.ndarray) -> np.ndarray:
            return per_view(fixed, x) if fixed is not None else views(x)

        z_train, z_val = split_input(x_train), split_input(x_val)
        d_train, d_val = apply(tuned, z_train.reshape(-1, *z_train.shape[2:])), apply(tuned, z_val[:, 0])
        head, head_history = hd.train_head(d_train, np.repeat(y_train, 2), d_val, y_val, config, seed=seed, dtype="float32")
        tuned_history = _finetune(tuned, head, z_train, y_train, z_val, y_val, config, seed, progress)
        history = join_histories(head_history, tuned_history)
        kept = tuned_history["best_epoch"] > 0  # else no epoch lowered the validation loss: dlib's weights stay as they are
        parts = {"head": head}
        if kept:
            parts["tuned"] = tuned
            round_to_float16(tuned)  # what is saved is float16: evaluate exactly that
        trunk = chain(fixed, tuned) if fixed is not None else tuned
        record = {"history": history, "parts": parts, "trunk": f"finetune-{levels}", "tuned_kept": kept}
    classifier = build_classifier(trunk, head, config.flip_tta)
    record["per_view_model"] = chain(trunk, head)  # one (8, 8, 128) map -> P(female), for comparisons
    record["head_config"] = {"dim": int(head.inputs[0].shape[-1]), "widths": list(config.widths), "dropout": config.dropout}
    record["train_seconds"] = time.perf_counter() - started
    return classifier, record


def round_to_float16(tuned: Any) -> None:
    """Round the trainable layers' weights to float16 in place: exactly what :func:`save` stores."""
    for layer in tuned.layers:
        if layer.weights and layer.trainable:
            layer.set_weights([w.astype(np.float16).astype(np.float32) for w in layer.get_weights()])


def join_histories(head_history: dict[str, Any], tuned: dict[str, Any]) -> dict[str, Any]:
    """One history for the curves: the head's epochs, then the fine-tuning epochs.

    ``finetune_from``: the last head epoch (fine-tuning starts from the head's best weights);
    ``finetune_start``: the validation scores at that start, flip-averaged like every fine-tuning
    epoch's (the head's epochs score the face alone); ``best_epoch``: the epoch whose weights were
    kept (a head epoch where fine-tuning never lowered the validation loss)."""
    head_epochs = len(head_history["loss"])
    out = {key: list(head_history[key]) + list(tuned[key]) for key in ("loss", "accuracy", "val_loss", "val_accuracy")}
    best = int(head_history["best_epoch"][0]) if tuned["best_epoch"] == 0 else head_epochs + int(tuned["best_epoch"])
    return out | {"best_epoch": [float(best)], "finetune_from": head_epochs, "finetune_start": tuned["start"], "finetune_reading": tuned["reading"]}


def _finetune(
    tuned: Any, head: Any, z_train: np.ndarray, y_train: np.ndarray, z_val: np.ndarray, y_val: np.ndarray, config: HeadConfig, seed: int, progress: bool
) -> dict[str, Any]:
    """Train ``tuned`` and ``head`` together (in place); keep the weights of the lowest val loss."""
    import keras
    import tensorflow as tf
    from tqdm.auto import tqdm

    net_vars = tuned.trainable_variables
    head_vars = head.trainable_variables
    # dlib folded its batch norm into tiny conv weights (mean |w| ~ 1e-3) and large affine scales:
    # one absolute learning rate would move some layers by percents per step. Each network variable
    # gets its own Adam whose step is finetune_learning_rate times the variable's RMS.
    net_opts = [keras.optimizers.Adam(config.finetune_learning_rate * max(float(np.sqrt(np.mean(np.square(v.numpy())))), 1e-8)) for v in net_vars]
    head_opt = keras.optimizers.Adam(config.learning_rate / 10)
    bce = keras.losses.BinaryCrossentropy(reduction="none")
    weights = tf.constant(_class_weights(y_train, config.class_balance))

    @tf.function(reduce_retracing=True)
    def step(z: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            p = head(tuned(z, training=True), training=True)
            loss = tf.reduce_mean(bce(y[:, None], p) * tf.gather(weights, tf.cast(y, tf.int32)))
        grads = tape.gradient(loss, net_vars + head_vars)
        for opt, grad, var in zip(net_opts, grads, net_vars):
            opt.apply_gradients([(grad, var)])
        head_opt.apply_gradients(zip(grads[len(net_vars) :], head_vars))
        return loss, tf.reduce_sum(tf.cast(tf.equal(p[:, 0] >= 0.5, y >= 0.5), tf.float32))

    def val_scores() -> tuple[float, float]:
        p = np.mean([apply(head, apply(tuned, z_val[:, v]))[:, 0] for v in ((0, 1) if config.flip_tta else (0,))], axis=0)
        p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
        loss = float(-np.mean(y_val * np.log(p) + (1 - y_val) * np.log(1 - p)))
        return loss, float(np.mean((p >= 0.5) == (y_val == 1)))

    rng = np.random.default_rng(seed)
    batch = config.head_batch_size
    loss, acc = val_scores()
    history: dict[str, Any] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    history |= {"start": {"val_loss": loss, "val_accuracy": acc}, "reading": "flip-averaged" if config.flip_tta else "face"}
    best = (loss, [v.numpy() for v in net_vars + head_vars], 0)
    log.info("fine-tuning: before, val loss %.4f, accuracy %.4f", loss, acc)
    for epoch in range(1, config.finetune_epochs + 1):
        order = rng.permutation(len(z_train))
        view = rng.integers(0, 2, len(z_train))  # the face or its mirror image, afresh each epoch
        losses, right = [], 0.0
        # Whole batches only (one trace of the step); the few faces left over change every epoch.
        starts = range(0, max(len(order) - batch, 0) + 1, batch)
        bar = tqdm(starts, desc=f"fine-tune epoch {epoch}/{config.finetune_epochs}", unit="batch", disable=not progress, leave=False)
        for i in bar:
            idx = order[i : i + batch]
            batch_loss, batch_right = step(tf.constant(z_train[idx, view[idx]]), tf.constant(y_train[idx]))
            losses.append(float(batch_loss) * len(idx))
            right += float(batch_right)
        seen = sum(len(order[i : i + batch]) for i in starts)
        loss, acc = val_scores()
        history["loss"].append(float(np.sum(losses) / seen))
        history["accuracy"].append(right / seen)
        history["val_loss"].append(loss)
        history["val_accuracy"].append(acc)
        log.info("fine-tune epoch %d: train loss %.4f, val loss %.4f, val accuracy %.4f", epoch, history["loss"][-1], loss, acc)
        if loss < best[0]:
            best = (loss, [v.numpy() for v in net_vars + head_vars], epoch)
        elif epoch - best[2] >= FINETUNE_PATIENCE:
            break
    for variable, value in zip(net_vars + head_vars, best[1]):
        variable.assign(value)
    history["best_epoch"] = best[2]
    return history


# --------------------------------------------------------------------------- save / load


def _stored(part_model: Any, dtype: Any) -> dict[str, np.ndarray]:
    out = {}
    for layer in part_model.layers:
        for i, w in enumerate(layer.get_weights()):
            out[f"{part_model.name}/{layer.name}/{i}"] = np.asarray(w, dtype)
    return out


def save(classifier: Any, record: dict[str, Any], meta: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """``<name>.npz`` (the tuned levels' trainable layers in float16, the head in float32) and
    ``<name>.json`` (``meta`` plus the npz's sha256), published together."""
    import keras

    from gender_lib import head as hd

    path = Path(path)
    if path.suffix != ".npz":
        raise ClassifierError(f"{path}: a {meta.get('mode')} classifier is saved with the .npz suffix")
    arrays = _stored(record["parts"]["head"], np.float32)
    if "tuned" in record["parts"]:
        tuned = record["parts"]["tuned"]
        for layer in tuned.layers:
            if layer.trainable and layer.weights and not isinstance(layer, keras.layers.BatchNormalization):
                for i, w in enumerate(layer.get_weights()):
                    arrays[f"tuned/{layer.name}/{i}"] = np.asarray(w, np.float16)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    data = buffer.getvalue()
    full = {
        "format": FORMAT,
        "classes": ["M", "F"],
        "output": "P(female)",
        "trunk": record["trunk"],
        "tuned_kept": bool(record.get("tuned_kept", False)),
        "head_config": record["head_config"],
        "weights_sha256": sha256_bytes(data),
        "weights_bytes": len(data),
        "versions": hd.versions(),
        **meta,
    }
    text = json.dumps(full, indent=2, default=str) + "\n"
    publish_together([(path, lambda tmp: Path(tmp).write_bytes(data)), (path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text))])
    return path


def load(path: str | os.PathLike[str], cache_root: str | os.PathLike[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """Rebuild a saved classifier: dlib's verified network, the stored weights (hash checked)."""
    from gender_lib import head as hd

    path = Path(path)
    side = path.with_suffix(".json")
    meta, arrays = _read_checked(path)
    model = dlib_model(cache_root)
    head_config = meta["head_config"]
    head = hd.build_head(int(head_config["dim"]), HeadConfig(widths=tuple(head_config["widths"]), dropout=float(head_config["dropout"])), dtype="float32")
    _restore(head, arrays, "gender_head")
    trunk_kind = meta["trunk"]
    if trunk_kind == "features":
        trunk = features_model(model)
    elif trunk_kind.startswith("finetune-"):
        levels = int(trunk_kind.split("-")[1])
        tuned = part(model, SPLIT_LAYERS[levels], None, "tuned_levels")
        _restore(tuned, arrays, "tuned", only_stored=True)
        trunk = chain(part(model, LEVEL2_LAYER, SPLIT_LAYERS[levels], "fixed_levels"), tuned) if levels == 1 else tuned
    else:
        raise ClassifierError(f"{side}: unknown trunk {trunk_kind!r}")
    return build_classifier(trunk, head, bool(meta.get("flip_tta", True))), meta


def _read_checked(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(sidecar, arrays) of a saved classifier: format and sha256 checked."""
    side = path.with_suffix(".json")
    if not path.is_file():
        raise UserFileNotFoundError(f"{path}: no trained classifier here; run notebooks/03_train.ipynb or `gender-lib train` with mode features or finetune")
    try:
        meta = json.loads(side.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} sidecar")
    except (OSError, ValueError) as error:
        raise ClassifierError(f"{side}: classifier metadata missing or damaged ({error}); retrain or restore the checkpoint") from None
    if sha256_file(path) != meta.get("weights_sha256"):
        raise ClassifierError(f"{path}: its weights do not match the sha256 in {side.name} (changed or half-written); retrain or restore the checkpoint")
    with np.load(path, allow_pickle=False) as stored:
        return meta, {k: stored[k] for k in stored.files}


def load_any(path: str | os.PathLike[str], backend: str = "keras", cache_root: str | os.PathLike[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """A saved head (``.keras``, :func:`gender_lib.head.load_head`) or classifier (``.npz``,
    :func:`load`: Keras, dlib's converted model under ``cache_root``), with its metadata.

    ``backend="numpy"`` (prediction): a head's NumPy forward pass, and a classifier whose
    fine-tuning was discarded as a :class:`NumpyFlipHead`; neither imports TensorFlow.
    """
    from gender_lib import head as hd

    if Path(path).suffix != ".npz":
        return hd.load_head(path, backend=backend)
    if backend == "numpy":
        flip_head = numpy_flip_head(path)
        if flip_head is not None:
            return flip_head, flip_head.meta
    return load(path, cache_root)


class NumpyFlipHead:
    """A finetune classifier whose fine-tuning was discarded, in NumPy: dlib's unchanged network gives
    the descriptors of the face and of its mirror image, the head (here in NumPy) scores each, and
    the two are averaged (``flip_tta``). Input: (n, 256) = [descriptor of face, of mirror image].

    Equal to :func:`load`'s Keras model on the same faces (to 1e-4, tested) without importing
    TensorFlow, so ``gender-lib predict`` of a few photos stays on dlib's own engine.
    """

    numpy_forward = True
    dim = 256

    def __init__(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]):
        self.meta = meta
        self.flip_tta = bool(meta.get("flip_tta", True))
        mean, variance = arrays["gender_head/standardize/0"], arrays["gender_head/standardize/1"]
        self.mean, self.scale = mean.astype(np.float64), np.maximum(np.sqrt(variance.astype(np.float64)), 1e-7)
        names = [f"dense{i + 1}" for i in range(len(meta["head_config"]["widths"]))] + ["p_female"]
        self.dense = [(arrays[f"gender_head/{n}/0"].astype(np.float64), arrays[f"gender_head/{n}/1"].astype(np.float64)) for n in names]

    def score(self, descriptors: np.ndarray) -> np.ndarray:
        out = (np.asarray(descriptors, np.float64) - self.mean) / self.scale
        for i, (kernel, bias) in enumerate(self.dense):
            out = out @ kernel + bias
            out = np.maximum(out, 0.0) if i < len(self.dense) - 1 else 1.0 / (1.0 + np.exp(-out))
        return out.reshape(-1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        face, mirror = self.score(x[:, :128]), self.score(x[:, 128:])
        return (face + mirror) / 2 if self.flip_tta else face


def numpy_flip_head(path: str | os.PathLike[str]) -> NumpyFlipHead | None:
    """The :class:`NumpyFlipHead` of a saved classifier where one exists (mode finetune, nothing of
    dlib's weights changed); None for the others (features, kept fine-tuning)."""
    meta, arrays = _read_checked(Path(path))
    if not str(meta.get("trunk", "")).startswith("finetune-") or meta.get("tuned_kept", True) or any(k.startswith("tuned/") for k in arrays):
        return None
    return NumpyFlipHead(meta, arrays)


class MirroredDescriptors:
    """A descriptor backbone that returns [descriptor of the face, of its mirror image] (n, 256):
    what :class:`NumpyFlipHead` reads. Faces are prepared by the wrapped backbone."""

    def __init__(self, base: Any):
        self.base = base
        self.name, self.input_size, self.preprocessing = base.name, base.input_size, base.preprocessing
        self.dim = 2 * base.dim
        self.id = f"{base.id}+mirror"
        self.engine = getattr(base, "engine", "keras")

    def prepare_face(self, rgb: np.ndarray, box: Any = None) -> np.ndarray:
        return self.base.prepare_face(rgb, box)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        return np.concatenate([self.base.embed(batch), self.base.embed(np.ascontiguousarray(batch[:, :, ::-1]))], axis=1)

    def load(self) -> MirroredDescriptors:
        if hasattr(self.base, "load"):
            self.base.load()
        return self

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "output": "descriptor of the face, then of its mirror image", "dim": self.dim, "id": self.id}

    def close(self) -> None:
        self.base.close()


def descriptor_description(level2: dict[str, Any]) -> dict[str, Any]:
    """The description (and id) of the descriptor output of the network a level2 description names."""
    from gender_lib.backbones import backbone_id

    out = {k: v for k, v in level2.items() if k not in ("output", "id")} | {"dim": 128}
    return out | {"id": backbone_id(str(out["name"]), out)}


def _restore(model: Any, arrays: dict[str, np.ndarray], prefix: str, only_stored: bool = False) -> None:
    """Set ``model``'s layers from ``arrays`` (``<prefix>/<layer>/<i>``); every stored array of the
    prefix must find its layer (``only_stored``: layers with nothing stored keep their weights)."""
    unused = {k for k in arrays if k.startswith(prefix + "/")} - {
        f"{prefix}/{layer.name}/{i}" for layer in model.layers for i in range(len(layer.get_weights()))
    }
    if unused:
        raise ClassifierError(f"stored weights {sorted(unused)[:3]} fit no layer of this network; retrain the classifier")
    for layer in model.layers:
        names = [f"{prefix}/{layer.name}/{i}" for i in range(len(layer.get_weights()))]
        if not names or (only_stored and names[0] not in arrays):
            continue
        try:
            layer.set_weights([arrays[n].astype(np.float32) for n in names])
        except (KeyError, ValueError) as error:
            raise ClassifierError(f"the stored weights do not fit layer {layer.name} ({error}); retrain the classifier") from None
        if hasattr(layer, "finalize_state"):
            layer.finalize_state()  # Normalization computes its mean and variance from the stored state here


__all__ = [
    "FEATURES_DIM",
    "FORMAT",
    "ClassifierError",
    "MirroredDescriptors",
    "NumpyFlipHead",
    "build_classifier",
    "features_model",
    "load",
    "load_any",
    "part",
    "per_view",
    "save",
    "train",
    "views",
]
