"""VGG-Face from its MatConvNet layer list to a verified ONNX graph, and its preprocessing.

The graph (:func:`~gender_lib.converters.onnx_graph.vggface_graph`) takes RGB images in 0-255 at
the network's input size (224 x 224) and subtracts the file's ``averageImage`` itself, so it
cannot be fed wrongly normalised inputs. It has two outputs:

* ``fc7``: the 4096-d descriptor the authors recommend (after ``relu7``, L2-normalised);
* ``fc8``: the 2622-d identity scores before the softmax (what the original work used,
  without its extra ReLU).

:func:`reference_forward` is an independent float64 NumPy implementation of the same layer list
with MatConvNet's semantics; :func:`convert` checks the graph against it before anything is saved
(:mod:`~gender_lib.converters.verified`), and :func:`load` runs it on ONNX Runtime.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gender_lib.converters import verified
from gender_lib.converters.matconvnet import Network, descriptor_indices, read_network, validate
from gender_lib.fileio import sha256_bytes

logger = logging.getLogger(__name__)

FORMAT = "gender_lib.vggface_onnx/1"
AGAIN = "convert vgg_face.mat again (notebooks/01_convert.ipynb or `gender-lib convert`)"
DESCRIPTOR_LAYERS = ("fc7", "fc8")
#: Largest allowed ``max|graph - reference| / max|reference|`` per output: float32 round-off
#: over up to 25,088-term sums is ~1e-6; a wrong pad, activation or mean is >1e-2.
EQUIVALENCE_TOLERANCE = 1e-4


def resize_one(image: np.ndarray | Image.Image, size: tuple[int, int] = (224, 224), keep_aspect: bool = True) -> np.ndarray:
    """One RGB image -> float32 (size, 3), bicubic; ``keep_aspect``: scaled to cover, then centre-cropped."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    pil = pil.convert("RGB")
    height, width = size
    if keep_aspect and pil.width * height != pil.height * width:
        scale = max(width / pil.width, height / pil.height)
        pil = pil.resize((max(width, round(pil.width * scale)), max(height, round(pil.height * scale))), Image.BICUBIC)
        left, top = (pil.width - width) // 2, (pil.height - height) // 2
        pil = pil.crop((left, top, left + width, top + height))
    elif pil.size != (width, height):
        pil = pil.resize((width, height), Image.BICUBIC)
    return np.asarray(pil, np.float32)


# --------------------------------------------------------------------------- NumPy reference


def _windows(x: np.ndarray, size: tuple[int, int], stride: tuple[int, int]) -> Any:
    """(i, j, the (n, oh, ow, c) slice at kernel offset (i, j)) for every offset of a ``size`` window."""
    n, h, w, _ = x.shape
    oh, ow = (h - size[0]) // stride[0] + 1, (w - size[1]) // stride[1] + 1
    for i in range(size[0]):
        for j in range(size[1]):
            yield i, j, x[:, i : i + stride[0] * (oh - 1) + 1 : stride[0], j : j + stride[1] * (ow - 1) + 1 : stride[1], :]


def reference_forward(network: Network, images: np.ndarray) -> dict[str, np.ndarray]:
    """MatConvNet's forward pass in float64 NumPy, straight from the layer list.

    ``images``: (n, H, W, 3) RGB in 0-255 at the network's input size. Returns ``fc7``
    (post-ReLU, L2-normalised), ``fc8`` (pre-softmax) and ``prob`` (the softmax). Convolutions
    are sums of shifted 1x1 products (simple, exact and memory-light); max pools pad with -inf.
    """
    x = np.asarray(images, np.float64) - network.average_image.astype(np.float64)
    taps = {index: key for key, index in descriptor_indices(network).items()}
    result: dict[str, np.ndarray] = {}
    for index, layer in enumerate(network.layers):
        if layer.type in ("conv", "pool"):
            top, bottom, left, right = layer.pad
            padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=0.0 if layer.type == "conv" else -np.inf)
        if layer.type == "conv":
            parts = list(_windows(padded, layer.kernel.shape[:2], layer.stride))
            x = sum(patch @ layer.kernel[i, j].astype(np.float64) for i, j, patch in parts) + layer.bias.astype(np.float64)
        elif layer.type == "pool":
            x = np.maximum.reduce([patch for _, _, patch in _windows(padded, layer.pool, layer.stride)])
        elif layer.type == "relu":
            x = np.maximum(x, 0.0)
        elif layer.type == "softmax":
            flat = x.reshape(len(x), -1)
            flat = np.exp(flat - flat.max(axis=1, keepdims=True))
            x = result["prob"] = flat / flat.sum(axis=1, keepdims=True)
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
    return float(np.abs(actual - expected).max() / max(float(np.abs(expected).max()), 1e-30))


def check(runner: Any, network: Network, images: np.ndarray, tolerance: float = EQUIVALENCE_TOLERANCE) -> dict[str, Any]:
    """Compare every descriptor output of the graph's ``runner`` with :func:`reference_forward`
    on ``images``: the verification record, or :class:`~gender_lib.converters.verified.MismatchError`
    (whose ``figures["errors"]`` hold each output's max relative error)."""
    expected = reference_forward(network, images)
    actual = runner.outputs(np.asarray(images, np.float32))
    errors = {key: max_relative_error(actual[key], expected[key]) for key in DESCRIPTOR_LAYERS}
    return verified.verify("ONNX graph of VGG-Face", "a float64 NumPy forward pass of the layer list", f"{len(images)} random images", errors, tolerance)


# --------------------------------------------------------------------------- convert / load


def convert(
    source: str | os.PathLike[str] | Network,
    output: str | os.PathLike[str],
    *,
    check_images: int = 2,
    seed: int = 0,
    strict: bool = True,
    synthetic: bool = False,
) -> dict[str, Any]:
    """Convert a MatConvNet ``.mat`` (or a :class:`~gender_lib.converters.matconvnet.Network` already
    in memory) into the ONNX graph ``output`` (``.onnx``) and its sidecar.

    The graph is checked against the NumPy reference on ``check_images`` seeded random images
    before anything is written (0: unchecked, for tests of other things). ``strict=False`` accepts
    networks that are not VGG-Face-shaped. ``synthetic`` marks the sidecar of a stand-in network.
    Returns the sidecar's contents. Raises :class:`~gender_lib.converters.matconvnet.ConversionError`
    (a bad file) or :class:`~gender_lib.converters.verified.MismatchError`.
    """
    from gender_lib.converters import onnx_graph

    output = Path(output)
    if output.suffix != ".onnx":
        raise verified.ConvertedModelError(output, "the converted VGG-Face is saved as .onnx (its .json sidecar beside it)")
    if isinstance(source, Network):
        network = source
        validate(network, strict=strict)
    else:
        network = read_network(source, strict=strict)
    serialized = onnx_graph.vggface_graph(network).SerializeToString()
    runner = onnx_graph.Runner(serialized)
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (max(check_images, 1), *network.image_size)).astype(np.float32)
    record = check(runner, network, images) if check_images else None
    dims = {key: int(value.shape[-1]) for key, value in runner.outputs(images[:1]).items()}
    meta = {
        "format": FORMAT,
        "network": "VGG-Face" + (" (synthetic)" if synthetic else ""),
        "source": str(network.source) if network.source else None,
        "source_sha256": network.sha256 or sha256_bytes(serialized),  # a network built in memory: its graph's hash
        "layout": network.layout,
        "synthetic": synthetic,
        "input": {"size": list(network.image_size), "colour": "RGB", "range": [0, 255], "resize": network.interpolation, "keep_aspect": network.keep_aspect},
        "normalization": {"average_image_rgb": [round(float(v), 4) for v in network.average_image], "border": list(network.border)},
        "descriptor_layers": {
            "fc7": {"dim": dims["fc7"], "after": "relu7", "l2_normalised": True, "default": True},
            "fc8": {"dim": dims["fc8"], "after": "fc8 (pre-softmax, no ReLU)", "l2_normalised": False},
        },
        "layers": [layer.name for layer in network.layers],
        "num_parameters": sum(int(layer.kernel.size + layer.bias.size) for layer in network.convs),
        "num_classes": network.num_classes,
        "verification": record,
        **onnx_graph.versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    meta = verified.save(output, serialized, meta)
    logger.info("saved %s and %s", output, verified.sidecar_path(output).name)
    return meta


def load(path: str | os.PathLike[str], threads: int | None = None) -> tuple[Any, dict[str, Any]]:
    """The converted graph at ``path`` on ONNX Runtime (a :class:`~gender_lib.converters.onnx_graph.Runner`)
    and its sidecar, checked (:func:`gender_lib.converters.verified.read`)."""
    return verified.load(path, FORMAT, AGAIN, threads)


def convert_or_demo(source: str | os.PathLike[str] | None = None, output: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Convert the user's ``vgg_face.mat``; where it is absent, say so and convert a synthetic one.

    The real network goes to ``output`` (default ``checkpoints/vggface.onnx``). The synthetic one
    (:func:`~gender_lib.converters.matconvnet.synthetic_network`, in memory) goes to ``output`` where
    given, else into the store (``<store>/vggface_synthetic.onnx``), never into the checkout; its
    sidecar says ``"synthetic": true``. The returned metadata of a
    synthetic conversion carries a ``notice`` (logged, and shown first by :func:`describe`).
    """
    from gender_lib import config, store
    from gender_lib.converters.matconvnet import synthetic_network

    p = config.paths()
    source = Path(source) if source else p.vgg_face_mat
    if source.exists():
        return convert(source, Path(output) if output else p.vggface_model)
    shown = source.relative_to(p.root) if source.is_relative_to(p.root) else source
    notice = (
        f"The real VGG-Face weights are not at {shown}.\n"
        "Converting a small synthetic network of the same shape instead, so the notebook still runs.\n"
        "To use the real network, place vgg_face.mat there (see docs/backbones.md, 'The VGG-Face weights')."
    )
    logger.info(notice)
    target = Path(output) if output else store.root() / "vggface_synthetic.onnx"
    return {**convert(synthetic_network(), target, synthetic=True), "notice": notice}


def describe(meta: dict[str, Any]) -> str:
    """A short, stable text summary of a conversion (what notebook 01 and the CLI print)."""
    lines = [meta["notice"]] if meta.get("notice") else []
    lines += [
        f"layout: {meta['layout']}{' (synthetic)' if meta.get('synthetic') else ''}",
        f"layers: {len(meta['layers'])}, identities: {meta['num_classes']}",
        f"input: {meta['input']['size']} RGB 0-255, {meta['input']['resize']} resize, minus mean {meta['normalization']['average_image_rgb']}",
    ]
    lines += [
        f"descriptor {key}: {info['dim']}-d, after {info['after']}, L2-normalised: {info['l2_normalised']}" for key, info in meta["descriptor_layers"].items()
    ]
    return "\n".join(lines + ([verified.describe(meta)] if meta.get("verification") else []))
