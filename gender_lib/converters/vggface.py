"""Build the Keras VGG-Face (and its ONNX graph) from a MatConvNet layer list, check it, save and load it.

The Keras model takes RGB images in 0-255 at the network's input size (224 x 224) and
subtracts the file's ``averageImage`` itself, so a saved model cannot be fed wrongly
normalised inputs. It has two outputs:

* ``fc7``: the 4096-d descriptor the authors recommend (after ``relu7``, L2-normalised);
* ``fc8``: the 2622-d identity scores before the softmax (what the original work used,
  without its extra ReLU).

:func:`reference_forward` is an independent NumPy implementation of the same layer list
with MatConvNet's semantics; :func:`max_relative_error` compares the two.

Where ``onnx`` and ONNX Runtime are installed, :func:`convert` also writes the same layer list as
an ONNX graph (:func:`gender_lib.converters.onnx_graph.vggface_graph`) beside the ``.keras`` file
(``vggface.onnx``), checked against the same reference with the same tolerance; the sidecar's
``onnx`` record holds its hash and check. :func:`load_onnx` runs it on ONNX Runtime, without
TensorFlow (the backbone's ``onnx`` engine).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gender_lib.converters.matconvnet import ConversionError, Network, descriptor_indices, read_network
from gender_lib.errors import ConfigError, GenderLibError, UserFileNotFoundError
from gender_lib.fileio import publish_together, write_json

logger = logging.getLogger(__name__)

DESCRIPTOR_LAYERS = ("fc7", "fc8")
#: Largest allowed ``max|keras - reference| / max|reference|`` per output: float32 round-off
#: over up to 25,088-term sums is ~1e-6; a wrong pad, activation or mean is >1e-2.
EQUIVALENCE_TOLERANCE = 1e-4


# --------------------------------------------------------------------------- preprocessing


def resize_one(image: np.ndarray | Image.Image, size: tuple[int, int] = (224, 224), keep_aspect: bool = True) -> np.ndarray:
    """One RGB image -> float32 (size, 3), bicubic."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    pil = pil.convert("RGB")
    height, width = size
    if keep_aspect and pil.width * height != pil.height * width:
        scale = max(width / pil.width, height / pil.height)
        scaled = (max(width, round(pil.width * scale)), max(height, round(pil.height * scale)))
        pil = pil.resize(scaled, Image.BICUBIC)
        left, top = (pil.width - width) // 2, (pil.height - height) // 2
        pil = pil.crop((left, top, left + width, top + height))
    elif pil.size != (width, height):
        pil = pil.resize((width, height), Image.BICUBIC)
    return np.asarray(pil, np.float32)


# --------------------------------------------------------------------------- Keras model


def build_model(network: Network, name: str = "vgg_face") -> Any:
    """Walk ``network.layers`` and build the Keras model with its weights loaded.

    Outputs a dict ``{"fc7": (n, C7) L2-normalised, "fc8": (n, C8) raw scores}``.
    """
    import keras
    from keras import layers

    height, width, channels = network.image_size
    inputs = keras.Input((height, width, channels), name="rgb_0_255")
    x = layers.Normalization(mean=network.average_image.tolist(), variance=[1.0, 1.0, 1.0], name="subtract_average_image")(inputs)
    taps = {index: key for key, index in descriptor_indices(network).items()}
    outputs: dict[str, Any] = {}
    pending: list[tuple[Any, Any]] = []
    previous = None
    for index, layer in enumerate(network.layers):
        if layer.type == "conv":
            kh, kw = layer.kernel.shape[:2]
            same = layer.stride == (1, 1) and layer.pad == ((kh - 1) // 2,) * 2 + ((kw - 1) // 2,) * 2 and kh % 2 and kw % 2
            if not same and any(layer.pad):
                top, bottom, left, right = layer.pad
                x = layers.ZeroPadding2D(((top, bottom), (left, right)), name=f"{layer.name}_pad")(x)
            conv = layers.Conv2D(
                layer.kernel.shape[3],
                (kh, kw),
                strides=layer.stride,
                padding="same" if same else "valid",
                name=layer.name,
            )
            x = conv(x)
            pending.append((conv, layer))
        elif layer.type == "relu":
            x = layers.ReLU(name=layer.name)(x)
        elif layer.type == "pool":
            if any(layer.pad):
                if previous is None or previous.type != "relu":
                    raise ConversionError(network.source or "<network>", f"pool '{layer.name}' pads a signed input; only padding after a ReLU is supported")
                # After a ReLU every value is >= 0, so zero padding equals MatConvNet's -inf padding.
                top, bottom, left, right = layer.pad
                x = layers.ZeroPadding2D(((top, bottom), (left, right)), name=f"{layer.name}_pad")(x)
            x = layers.MaxPooling2D(layer.pool, strides=layer.stride, padding="valid", name=layer.name)(x)
        elif layer.type in ("dropout", "softmax"):
            pass  # inference: dropout is the identity; the softmax is replaced by the raw fc8 scores
        if layer.type != "dropout":
            previous = layer
        if taps.get(index) == "fc7":
            outputs["fc7"] = layers.UnitNormalization(axis=-1, name="fc7_l2")(layers.Flatten(name="fc7_flat")(x))
        elif taps.get(index) == "fc8":
            outputs["fc8"] = layers.Flatten(name="fc8_flat")(x)
    if set(outputs) != set(DESCRIPTOR_LAYERS):
        raise ConversionError(network.source or "<network>", f"could not locate descriptor layers, found {sorted(outputs)}")
    model = keras.Model(inputs, {key: outputs[key] for key in DESCRIPTOR_LAYERS}, name=name)
    for conv, layer in pending:
        conv.set_weights([layer.kernel, layer.bias])
    return model


# --------------------------------------------------------------------------- NumPy reference


def _conv2d(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: tuple[int, int], pad: tuple[int, int, int, int]) -> np.ndarray:
    top, bottom, left, right = pad
    x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    kh, kw, cin, cout = kernel.shape
    n, h, w, _ = x.shape
    oh, ow = (h - kh) // stride[0] + 1, (w - kw) // stride[1] + 1
    out = np.zeros((n, oh, ow, cout), np.float64)
    for i in range(kh):  # sum of shifted 1x1 convolutions: simple, exact and memory-light
        for j in range(kw):
            patch = x[:, i : i + stride[0] * (oh - 1) + 1 : stride[0], j : j + stride[1] * (ow - 1) + 1 : stride[1], :]
            out += patch @ kernel[i, j].astype(np.float64)
    return out + bias.astype(np.float64)


def _maxpool(x: np.ndarray, pool: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int, int, int]) -> np.ndarray:
    top, bottom, left, right = pad
    x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-np.inf)
    n, h, w, c = x.shape
    oh, ow = (h - pool[0]) // stride[0] + 1, (w - pool[1]) // stride[1] + 1
    out = np.full((n, oh, ow, c), -np.inf)
    for i in range(pool[0]):
        for j in range(pool[1]):
            out = np.maximum(out, x[:, i : i + stride[0] * (oh - 1) + 1 : stride[0], j : j + stride[1] * (ow - 1) + 1 : stride[1], :])
    return out


def reference_forward(network: Network, images: np.ndarray) -> dict[str, np.ndarray]:
    """MatConvNet's forward pass in float64 NumPy, straight from the layer list.

    ``images``: (n, H, W, 3) RGB in 0-255 at the network's input size. Returns the same
    ``fc7`` (post-ReLU, L2-normalised) and ``fc8`` (pre-softmax) as :func:`build_model`, plus
    ``prob`` (the softmax).
    """
    x = np.asarray(images, np.float64) - network.average_image.astype(np.float64)
    taps = {index: key for key, index in descriptor_indices(network).items()}
    result: dict[str, np.ndarray] = {}
    for index, layer in enumerate(network.layers):
        if layer.type == "conv":
            x = _conv2d(x, layer.kernel, layer.bias, layer.stride, layer.pad)
        elif layer.type == "relu":
            x = np.maximum(x, 0.0)
        elif layer.type == "pool":
            x = _maxpool(x, layer.pool, layer.stride, layer.pad)
        elif layer.type == "softmax":
            flat = x.reshape(len(x), -1)
            flat = np.exp(flat - flat.max(axis=1, keepdims=True))
            x = flat / flat.sum(axis=1, keepdims=True)
            result["prob"] = x
        if taps.get(index) == "fc7":
            flat = x.reshape(len(x), -1)
            result["fc7"] = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
        elif taps.get(index) == "fc8":
            result["fc8"] = x.reshape(len(x), -1)
    return result


def max_relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """``max|actual - expected| / max|expected|``: a scale-free float32 round-off measure."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    scale = max(float(np.abs(expected).max()), 1e-30)
    return float(np.abs(actual - expected).max() / scale)


def check_equivalence(model: Any, network: Network, images: np.ndarray, tolerance: float = EQUIVALENCE_TOLERANCE) -> dict[str, float]:
    """Compare every descriptor output of ``model`` with :func:`reference_forward`.

    Returns ``{output: max relative error}``; raises :class:`EquivalenceError` (which carries
    the errors) when any output exceeds ``tolerance``.
    """
    from gender_lib.converters.onnx_graph import Runner

    expected = reference_forward(network, images)
    images = np.asarray(images, np.float32)
    actual = model.outputs(images) if isinstance(model, Runner) else model.predict(images, verbose=0)
    errors = {key: max_relative_error(actual[key], expected[key]) for key in DESCRIPTOR_LAYERS}
    bad = {key: value for key, value in errors.items() if not value <= tolerance}
    if bad:
        what = "ONNX graph" if isinstance(model, Runner) else "Keras model"
        raise EquivalenceError(f"{what} differs from the NumPy reference: {bad} (tolerance {tolerance})", errors)
    return errors


class EquivalenceError(RuntimeError):
    """The Keras model does not compute what the MatConvNet layers compute.

    A converter bug rather than a user error (a damaged file fails earlier, as a
    :class:`ConversionError`), so it is deliberately not a ``GenderLibError``.
    """

    def __init__(self, message: str, errors: dict[str, float]):
        super().__init__(message)
        self.errors = errors


# --------------------------------------------------------------------------- save / load


def metadata(network: Network, model: Any, errors: dict[str, float] | None = None) -> dict[str, Any]:
    """JSON sidecar describing where a converted model came from and how to feed it."""
    import keras

    return {
        "format": "gender_lib.vggface/1",
        "source": str(network.source) if network.source else None,
        "source_sha256": network.sha256,
        "layout": network.layout,
        "input": {"size": list(network.image_size), "colour": "RGB", "range": [0, 255], "resize": network.interpolation, "keep_aspect": network.keep_aspect},
        "normalization": {"average_image_rgb": [round(float(v), 4) for v in network.average_image], "border": list(network.border)},
        "descriptor_layers": {
            "fc7": {"dim": int(model.output["fc7"].shape[-1]), "after": "relu7", "l2_normalised": True, "default": True},
            "fc8": {"dim": int(model.output["fc8"].shape[-1]), "after": "fc8 (pre-softmax, no ReLU)", "l2_normalised": False},
        },
        "layers": [layer.name for layer in network.layers],
        "num_parameters": int(model.count_params()),
        "num_classes": network.num_classes,
        "equivalence_max_relative_error": errors,
        "keras_version": keras.__version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


class ConvertedModelError(GenderLibError, ValueError):
    """A converted ``.keras`` model or its sidecar that cannot be loaded; convert the .mat again."""


def sidecar_path(model_path: str | os.PathLike[str]) -> Path:
    return Path(model_path).with_suffix(".json")


def onnx_path(model_path: str | os.PathLike[str]) -> Path:
    """Where the ONNX graph of the converted model at ``model_path`` (``.keras``) is kept: beside it, ``.onnx``."""
    return Path(model_path).with_suffix(".onnx")


def _onnx_conversion(network: Network, images: np.ndarray | None) -> tuple[bytes, dict[str, Any]] | None:
    """The serialized ONNX graph of ``network`` and its sidecar record, checked against the
    reference on ``images`` (None: unchecked); None where onnx or ONNX Runtime is not installed."""
    from gender_lib.converters import onnx_graph
    from gender_lib.fileio import sha256_bytes

    if not onnx_graph.can_convert():
        logger.info("onnx or onnxruntime is not installed: no ONNX graph is written (the keras engine runs VGG-Face)")
        return None
    serialized = onnx_graph.vggface_graph(network).SerializeToString()
    errors = check_equivalence(onnx_graph.Runner(serialized), network, images) if images is not None else None
    record = {
        "sha256": sha256_bytes(serialized),
        "opset": onnx_graph.OPSET,
        "equivalence_max_relative_error": errors,
        **onnx_graph.versions(),
    }
    return serialized, record


def convert(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    check_images: int = 2,
    seed: int = 0,
    strict: bool = True,
    synthetic: bool = False,
) -> dict[str, Any]:
    """Convert a MatConvNet ``.mat`` into ``output`` (``.keras``) plus its JSON sidecar.

    Before saving, the model is checked against the NumPy reference on ``check_images``
    random images; nothing is written if that fails. Both files are written to temp files
    first and renamed into place together, so a failure leaves the previous pair intact.
    ``synthetic`` marks the sidecar of a stand-in model. Returns the sidecar's contents.
    """
    output = Path(output)
    if output.suffix != ".keras":
        raise ConfigError(f"{output}: the converted model must be saved with the .keras suffix")
    network = read_network(source, strict=strict)
    model = build_model(network)
    errors = None
    images = None
    if check_images:
        rng = np.random.default_rng(seed)
        images = rng.uniform(0, 255, (check_images, *network.image_size)).astype(np.float32)
        errors = check_equivalence(model, network, images)
    meta = metadata(network, model, errors)
    if synthetic:
        meta["synthetic"] = True
    writes: list[tuple[Path, Any]] = [(output, lambda tmp: model.save(tmp))]
    graph = _onnx_conversion(network, images)
    if graph is not None:
        serialized, meta["onnx"] = graph
        meta["onnx"] = {"file": onnx_path(output).name, **meta["onnx"]}
        writes.append((onnx_path(output), lambda tmp: Path(tmp).write_bytes(serialized)))
    publish_together([*writes, (sidecar_path(output), lambda tmp: write_json(tmp, meta))])
    if graph is None:
        onnx_path(output).unlink(missing_ok=True)  # an earlier conversion's graph: not this network's
    logger.info("saved %s", ", ".join(str(path) for path, _ in writes + [(sidecar_path(output), None)]))
    return meta


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The sidecar of the converted model at ``path``; clear errors where either is missing or the sidecar is damaged."""
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFoundError(f"{path}: no converted VGG-Face model here; run notebooks/01_convert.ipynb or `gender-lib convert` first")
    side = sidecar_path(path)
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserFileNotFoundError(f"{side}: the model's metadata sidecar is missing; convert the .mat again") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConvertedModelError(f"{side}: metadata is not valid JSON ({error}); convert the .mat again") from None
    if not isinstance(meta, dict):
        raise ConvertedModelError(f"{side}: metadata is not a JSON object; convert the .mat again")
    return meta


def load_model(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """Load a converted ``.keras`` model and its sidecar; clear errors for missing/corrupt files."""
    import keras

    meta = read_sidecar(path)
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - Keras raises many types for damaged archives
        raise ConvertedModelError(f"{path}: cannot load the converted model ({type(error).__name__}: {error}); convert the .mat again") from None
    return model, meta


def has_onnx(path: str | os.PathLike[str]) -> bool:
    """Whether the converted model at ``path`` has its ONNX graph: the sidecar records one and the file is there."""
    try:
        meta = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, not JSON, not UTF-8
        return False
    return isinstance(meta, dict) and isinstance(meta.get("onnx"), dict) and onnx_path(path).is_file()


def load_onnx(path: str | os.PathLike[str], threads: int | None = None) -> tuple[Any, dict[str, Any]]:
    """The ONNX graph of the converted model at ``path`` (``.keras``; the graph beside it) as an
    ONNX Runtime :class:`~gender_lib.converters.onnx_graph.Runner`, and the sidecar. Raises
    :class:`ConvertedModelError` where the conversion wrote no graph, or the graph is not the one
    its sidecar records (changed, half-written), or cannot be loaded."""
    from gender_lib.converters.onnx_graph import Runner
    from gender_lib.fileio import sha256_file_cached

    path = Path(path)
    meta = read_sidecar(path)
    graph = onnx_path(path)
    record = meta.get("onnx")
    if not isinstance(record, dict) or not graph.is_file():
        raise ConvertedModelError(
            f"{path}: converted without its ONNX graph (by an older gender_lib, or where onnx was not installed); "
            "run `gender-lib convert` again to write it, or use engine 'keras'"
        )
    if record.get("sha256") != sha256_file_cached(graph):  # 580 MB: hashed once, then remembered by its stamp
        raise ConvertedModelError(
            f"{graph}: does not match its sidecar {sidecar_path(path).name} (sha256 differs): changed or half-written; convert the .mat again"
        )
    try:
        return Runner(graph, threads), meta
    except ImportError:
        raise
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own types for damaged graphs
        raise ConvertedModelError(f"{graph}: cannot load the ONNX graph ({type(error).__name__}: {error}); convert the .mat again") from None


def convert_or_demo(source: str | os.PathLike[str] | None = None, output: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Convert the user's ``vgg_face.mat``; where it is absent, say so and convert a synthetic one.

    The model goes to ``output`` when given. Otherwise the real one goes to
    ``checkpoints/vggface.keras`` and the synthetic one to ``checkpoints/vggface_synthetic.keras``,
    so it is never mistaken for the real network by later stages; its sidecar says
    ``"synthetic": true`` wherever it is saved. The returned metadata of a synthetic
    conversion carries a ``notice`` (logged, and shown first by :func:`describe`).
    """
    from gender_lib import config
    from gender_lib.converters.matconvnet import write_synthetic_mat

    p = config.paths()
    source = Path(source) if source else p.vgg_face_mat
    if source.exists():
        return convert(source, Path(output) if output else p.vggface_model)
    shown = source.relative_to(p.root) if source.is_relative_to(p.root) else source
    notice = (
        f"The real VGG-Face weights are not at {shown}.\n"
        "Converting a small synthetic file with the same layout instead, so the notebook still runs.\n"
        "To use the real network, place vgg_face.mat there (see docs/backbones.md, 'The VGG-Face weights')."
    )
    logger.info(notice)
    demo = write_synthetic_mat(p.data / "interim" / "vgg_face_synthetic.mat")
    meta = convert(demo, Path(output) if output else p.checkpoints / "vggface_synthetic.keras", synthetic=True)
    return {**meta, "notice": notice}


def describe(meta: dict[str, Any]) -> str:
    """A short, stable text summary of a conversion (what the notebook prints)."""
    errors = meta.get("equivalence_max_relative_error") or {}
    lines = [meta["notice"]] if meta.get("notice") else []
    lines += [
        f"layout: {meta['layout']}{' (synthetic)' if meta.get('synthetic') else ''}",
        f"layers: {len(meta['layers'])}, parameters: {meta['num_parameters']:,}, identities: {meta['num_classes']}",
        f"input: {meta['input']['size']} RGB 0-255, {meta['input']['resize']} resize, minus mean {meta['normalization']['average_image_rgb']}",
    ]
    for key, info in meta["descriptor_layers"].items():
        lines.append(f"descriptor {key}: {info['dim']}-d, after {info['after']}, L2-normalised: {info['l2_normalised']}")
    if errors:
        ok = all(value <= EQUIVALENCE_TOLERANCE for value in errors.values())
        lines.append(f"matches the NumPy reference on fc7 and fc8 within {EQUIVALENCE_TOLERANCE:g}: {ok}")
    onnx_errors = (meta.get("onnx") or {}).get("equivalence_max_relative_error")
    if onnx_errors:
        ok = all(value <= EQUIVALENCE_TOLERANCE for value in onnx_errors.values())
        lines.append(f"its ONNX graph ({meta['onnx']['file']}) matches the NumPy reference within {EQUIVALENCE_TOLERANCE:g} too: {ok}")
    return "\n".join(lines)
