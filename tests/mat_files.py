"""MatConvNet ``.mat`` files written from a :class:`~gender_lib.converters.matconvnet.Network`, in
either published layout with the real file's dtypes: the synthetic inputs of the converter's tests."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gender_lib.converters.matconvnet import Layer, Network, synthetic_network
from gender_lib.fileio import atomic_write


def _cell(items: Sequence[Any], shape: tuple[int, int] | None = None) -> np.ndarray:
    cell = np.empty(shape or (1, len(items)), dtype=object)
    for i, item in enumerate(items):
        cell.reshape(-1)[i] = item
    return cell


def _layer_struct(layer: Layer, layout: str) -> dict[str, Any]:
    struct: dict[str, Any] = {"name": layer.name, "type": layer.type}
    tidy = layout == "tidy"
    if layer.type == "conv":
        bias = layer.bias.reshape(-1, 1) if not tidy else layer.bias.reshape(1, -1)
        struct["weights"] = _cell([layer.kernel, bias], (1, 2))
        struct["stride"] = np.array([layer.stride], np.float64)
        struct["pad"] = np.array([layer.pad], np.float64)
        if tidy:
            struct.update(precious=False, dilate=np.array([[1.0, 1.0]]), opts=np.empty((1, 0), dtype=object))
    elif layer.type == "pool":
        struct.update(
            method=layer.method,
            pool=np.array([layer.pool], np.float64),
            stride=np.array([layer.stride], np.float64),
            pad=np.array([layer.pad], np.float64),
        )
        if tidy:
            struct["opts"] = np.empty((1, 0), dtype=object)
    elif layer.type == "relu" and tidy:
        struct["leak"] = 0.0
    elif layer.type == "dropout" and tidy:
        struct["rate"] = 0.5
    if tidy:
        struct["precious"] = False
    return struct


def write_mat(network: Network, path: str | os.PathLike[str], layout: str = "2015") -> Path:
    """Write ``network`` as a MatConvNet file in the ``2015`` or ``tidy`` layout (atomically)."""
    import scipy.io

    if layout not in ("2015", "tidy"):
        raise ValueError(f"layout must be '2015' or 'tidy', got {layout!r}")
    layers = _cell([_layer_struct(layer, layout) for layer in network.layers])
    average = network.average_image.astype(np.float32)
    # dtypes as in the real 2015 file: imageSize and border uint8, averageImage float32 3x1
    # (the tidy file stores it 1x1x3), keepAspect a logical.
    normalization = {
        "averageImage": average.reshape(3, 1) if layout == "2015" else average.reshape(1, 1, 3),
        "imageSize": np.array([network.image_size], np.uint8 if max(network.image_size) < 256 else np.float64),
        "interpolation": network.interpolation,
        "keepAspect": np.array([[network.keep_aspect]], np.uint8),
        "border": np.array([network.border], np.uint8),
    }
    # The real file's classes.name holds ids ('n00000001'), classes.description the person names.
    classes = {
        "name": _cell([f"n{i + 1:08d}" for i in range(len(network.class_names))]),
        "description": _cell(network.class_names),
    }
    if layout == "2015":
        contents = {"net": {"layers": layers, "normalization": normalization, "classes": classes}}
    else:
        contents = {"layers": layers, "meta": {"normalization": normalization, "classes": classes}}
    path = Path(path)
    return atomic_write(path, lambda tmp: scipy.io.savemat(tmp, contents, do_compression=False))


def write_synthetic_mat(path: str | os.PathLike[str], layout: str = "2015", seed: int = 0, num_classes: int | None = None, **widths: Any) -> Path:
    """Write a narrow synthetic VGG-Face ``.mat`` with the real file's layout and dtypes.

    ``num_classes`` sets fc8's width (default VGG-Face's 2622; 1000 mimics a VGG-16 ImageNet file).
    """
    network = synthetic_network(seed=seed, with_dropout=layout == "2015", num_classes=num_classes, **widths)
    return write_mat(network, path, layout)
