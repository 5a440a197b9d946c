"""dlib's network above its level-2 map: the parts the level-2 estimators run, and the fine-tuning loop.

The dlib backbone's ``level2`` output (:data:`gender_lib.backbones.OUTPUTS`) is the 8x8x128
activation map after the third residual level, for the face chip and for its mirror image.
Everything above that map is a fifth of the network's work, so training it for an epoch over 20k
faces takes minutes on two cores instead of hours.

Fine-tuning (:func:`finetune`): the top residual level(s) and the fc layer are trained together
with a head already trained on their frozen output (a fresh head trained together with the network
is unstable): Adam with a step of ``finetune_learning_rate`` times each weight tensor's RMS for the
network (its conv weights differ in scale by orders of magnitude) and a tenth of the head's learning
rate for the head, a random view (face or mirror image) per face and epoch, early stopping on
validation loss. dlib's affine layers stay fixed (they hold no batch statistics).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from gender_lib.backbones import LEVEL2_DIM, LEVEL2_LAYER, LEVEL2_SHAPE
from gender_lib.config import HeadConfig
from gender_lib.modeling.mlp import HeadError, class_weights

log = logging.getLogger(__name__)

#: Where the trainable part starts for ``finetune_levels`` 1 (the last level, 2x2x256) and 2 (also the 4x4x256 one).
SPLIT_LAYERS = {1: "relu_117", 2: LEVEL2_LAYER}
#: Layers whose global average pool joins the descriptor in the features estimator (level 2's is the input itself).
POOLED_LAYERS = ("relu_117", "relu_128")
FEATURES_DIM = 128 + 256 + 256 + 128
#: Fine-tuning stops after this many epochs without a lower validation loss (best weights restored).
PATIENCE = 2


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


def top_levels(cache_root: str | os.PathLike[str] | None = None) -> Any:
    """dlib's unchanged network above the level-2 map: (n, 8, 8, 128) -> the (n, 128) descriptor."""
    return part(dlib_model(cache_root), LEVEL2_LAYER, None, "top_levels")


def views(x: np.ndarray) -> np.ndarray:
    """(n, 16384) level2 vectors -> (n, 2, 8, 8, 128): the face's map, then its mirror image's."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] != LEVEL2_DIM:
        raise HeadError(f"expected level2 vectors (n, {LEVEL2_DIM}), got {x.shape}: extract with the level2 output")
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


def tuned_split(model: Any, levels: int) -> tuple[Any | None, Any]:
    """(fixed, tuned): the part between the level-2 map and the tuned levels (None for 2 levels) and
    the tuned levels up to the descriptor, dlib's affine layers frozen in inference mode."""
    import keras

    fixed = part(model, LEVEL2_LAYER, SPLIT_LAYERS[levels], "fixed_levels") if levels == 1 else None
    tuned = part(model, SPLIT_LAYERS[levels], None, "tuned_levels")
    for layer in tuned.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # dlib's affine layers: fixed scale and shift, inference mode
    return fixed, tuned


def round_to_float16(tuned: Any) -> None:
    """Round the trainable layers' weights to float16 in place: exactly what is saved."""
    for layer in tuned.layers:
        if layer.weights and layer.trainable:
            layer.set_weights([w.astype(np.float16).astype(np.float32) for w in layer.get_weights()])


def tuned_arrays(tuned: Any) -> dict[str, np.ndarray]:
    """The tuned levels' trainable weights as float16 arrays ``tuned/<layer>/<i>``."""
    import keras

    out = {}
    for layer in tuned.layers:
        if layer.trainable and layer.weights and not isinstance(layer, keras.layers.BatchNormalization):
            out |= {f"tuned/{layer.name}/{i}": np.asarray(w, np.float16) for i, w in enumerate(layer.get_weights())}
    return out


def restore_tuned(tuned: Any, arrays: dict[str, np.ndarray]) -> None:
    """Set the tuned levels from :func:`tuned_arrays`; every stored array must find its layer."""
    stored = {k for k in arrays if k.startswith("tuned/")}
    names = {f"tuned/{layer.name}/{i}" for layer in tuned.layers for i in range(len(layer.get_weights()))}
    if stored - names:
        raise HeadError(f"stored weights {sorted(stored - names)[:3]} fit no layer of this network; retrain the model")
    for layer in tuned.layers:
        keys = [f"tuned/{layer.name}/{i}" for i in range(len(layer.get_weights()))]
        if keys and keys[0] in arrays:
            try:
                layer.set_weights([arrays[k].astype(np.float32) for k in keys])
            except (KeyError, ValueError) as error:
                raise HeadError(f"the stored weights do not fit layer {layer.name} ({error}); retrain the model") from None


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


def finetune(
    tuned: Any, head: Any, z_train: np.ndarray, y_train: np.ndarray, z_val: np.ndarray, y_val: np.ndarray, config: HeadConfig, seed: int, progress: bool
) -> dict[str, Any]:
    """Train the Keras ``tuned`` levels and ``head`` together (in place) on inputs (n, 2, ...) of
    both views; keep the weights of the lowest val loss. Returns the history (``best_epoch`` 0:
    no epoch lowered the validation loss, the weights are as they came in)."""
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
    weights = tf.constant(class_weights(y_train, config.class_balance).astype(np.float32))

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
        elif epoch - best[2] >= PATIENCE:
            break
    for variable, value in zip(net_vars + head_vars, best[1]):
        variable.assign(value)
    history["best_epoch"] = best[2]
    return history
