"""The retired model kinds, kept as research code: a head on dlib's frozen multi-level features
(``features``) and fine-tuning dlib's top residual level(s) with the head (``finetune``).

They read dlib's **level-2 maps** (the 8x8x128 activation after the third residual level, of the
face chip and of its mirror image), which only a Keras copy of dlib's network gives. Both measured
within noise of the frozen head at many times its cost (docs/results.md, "Model kinds: research"),
so gender_lib 0.2 ships the frozen head alone; this module imports the package, never the other way.

* :func:`build_model` / :func:`dlib_model`: dlib's network in Keras 3, from the same layer list
  and rules as the package's ONNX graph, checked against dlib on 64 real chips (:func:`dlib_model`);
* :class:`Level2Backbone`: the ``level2`` output for ``gender_lib.stages.extract(..., backbone=...)``,
  cached like descriptors;
* :class:`FeaturesHead`, :class:`FinetunedNetwork`: the two estimators (subclasses of the package's
  :class:`~gender_lib.modeling.FrozenHead`); :func:`load` reads models saved as these kinds.

Fine-tuning (:func:`finetune`): the top residual level(s) and the fc layer are trained together
with a head already trained on their frozen output: Adam with a step of ``FINETUNE["learning_rate"]``
times each weight tensor's RMS for the network and a tenth of the head's learning rate for the
head, a random view (face or mirror image) per face and epoch, early stopping on validation loss.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from gender_lib import backbones
from gender_lib.config import HeadConfig
from gender_lib.converters import dlib_dnn, dlib_resnet, verified
from gender_lib.modeling import FrozenHead, mlp
from gender_lib.modeling.estimators import read_saved
from gender_lib.modeling.mlp import HeadError, class_weights

log = logging.getLogger(__name__)

LEVEL2_LAYER = "relu_090"
LEVEL2_SHAPE = (8, 8, 128)
LEVEL2_DIM = 2 * 8 * 8 * 128
#: Where the trainable part starts for 1 (the last level, 2x2x256) and 2 (also the 4x4x256 one) tuned levels.
SPLIT_LAYERS = {1: "relu_117", 2: LEVEL2_LAYER}
#: Layers whose global average pool joins the descriptor in the features estimator (level 2's is the input itself).
POOLED_LAYERS = ("relu_117", "relu_128")
FEATURES_DIM = 128 + 256 + 256 + 128
#: Fine-tuning stops after this many epochs without a lower validation loss (best weights restored).
PATIENCE = 2
#: The fine-tuning settings gender_lib 0.1's Config held (finetune_levels, finetune_epochs, finetune_learning_rate).
FINETUNE = {"levels": 1, "epochs": 6, "learning_rate": 1e-3}


# --------------------------------------------------------------------------- dlib's network in Keras


def build_model(layers: Any, name: str = "dlib_face_resnet", **rules: Any) -> Any:
    """Walk the layer list (input first) and build the Keras model with dlib's weights.

    ``rules`` override :data:`DLIB_RULES` (only to show that the verification catches wrong
    semantics). Returns a ``keras.Model``: (n, 150, 150, 3) RGB 0-255 -> (n, 128) float32.
    """
    import keras
    from keras import layers as kl

    rule = dlib_dnn.build_rules(**rules)
    layer_list = list(getattr(layers, "layers", layers))
    if not layer_list or layer_list[0].kind != "input":
        raise ValueError("the layer list must start with the input layer")
    first = layer_list[0]
    divisor = float(rule["input_divisor"] or first.divisor)
    inputs = keras.Input((*first.size, 3), dtype="float32", name="rgb_chip")
    x = kl.Normalization(mean=list(first.mean_rgb), variance=[divisor * divisor] * 3, name="minus_mean_divide")(inputs)
    tags: dict[int, Any] = {}
    weights: list[tuple[Any, list[np.ndarray]]] = []
    for i, layer in enumerate(layer_list[1:], start=1):
        tag = f"{i:03d}"
        if layer.kind == "con":
            x = _conv(x, layer, tag, rule, weights)
        elif layer.kind == "affine":
            bn = kl.BatchNormalization(epsilon=0.0, name=f"affine_{tag}")
            x = bn(x)
            n = len(layer.gamma)
            weights.append((bn, [layer.gamma, layer.beta, np.zeros(n, np.float32), np.ones(n, np.float32)]))
        elif layer.kind == "relu":
            x = kl.ReLU(name=f"relu_{tag}")(x)
        elif layer.kind in ("max_pool", "avg_pool"):
            x = _pad(x, layer.padding, f"{layer.kind}_{tag}_pad")
            pool = kl.MaxPooling2D if layer.kind == "max_pool" else kl.AveragePooling2D
            x = pool(layer.size, strides=layer.stride, padding="valid", name=f"{layer.kind}_{tag}")(x)
        elif layer.kind == "avg_pool_everything":
            x = kl.GlobalAveragePooling2D(keepdims=True, name=f"avg_pool_everything_{tag}")(x)
        elif layer.kind == "tag":
            tags[layer.tag] = x
        elif layer.kind == "skip":
            x = tags[layer.tag]
        elif layer.kind == "add_prev":
            x = _add_zero_extended(x, tags[layer.tag], tag, rule)
        elif layer.kind == "fc":
            x, w = _fc(x, layer, tag)
            weights.append(w)
        else:
            raise ValueError(f"layer {i}: unsupported kind {layer.kind!r}")
    model = keras.Model(inputs, x, name=name)
    for target, values in weights:
        target.set_weights(values)
    return model


def _pad(x: Any, padding: tuple[int, int] | None, name: str) -> Any:
    from keras import layers as kl

    if not padding or padding == (0, 0):
        return x
    py, px = padding
    return kl.ZeroPadding2D(((py, py), (px, px)), name=name)(x)


def _conv(x: Any, layer: Any, tag: str, rule: Mapping[str, Any], weights: list) -> Any:
    from keras import layers as kl

    (fy, fx), (sy, sx), (py, px) = layer.size, layer.stride, layer.padding
    if rule["strided_padding"] == "same" and (sy, sx) != (1, 1):
        padding = "same"  # deliberately wrong: Keras pads strided 'same' convs (asymmetrically)
    elif (sy, sx) == (1, 1) and fy % 2 and fx % 2 and (py, px) == (fy // 2, fx // 2):
        padding = "same"  # symmetric size//2 padding at stride 1 is exactly Keras' 'same'
    else:
        x = _pad(x, (py, px), f"con_{tag}_pad")
        padding = "valid"
    use_bias = layer.biases is not None
    conv = kl.Conv2D(layer.num_filters, (fy, fx), strides=(sy, sx), padding=padding, use_bias=use_bias, name=f"con_{tag}")
    x = conv(x)
    kernel = np.ascontiguousarray(layer.filters.transpose(2, 3, 1, 0))  # (n, k, nr, nc) -> (nr, nc, k, n)
    weights.append((conv, [kernel, layer.biases] if use_bias else [kernel]))
    return x


def _add_zero_extended(x: Any, other: Any, tag: str, rule: Mapping[str, Any]) -> Any:
    """dlib's add_prev: output is the larger of each dimension; missing parts count as zero."""
    from keras import layers as kl

    target = [max(a, b) for a, b in zip(x.shape[1:], other.shape[1:])]
    parts = []
    for j, t in enumerate((x, other)):
        h, w, c = t.shape[1:]
        dh, dw, dc = target[0] - h, target[1] - w, target[2] - c
        if (dh, dw, dc) != (0, 0, 0):
            rows = (dh, 0) if rule["spatial_padding"] == "start" else (0, dh)
            cols = (dw, 0) if rule["spatial_padding"] == "start" else (0, dw)
            chans = (dc, 0) if rule["channel_padding"] == "front" else (0, dc)
            t = kl.Reshape((h, w, c, 1), name=f"add_prev_{tag}_in{j}_5d")(t)
            t = kl.ZeroPadding3D((rows, cols, chans), name=f"add_prev_{tag}_in{j}_zero_extend")(t)
            t = kl.Reshape(tuple(target), name=f"add_prev_{tag}_in{j}_4d")(t)
        parts.append(t)
    return kl.Add(name=f"add_prev_{tag}")(parts)


def _fc(x: Any, layer: Any, tag: str) -> tuple[Any, tuple[Any, list[np.ndarray]]]:
    from keras import layers as kl

    h, w, c = x.shape[1:]
    if h * w * c != layer.num_inputs:
        raise ValueError(f"fc expects {layer.num_inputs} inputs, the network gives {h}x{w}x{c}")
    x = kl.Flatten(name=f"fc_{tag}_flatten")(x)
    dense = kl.Dense(layer.num_outputs, use_bias=False, name="descriptor")
    # dlib flattens NCHW (k, r, c); Keras flattens NHWC (r, c, k): reorder the weight rows.
    kernel = layer.weights.reshape(c, h, w, layer.num_outputs).transpose(1, 2, 0, 3).reshape(layer.num_inputs, layer.num_outputs)
    return dense(x), (dense, [np.ascontiguousarray(kernel)])


@functools.cache
def _verified_weights() -> tuple[Any, ...]:
    """dlib's network in Keras, checked once against dlib on 64 real chips (as the ONNX graph is)."""
    model = build_model(dlib_dnn.read_network())
    chips = dlib_resnet.face_chips(verified.real_face_paths())
    figures = dlib_resnet.compare(model.predict(chips.astype(np.float32), verbose=0), dlib_resnet.dlib_descriptors(chips))
    if not figures["max_abs_diff"] <= dlib_resnet.TOLERANCE:
        raise RuntimeError(f"the Keras copy of dlib's network does not reproduce dlib: {figures}")
    return tuple(model.get_weights())


def dlib_model() -> Any:
    """A fresh copy of dlib's network in Keras (verified against dlib on first use in the process)."""
    model = build_model(dlib_dnn.read_network())
    model.set_weights(list(_verified_weights()))
    return model


class Level2Backbone(backbones.DlibBackbone):
    """dlib's backbone returning the level-2 maps of the chip and of its mirror image, flattened (n, 16384)."""

    def __init__(self, align: str = "chip"):
        super().__init__(align=align)
        self.output, self.dim = "level2", LEVEL2_DIM
        self.id = backbones.backbone_id(self.name, self.describe())
        self._lower: Any = None

    def describe(self) -> dict[str, Any]:
        out = {k: v for k, v in super().describe().items() if k != "id"} | {"output": "level2", "dim": LEVEL2_DIM}
        return out | {"id": backbones.backbone_id(self.name, out)}

    def embed(self, batch: np.ndarray) -> np.ndarray:
        import keras

        if self._lower is None:
            model = dlib_model()
            self._lower = keras.Model(model.input, model.get_layer(LEVEL2_LAYER).output)
        x = np.asarray(batch, np.float32)
        maps = apply(self._lower, np.concatenate([x, x[:, :, ::-1]]), 64)  # the chip, then its mirror image
        return maps.reshape(2, len(x), -1).transpose(1, 0, 2).reshape(len(x), LEVEL2_DIM)


# --------------------------------------------------------------------------- the level-2 parts


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


def top_levels() -> Any:
    """dlib's unchanged network above the level-2 map: (n, 8, 8, 128) -> the (n, 128) descriptor."""
    return part(dlib_model(), LEVEL2_LAYER, None, "top_levels")


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
    tuned: Any,
    head: Any,
    z_train: np.ndarray,
    y_train: np.ndarray,
    z_val: np.ndarray,
    y_val: np.ndarray,
    config: HeadConfig,
    settings: Mapping[str, Any],
    seed: int,
    progress: bool,
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
    net_opts = [keras.optimizers.Adam(settings["learning_rate"] * max(float(np.sqrt(np.mean(np.square(v.numpy())))), 1e-8)) for v in net_vars]
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
        p = np.mean([apply(head, apply(tuned, z_val[:, v]))[:, 0] for v in (0, 1)], axis=0)
        p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
        loss = float(-np.mean(y_val * np.log(p) + (1 - y_val) * np.log(1 - p)))
        return loss, float(np.mean((p >= 0.5) == (y_val == 1)))

    rng = np.random.default_rng(seed)
    batch = config.head_batch_size
    loss, acc = val_scores()
    history: dict[str, Any] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    history |= {"start": {"val_loss": loss, "val_accuracy": acc}, "reading": "flip-averaged"}
    best = (loss, [v.numpy() for v in net_vars + head_vars], 0)
    log.info("fine-tuning: before, val loss %.4f, accuracy %.4f", loss, acc)
    for epoch in range(1, settings["epochs"] + 1):
        order = rng.permutation(len(z_train))
        view = rng.integers(0, 2, len(z_train))  # the face or its mirror image, afresh each epoch
        losses, right = [], 0.0
        # Whole batches only (one trace of the step); the few faces left over change every epoch.
        starts = range(0, max(len(order) - batch, 0) + 1, batch)
        bar = tqdm(starts, desc=f"fine-tune epoch {epoch}/{settings['epochs']}", unit="batch", disable=not progress, leave=False)
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


# --------------------------------------------------------------------------- the estimators


class _Level2Estimator(FrozenHead):
    """Kinds that read dlib's level-2 maps (both views always there) through a Keras trunk."""

    @property
    def backbone_output(self) -> str:
        return "level2"

    def _trunk(self) -> Any:
        raise NotImplementedError

    def _views(self, x: np.ndarray) -> np.ndarray:
        if not hasattr(self, "trunk_"):
            self.trunk_ = self._trunk()
        return per_view(self.trunk_, x)

    def descriptors(self, x: np.ndarray) -> np.ndarray:
        if not hasattr(self, "top_"):
            self.top_ = top_levels()
        return apply(self.top_, views(x)[:, 0])

    def fit(self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *, progress: bool = True) -> FrozenHead:
        started = time.perf_counter()
        f_train, f_val = self._views(x_train), self._views(x_val)
        model, self.history_ = mlp.train_keras(
            f_train.reshape(-1, f_train.shape[-1]), np.repeat(y_train, 2), f_val[:, 0], y_val, self.config, self.seed, "float32"
        )
        self.head_ = mlp.MLP.from_keras(model)
        self.threshold_ = mlp.choose_threshold(y_val, self._p_from_views(f_val))
        self.train_seconds_ = time.perf_counter() - started
        return self


class FeaturesHead(_Level2Estimator):
    """The MLP on frozen multi-level features: the descriptor plus the global-average-pooled
    outputs of dlib's last three residual levels (768-d), from the level-2 map."""

    kind = "features"

    def _trunk(self) -> Any:
        return features_model(dlib_model())


class FinetunedNetwork(_Level2Estimator):
    """dlib's top ``levels`` residual level(s) and fc layer, fine-tuned with the MLP.

    Fitted attributes besides the head's: ``tuned_kept_`` (whether any fine-tuning epoch lowered
    the validation loss; if not, :meth:`save` writes a :class:`~gender_lib.modeling.FrozenHead`).
    """

    kind = "finetune"

    def __init__(self, config: HeadConfig | None = None, *, seed: int = 0, levels: int = FINETUNE["levels"], epochs: int = FINETUNE["epochs"]):
        super().__init__(config, seed=seed)
        self.levels, self.epochs = levels, epochs

    def _trunk(self) -> Any:
        fixed, tuned = tuned_split(dlib_model(), self.levels)
        self.tuned_ = tuned
        return chain(fixed, tuned) if fixed is not None else tuned

    def fit(self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *, progress: bool = True) -> FrozenHead:
        started = time.perf_counter()
        y_train, y_val = np.asarray(y_train, np.float32), np.asarray(y_val, np.float32)
        fixed, tuned = tuned_split(dlib_model(), self.levels)
        z_train, z_val = (per_view(fixed, x) if fixed is not None else views(x) for x in (x_train, x_val))
        d_train = apply(tuned, z_train.reshape(-1, *z_train.shape[2:])).reshape(len(z_train), 2, -1)
        d_val = apply(tuned, z_val[:, 0])
        head, self.history_ = mlp.train_keras(d_train.reshape(-1, d_train.shape[-1]), np.repeat(y_train, 2), d_val, y_val, self.config, self.seed, "float32")
        settings = {**FINETUNE, "epochs": self.epochs}
        tuned_history = finetune(tuned, head, z_train, y_train, z_val, y_val, self.config, settings, self.seed, progress)
        self.history_ = join_histories(self.history_, tuned_history)
        self.head_ = mlp.MLP.from_keras(head)
        self.tuned_kept_ = tuned_history["best_epoch"] > 0  # else dlib's weights stay as they were
        if self.tuned_kept_:
            round_to_float16(tuned)  # what is saved is float16: evaluate exactly that
        self.tuned_ = tuned
        self.trunk_ = chain(fixed, tuned) if fixed is not None else tuned
        self.threshold_ = mlp.choose_threshold(y_val, self._p_from_views(per_view(self.trunk_, x_val)))
        self.train_seconds_ = time.perf_counter() - started
        return self

    def _arrays(self) -> dict[str, np.ndarray]:
        return super()._arrays() | (tuned_arrays(self.tuned_) if getattr(self, "tuned_kept_", True) else {})

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.levels = int(self.meta_.get("finetune_levels", self.meta_.get("config", {}).get("finetune_levels", FINETUNE["levels"])))
        self.tuned_kept_ = True
        self.trunk_ = self._trunk()
        restore_tuned(self.tuned_, arrays)

    def save(self, path: Any, meta: dict[str, Any] | None = None) -> Any:
        """As the head's; a fine-tuning that kept no epoch is saved as a frozen head on the
        descriptor+mirror output of the same network."""
        meta = {**(meta or {}), "finetune_levels": self.levels}
        if self.tuned_kept_:
            return super().save(path, meta)
        head = FrozenHead(dataclasses.replace(self.config, flip_tta=True), seed=self.seed)
        for name in ("head_", "threshold_", "history_", "train_seconds_", "age_", "confidence_"):
            setattr(head, name, getattr(self, name))
        if "backbone" in meta:
            net = backbones.from_description(meta["backbone"], output="descriptor+mirror")
            meta["backbone"], meta["descriptor_dim"] = net.describe(), net.dim
        return head.save(path, meta | {"fitted_as": "fine-tuned, no epoch kept: dlib's weights unchanged"})


KINDS: Mapping[str, type[FrozenHead]] = {"features": FeaturesHead, "finetune": FinetunedNetwork}


def load(path: Any) -> FrozenHead:
    """A model saved as a retired kind (or a frozen head) at ``path``."""
    meta, arrays = read_saved(path)
    return {**KINDS, "frozen": FrozenHead}[meta["kind"]].from_saved(meta, arrays, source=path)
