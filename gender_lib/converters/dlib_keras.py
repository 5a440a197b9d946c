"""dlib's face recognition ResNet as a Keras 3 model or an ONNX graph, checked against dlib itself before saving.

:func:`build_model` walks the layer list of :mod:`gender_lib.converters.dlib_dnn` (input first) and builds a
functional model: RGB chips (n, 150, 150, 3) in 0-255 (uint8 or float) -> the 128-d descriptor,
the fc output exactly as dlib returns it (not L2-normalised; dlib's ``loss_metric::to_label``
copies the fc output). The preprocessing is inside the model: ``(pixel - mean_rgb) / 256``.

Layer mapping (the semantics are dlib's, see :mod:`gender_lib.converters.dlib_dnn`):

* ``con``: ``Conv2D`` with the filters transposed from dlib's (n, k, nr, nc) to HWIO; padding
  ``same`` where dlib pads size/2 at stride 1, ``valid`` where it does not pad (strided), an
  explicit ``ZeroPadding2D`` otherwise.
* ``affine``: ``BatchNormalization`` frozen to ``x * gamma + beta`` (moving mean 0, moving variance
  1, epsilon 0); Keras counts its two fixed statistics as parameters.
* ``add_prev``: both inputs zero-extended to the larger of each dimension (channels at the end,
  rows at the bottom, columns at the right) with ``Reshape`` + ``ZeroPadding3D``, then ``Add``.
* ``avg_pool``/``max_pool``: ``AveragePooling2D``/``MaxPooling2D`` (valid: dlib's strided pools
  do not pad); ``avg_pool_everything``: ``GlobalAveragePooling2D``; ``fc``: ``Dense`` without bias.

:func:`convert` reads the file, builds the model, compares it with
``dlib.face_recognition_model_v1.compute_face_descriptor`` on real aligned face chips, and only
when every chip is within the targets saves the model + a JSON sidecar. :func:`ensure_converted`
does that once per cache folder; :func:`load` checks the sidecar before loading.

Each function takes an ``engine`` (:data:`TARGETS`): ``keras`` (the Keras model above: training,
dlib's inner levels) or ``onnx`` (the same layer list written as an ONNX graph by
:func:`gender_lib.converters.onnx_graph.dlib_graph`, affine layers folded into the convolutions;
run on ONNX Runtime, no TensorFlow import). Both go through the same check against dlib, with
the same targets, and the same sidecar checks; they live side by side under the cache root
(``dlib_keras/<sha12>.keras``, ``dlib_onnx/<sha12>.onnx``).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gender_lib.converters import dlib_dnn
from gender_lib.converters.dlib_dnn import DLIB_RULES, DlibModelError, Layer, Network
from gender_lib.errors import GenderLibError
from gender_lib.fileio import atomic_write, sha256_file, sha256_file_cached

logger = logging.getLogger(__name__)

#: Bump when the model built from the same file would differ; cached conversions are redone.
CONVERTER_VERSION = 1
FORMAT = "gender_lib.dlib_keras/1"
#: What a conversion is written as, by engine: (folder under the cache root, suffix, sidecar format).
TARGETS: dict[str, tuple[str, str, str]] = {"keras": ("dlib_keras", ".keras", FORMAT), "onnx": ("dlib_onnx", ".onnx", "gender_lib.dlib_onnx/1")}
CHIP_SIZE = 150
CHIP_PADDING = 0.25
#: Largest allowed |converted - dlib| on any descriptor component (dlib's descriptors are ~0.1;
#: both conversions measure about 5e-7, a wrong rule 5e-4 or more).
TOLERANCE = 1e-5
#: Smallest allowed cosine similarity between the Keras and dlib descriptor of any chip.
MIN_COSINE = 0.99999
MIN_CHIPS = 50
DEFAULT_CHIPS = 64


class VerificationError(GenderLibError, RuntimeError):
    """The Keras model does not reproduce dlib's descriptors within the targets; nothing was saved."""

    def __init__(self, message: str, figures: dict[str, Any]):
        super().__init__(message)
        self.figures = figures


class NoRealFacesError(GenderLibError, FileNotFoundError):
    """No real face images to verify the conversion on."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- Keras model


def build_model(layers: Network | Sequence[Layer], name: str = "dlib_face_resnet", **rules: Any) -> Any:
    """Walk the layer list (input first) and build the Keras model with dlib's weights.

    ``rules`` override :data:`DLIB_RULES` (only to show that the verification catches wrong
    semantics). Returns a ``keras.Model``: (n, 150, 150, 3) RGB 0-255 -> (n, 128) float32.
    """
    import keras
    from keras import layers as kl

    rule = dlib_dnn.build_rules(**rules)
    layer_list = list(layers.layers if isinstance(layers, Network) else layers)
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


def _conv(x: Any, layer: Layer, tag: str, rule: Mapping[str, Any], weights: list) -> Any:
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


def _fc(x: Any, layer: Layer, tag: str) -> tuple[Any, tuple[Any, list[np.ndarray]]]:
    from keras import layers as kl

    h, w, c = x.shape[1:]
    if h * w * c != layer.num_inputs:
        raise ValueError(f"fc expects {layer.num_inputs} inputs, the network gives {h}x{w}x{c}")
    x = kl.Flatten(name=f"fc_{tag}_flatten")(x)
    dense = kl.Dense(layer.num_outputs, use_bias=False, name="descriptor")
    # dlib flattens NCHW (k, r, c); Keras flattens NHWC (r, c, k): reorder the weight rows.
    kernel = layer.weights.reshape(c, h, w, layer.num_outputs).transpose(1, 2, 0, 3).reshape(layer.num_inputs, layer.num_outputs)
    return dense(x), (dense, [np.ascontiguousarray(kernel)])


def embed(model: Any, chips: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Float32 (n, 128) descriptors of uint8/float chips (n, 150, 150, 3) from a Keras model or an
    :class:`gender_lib.converters.onnx_graph.Runner` of :func:`~gender_lib.converters.onnx_graph.dlib_graph`."""
    from gender_lib.converters.onnx_graph import Runner

    chips = np.asarray(chips)
    if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
        raise ValueError(f"expected chips (n, {CHIP_SIZE}, {CHIP_SIZE}, 3), got {chips.shape}")
    if len(chips) == 0:
        return np.zeros((0, dlib_dnn.DESCRIPTOR_DIM), np.float32)
    if isinstance(model, Runner):  # the graph takes uint8, as dlib does: 0-255 floats are rounded, never scaled
        chips = np.clip(np.rint(chips), 0, 255).astype(np.uint8) if chips.dtype != np.uint8 else chips
        return np.concatenate([model(np.ascontiguousarray(chips[i : i + batch_size])) for i in range(0, len(chips), batch_size)]).astype(np.float32)
    return np.asarray(model.predict(chips.astype(np.float32), batch_size=batch_size, verbose=0), np.float32)


# --------------------------------------------------------------------------- real chips and dlib


def real_face_paths(n: int = DEFAULT_CHIPS, roots: Iterable[str | os.PathLike[str]] | None = None) -> list[Path]:
    """A deterministic, spread-out selection of ``n`` real face JPEGs.

    From ``data/sample/<AA>_<M|F>/*.jpg`` where present, else the shared
    ``combined/aligned/*/*.jpg``: all files sorted, then ``n`` evenly spaced ones (so every
    age/gender folder contributes). Raises :class:`NoRealFacesError` where there are none.
    """
    if roots is None:
        from gender_lib import config

        p = config.paths()
        roots = [p.sample, p.datasets / "combined" / "aligned"]
    tried = []
    for root in roots:
        root = Path(root)
        tried.append(str(root))
        files = sorted(f for f in root.glob("*/*.jpg") if f.is_file()) if root.is_dir() else []
        if files:
            if len(files) > n:
                files = [files[int(i)] for i in np.linspace(0, len(files) - 1, n).round()]
            return files
    raise NoRealFacesError(
        f"no real face images (*/*.jpg) in {' or '.join(tried)}: the dlib -> Keras conversion is "
        "verified on real faces and cannot run without them (set GENDER_LIB_DATASETS or pass chips)"
    )


def face_chips(paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
    """uint8 (n, 150, 150, 3) aligned chips of the images at ``paths``: the package's one image
    loader (:func:`gender_lib.images.load_rgb`, EXIF orientation applied) and the dlib backbone's
    own chip (:func:`gender_lib.faces.dlib_chip`)."""
    from gender_lib.faces import dlib_chip
    from gender_lib.images import load_rgb

    chips = [dlib_chip(load_rgb(p), size=CHIP_SIZE, padding=CHIP_PADDING)[0] for p in paths]
    return np.stack(chips) if chips else np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)


_REFERENCE_CACHE: dict[tuple[str, str], np.ndarray] = {}


def dlib_descriptors(chips: np.ndarray, source: str | os.PathLike[str] | None = None) -> np.ndarray:
    """dlib's own descriptors, float64 (n, 128): ``face_recognition_model_v1(source).compute_face_descriptor(chips)``."""
    import hashlib

    import dlib

    source = Path(source) if source is not None else dlib_dnn.default_source()
    chips = np.ascontiguousarray(chips, np.uint8)
    key = (sha256_file_cached(source), hashlib.sha256(chips.tobytes()).hexdigest())
    if key not in _REFERENCE_CACHE:
        model = dlib.face_recognition_model_v1(str(source))
        vectors = model.compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
        while len(_REFERENCE_CACHE) >= 4:  # a few sets: enough for a test module's repeated checks
            del _REFERENCE_CACHE[next(iter(_REFERENCE_CACHE))]
        _REFERENCE_CACHE[key] = np.asarray([np.asarray(v) for v in vectors], np.float64).reshape(len(chips), -1)
    return _REFERENCE_CACHE[key].copy()


def compare(actual: np.ndarray, expected: np.ndarray) -> dict[str, Any]:
    """Per-chip max |difference| and cosine similarity, and their worst values."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"descriptor shapes differ: {actual.shape} vs {expected.shape}")
    diff = np.abs(actual - expected).max(axis=1)
    norms = np.linalg.norm(actual, axis=1) * np.linalg.norm(expected, axis=1)
    cosine = (actual * expected).sum(axis=1) / np.maximum(norms, 1e-30)
    return {
        "n_chips": int(len(actual)),
        "max_abs_diff": float(diff.max()),
        "median_abs_diff": float(np.median(diff)),
        "min_cosine": float(cosine.min()),
        "max_abs_descriptor": float(np.abs(expected).max()),
        "mean_descriptor_norm": float(np.linalg.norm(expected, axis=1).mean()),
        "per_chip_max_abs_diff": diff.tolist(),
        "per_chip_cosine": cosine.tolist(),
    }


def verify(
    model: Any, chips: np.ndarray, source: str | os.PathLike[str] | None = None, *, tolerance: float = TOLERANCE, min_cosine: float = MIN_COSINE
) -> dict[str, Any]:
    """Compare ``model`` (Keras, or an ONNX :class:`~gender_lib.converters.onnx_graph.Runner`) with dlib
    on ``chips``; raise :class:`VerificationError` if any chip misses a target."""
    what = _engine_name(model)
    figures = compare(embed(model, chips), dlib_descriptors(chips, source))
    figures.update(tolerance=tolerance, min_cosine_target=min_cosine)
    logger.info(
        "dlib -> %s on %d real chips: max |diff| %.3g (target <= %.0e), min cosine %.9f (target >= %s)",
        what,
        figures["n_chips"],
        figures["max_abs_diff"],
        tolerance,
        figures["min_cosine"],
        min_cosine,
    )
    if not (figures["max_abs_diff"] <= tolerance and figures["min_cosine"] >= min_cosine):
        bad = sum(1 for d, c in zip(figures["per_chip_max_abs_diff"], figures["per_chip_cosine"]) if not (d <= tolerance and c >= min_cosine))
        raise VerificationError(
            f"the {what} model does not reproduce dlib's descriptors: {bad} of {figures['n_chips']} chips miss the targets "
            f"(max |diff| {figures['max_abs_diff']:.3g} vs <= {tolerance:g}, min cosine {figures['min_cosine']:.6f} vs >= {min_cosine}); "
            "nothing was saved",
            {k: v for k, v in figures.items() if not k.startswith("per_chip")},
        )
    return figures


def _engine_name(model: Any) -> str:
    from gender_lib.converters.onnx_graph import Runner

    return "ONNX" if isinstance(model, Runner) else "Keras"


# --------------------------------------------------------------------------- convert / save / load


def _target(engine: str) -> tuple[str, str, str]:
    if engine not in TARGETS:
        raise ValueError(f"engine must be one of {list(TARGETS)}, got {engine!r}")
    return TARGETS[engine]


def engine_of(path: str | os.PathLike[str]) -> str:
    """The engine a converted model's file is for, by its suffix (``.keras``, ``.onnx``)."""
    suffix = Path(path).suffix
    for engine, (_, known, _) in TARGETS.items():
        if suffix == known:
            return engine
    raise ValueError(f"{path}: a converted dlib model is saved as {' or '.join(t[1] for t in TARGETS.values())}")


def sidecar_path(model_path: str | os.PathLike[str]) -> Path:
    return Path(model_path).with_suffix(".json")


def default_cache_root() -> Path:
    from gender_lib import config

    return config.paths().cache


def default_path(cache_root: str | os.PathLike[str] | None = None, source: str | os.PathLike[str] | None = None, engine: str = "keras") -> Path:
    """``<cache_root>/dlib_keras/<first 12 hex of the source's sha256>.keras`` (``dlib_onnx/....onnx`` for the onnx engine)."""
    folder, suffix, _ = _target(engine)
    source = Path(source) if source is not None else dlib_dnn.default_source()
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    return root / folder / f"{sha256_file_cached(source)[:12]}{suffix}"


def convert(
    source: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    chips: np.ndarray | None = None,
    *,
    tolerance: float = TOLERANCE,
    min_cosine: float = MIN_COSINE,
    build_rules: Mapping[str, Any] | None = None,
    engine: str | None = None,
) -> dict[str, Any]:
    """Read dlib's ``.dat``, build the model for ``engine`` (default: the output's suffix, else
    keras), verify it against dlib, then save it.

    ``chips``: uint8 (n >= 50, 150, 150, 3) aligned real face chips; default: 64 from
    :func:`real_face_paths` made by :func:`face_chips`. The model and its JSON sidecar are
    written to temp files and published only after every chip meets both targets; on any
    failure nothing appears at ``output``. The onnx engine imports no TensorFlow. Returns the
    sidecar's contents. Raises :class:`DlibModelError` (a bad file), :class:`NoRealFacesError`,
    :class:`VerificationError`.
    """
    engine = engine or (engine_of(output) if output is not None and Path(output).suffix in {t[1] for t in TARGETS.values()} else "keras")
    _, suffix, sidecar_format = _target(engine)
    network = dlib_dnn.read_network(source)
    output = Path(output) if output is not None else default_path(source=network.source, engine=engine)
    if output.suffix != suffix:
        raise ValueError(f"{output}: the converted {engine} model must be saved with the {suffix} suffix")
    chip_source = "given"
    if chips is None:
        paths = real_face_paths(DEFAULT_CHIPS)
        chip_source = str(paths[0].parent.parent)
        chips = face_chips(paths)
    chips = np.asarray(chips)
    if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3) or len(chips) < MIN_CHIPS:
        raise NoRealFacesError(f"the conversion is verified on at least {MIN_CHIPS} real chips (n, 150, 150, 3); got {chips.shape}")
    if engine == "onnx":
        from gender_lib.converters import onnx_graph

        graph = onnx_graph.dlib_graph(network, **dict(build_rules or {}))
        serialized = graph.SerializeToString()
        model: Any = onnx_graph.Runner(serialized)
        versions = onnx_graph.versions()
        counted = sum(int(np.prod(t.dims)) for t in graph.graph.initializer if t.data_type == t.FLOAT)  # weights, not the Pad sizes
        save = lambda tmp: Path(tmp).write_bytes(serialized)  # noqa: E731
    else:
        import keras

        model = build_model(network, **dict(build_rules or {}))
        versions = {"keras_version": keras.__version__}
        counted = int(model.count_params())
        save = model.save
    figures = verify(model, chips, network.source, tolerance=tolerance, min_cosine=min_cosine)
    import dlib

    meta: dict[str, Any] = {
        "format": sidecar_format,
        "converter_version": CONVERTER_VERSION,
        "source": str(network.source),
        "source_name": network.source.name,
        "source_sha256": network.sha256,
        "input": {
            "size": [CHIP_SIZE, CHIP_SIZE, 3],
            "colour": "RGB",
            "range": [0, 255],
            "alignment": f"dlib 5-point get_face_chip(size={CHIP_SIZE}, padding={CHIP_PADDING})",
            "mean_rgb": list(network.input.mean_rgb),
            "divisor": network.input.divisor,
        },
        "descriptor": {"dim": dlib_dnn.DESCRIPTOR_DIM, "l2_normalised": False, "layer": "fc (no bias), as dlib returns it"},
        "layers": len(network.layers),
        "layer_counts": {kind: network.count(kind) for kind in ("con", "affine", "relu", "add_prev", "avg_pool", "max_pool")},
        "file_parameters": network.num_parameters(),
        # Keras: its parameters (BN's two fixed statistics included); ONNX: the graph's weights (affine layers folded in).
        "num_parameters": counted,
        "loss": network.loss,
        "verification": {
            "reference": "dlib.face_recognition_model_v1.compute_face_descriptor",
            "chips_from": chip_source,
            **{k: v for k, v in figures.items() if not k.startswith("per_chip")},
        },
        **versions,
        "dlib_version": getattr(dlib, "__version__", "unknown"),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    sidecar = sidecar_path(output)

    # Both files go to temp names first; the sidecar is published, then the model. A crash in
    # between leaves a sidecar whose <engine>_sha256 does not match, which load() rejects.
    def write_model(tmp_model: str) -> None:
        save(tmp_model)
        meta[f"{engine}_sha256"] = sha256_file(tmp_model)
        atomic_write(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8"))

    atomic_write(output, write_model)
    logger.info("saved %s (%s): %s", output, sidecar.name, describe(meta))
    return meta


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked sidecar of a converted model (exists, parses, this format, hash matches); the
    engine is the file's suffix. Raises :class:`DlibModelError` saying what to do."""
    path = Path(path)
    if not path.is_file():
        raise DlibModelError(path, "no converted dlib model here; run convert() / ensure_converted() first")
    engine = engine_of(path)
    sidecar_format = _target(engine)[2]
    side = sidecar_path(path)
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DlibModelError(path, f"its metadata sidecar {side.name} is missing; convert again") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DlibModelError(path, f"its metadata sidecar {side.name} is not valid JSON ({error}); convert again") from None
    if not isinstance(meta, dict) or meta.get("format") != sidecar_format:
        raise DlibModelError(path, f"its sidecar {side.name} is not a {sidecar_format} sidecar; convert again")
    if meta.get(f"{engine}_sha256") != sha256_file_cached(path):
        raise DlibModelError(path, f"does not match its sidecar {side.name} (sha256 differs): the model was changed or half-written; convert again")
    return meta


def load(path: str | os.PathLike[str], threads: int | None = None, spin: bool = False) -> tuple[Any, dict[str, Any]]:
    """Load a converted model and its checked sidecar: a Keras model from ``.keras``, an ONNX
    Runtime :class:`~gender_lib.converters.onnx_graph.Runner` (``threads`` intra-op threads,
    default the process's cores; ``spin``: see the Runner) from ``.onnx``."""
    meta = read_sidecar(path)
    try:
        if engine_of(path) == "onnx":
            from gender_lib.converters.onnx_graph import Runner

            return Runner(Path(path), threads, spin), meta
        import keras

        model = keras.models.load_model(path, compile=False)
    except ImportError:  # a missing runtime (OnnxNotInstalledError) says what to install; it is no damaged file
        raise
    except Exception as error:  # noqa: BLE001 - Keras and ONNX Runtime raise many types for damaged files
        raise DlibModelError(path, f"cannot load the converted model ({type(error).__name__}: {error}); convert again") from None
    return model, meta


def cached_conversion(
    cache_root: str | os.PathLike[str] | None = None, source: str | os.PathLike[str] | None = None, engine: str = "keras"
) -> dict[str, Any] | None:
    """The sidecar of the verified ``engine`` conversion under ``cache_root`` where one is there,
    intact and made by this converter version from this source; None where it must be converted (again)."""
    path = default_path(cache_root, source, engine)
    try:
        meta = read_sidecar(path)
    except DlibModelError as error:
        if path.exists():
            logger.warning("%s; it will be converted again", error)
        return None
    if meta.get("converter_version") == CONVERTER_VERSION and meta.get("source_sha256", "")[:12] == path.stem:
        return meta
    logger.info("%s was made by converter version %s; it will be converted again", path, meta.get("converter_version"))
    return None


def ensure_converted(cache_root: str | os.PathLike[str] | None = None, source: str | os.PathLike[str] | None = None, engine: str = "keras") -> Path:
    """The converted ``engine`` model under ``cache_root``: converted (and verified) on first use, reused after."""
    path = default_path(cache_root, source, engine)
    if cached_conversion(cache_root, source, engine) is None:
        convert(source, path, engine=engine)
    return path


def describe(meta: Mapping[str, Any]) -> str:
    """One line: the verification figures, rounded, and the parameter count."""
    v = meta.get("verification", {})
    onnx = meta.get("format") == TARGETS["onnx"][2]
    return (
        f"dlib ResNet -> {'ONNX' if onnx else 'Keras'}, verified on {v.get('n_chips', '?')} real chips against dlib: "
        f"max |diff| {v.get('max_abs_diff', float('nan')):.1e} (target <= {v.get('tolerance', TOLERANCE):.0e}), "
        f"min cosine {v.get('min_cosine', float('nan')):.7f} (target >= {v.get('min_cosine_target', MIN_COSINE)}); "
        f"{meta.get('num_parameters', 0):,} {'ONNX weights (affine layers folded in)' if onnx else 'Keras parameters'}"
    )


__all__ = [
    "CONVERTER_VERSION",
    "DLIB_RULES",
    "NoRealFacesError",
    "VerificationError",
    "build_model",
    "cached_conversion",
    "compare",
    "convert",
    "default_path",
    "describe",
    "dlib_descriptors",
    "embed",
    "engine_of",
    "ensure_converted",
    "face_chips",
    "load",
    "read_sidecar",
    "real_face_paths",
    "verify",
]
