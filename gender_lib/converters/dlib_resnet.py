"""dlib's face recognition ResNet as an ONNX graph, checked against dlib itself before it is saved.

:func:`convert` reads ``dlib_face_recognition_resnet_model_v1.dat`` (:mod:`~gender_lib.converters.dlib_dnn`),
writes it as an ONNX graph (:func:`~gender_lib.converters.onnx_graph.dlib_graph`: uint8 RGB chips
(n, 150, 150, 3) -> the 128-d descriptor exactly as dlib returns it, not L2-normalised), compares
the graph with ``dlib.face_recognition_model_v1.compute_face_descriptor`` on real aligned face
chips, and only when every descriptor is within :data:`TOLERANCE` saves it with its sidecar
(:mod:`~gender_lib.converters.verified`). :func:`ensure_converted` does that once per store
(``<store>/dlib_onnx/<sha12>.onnx``); :func:`load` checks the sidecar before loading.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gender_lib.converters import dlib_dnn, verified
from gender_lib.errors import GenderLibError
from gender_lib.fileio import sha256_file_cached

logger = logging.getLogger(__name__)

#: Bump when the graph built from the same file would differ; stored conversions are then redone.
CONVERTER_VERSION = 3  # 3: the pooled features (the fc layer's input) are a second output
FORMAT = "gender_lib.dlib_onnx/2"
AGAIN = "`gender-lib convert --dlib --force` converts it again"
CHIP_SIZE = 150
CHIP_PADDING = 0.25
#: Largest allowed |converted - dlib| on any descriptor component (dlib's descriptors are ~0.1;
#: the conversion measures about 5e-7, each wrong rule 5e-4 or more).
TOLERANCE = 1e-5
MIN_CHIPS = 50
DEFAULT_CHIPS = 64


def face_chips(paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
    """uint8 (n, 150, 150, 3) aligned chips of the images at ``paths``: the package's image loader
    (EXIF orientation applied) and the dlib backbone's own chip (:func:`gender_lib.faces.dlib_chip`)."""
    from gender_lib.faces import dlib_chip
    from gender_lib.images import load_rgb

    chips = [dlib_chip(load_rgb(p), size=CHIP_SIZE, padding=CHIP_PADDING)[0] for p in paths]
    return np.stack(chips) if chips else np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)


_REFERENCE: dict[tuple[str, str], np.ndarray] = {}


def dlib_descriptors(chips: np.ndarray, source: str | os.PathLike[str] | None = None) -> np.ndarray:
    """dlib's own descriptors, float64 (n, 128): ``face_recognition_model_v1(source).compute_face_descriptor(chips)``
    (the reference; remembered for a few chip sets, as tests check several graphs against one)."""
    import dlib

    source = Path(source) if source is not None else dlib_dnn.default_source()
    chips = np.ascontiguousarray(chips, np.uint8)
    key = (sha256_file_cached(source), hashlib.sha256(chips.tobytes()).hexdigest())
    if key not in _REFERENCE:
        vectors = dlib.face_recognition_model_v1(str(source)).compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
        while len(_REFERENCE) >= 4:
            del _REFERENCE[next(iter(_REFERENCE))]
        _REFERENCE[key] = np.asarray([np.asarray(v) for v in vectors], np.float64).reshape(len(chips), -1)
    return _REFERENCE[key].copy()


def embed(runner: Any, chips: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """float32 (n, 128) descriptors of uint8 chips (n, 150, 150, 3) from the graph's :class:`~gender_lib.converters.onnx_graph.Runner`."""
    chips = np.ascontiguousarray(chips, np.uint8)
    if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
        raise ValueError(f"expected chips (n, {CHIP_SIZE}, {CHIP_SIZE}, 3), got {chips.shape}")
    parts = [runner(chips[i : i + batch_size]) for i in range(0, len(chips), batch_size)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, dlib_dnn.DESCRIPTOR_DIM), np.float32)


def compare(actual: np.ndarray, expected: np.ndarray) -> dict[str, float]:
    """The worst and median per-chip max |difference|, and the lowest cosine similarity."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"descriptor shapes differ: {actual.shape} vs {expected.shape}")
    diff = np.abs(actual - expected).max(axis=1)
    cosine = (actual * expected).sum(axis=1) / np.maximum(np.linalg.norm(actual, axis=1) * np.linalg.norm(expected, axis=1), 1e-30)
    return {"max_abs_diff": float(diff.max()), "median_abs_diff": float(np.median(diff)), "min_cosine": float(cosine.min())}


# --------------------------------------------------------------------------- convert / load


def default_path(root: str | os.PathLike[str] | None = None, source: str | os.PathLike[str] | None = None) -> Path:
    """``<root>/dlib_onnx/<first 12 hex of the source's sha256>.onnx`` (root: the store, :func:`gender_lib.store.root`)."""
    from gender_lib import store

    source = Path(source) if source is not None else dlib_dnn.default_source()
    return Path(root or store.root()) / "dlib_onnx" / f"{sha256_file_cached(source)[:12]}.onnx"


def convert(
    source: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    chips: np.ndarray | None = None,
    *,
    tolerance: float = TOLERANCE,
    build_rules: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Read dlib's ``.dat``, write its ONNX graph, verify it against dlib, then save it (default
    :func:`default_path`). Returns the sidecar's contents.

    ``chips``: uint8 (n >= 50, 150, 150, 3) aligned real face chips; default: 64 from
    :func:`~gender_lib.converters.verified.real_face_paths` made by :func:`face_chips`. ``build_rules`` override the semantics
    (:data:`~gender_lib.converters.dlib_dnn.DLIB_RULES`; only to show the check catches each wrong
    one). Nothing is written unless every chip is within ``tolerance``. Raises
    :class:`~gender_lib.converters.dlib_dnn.DlibModelError` (a bad file), :class:`~gender_lib.converters.verified.NoRealFacesError`,
    :class:`~gender_lib.converters.verified.MismatchError`, ``OSError`` (the output cannot be written).
    """
    graph, meta = verified_graph(source, chips, tolerance=tolerance, build_rules=build_rules)
    output = Path(output) if output is not None else default_path(source=meta["source"])
    meta = verified.save(output, graph, meta)
    logger.info("saved %s: %s", output, verified.describe(meta))
    return meta


def verified_graph(
    source: str | os.PathLike[str] | None = None,
    chips: np.ndarray | None = None,
    *,
    tolerance: float = TOLERANCE,
    build_rules: Mapping[str, Any] | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """(the serialized graph, its sidecar's contents) of :func:`convert`, verified, not saved."""
    import dlib

    from gender_lib.converters import onnx_graph

    network = dlib_dnn.read_network(source)
    chip_source = "given chips"
    if chips is None:
        paths = verified.real_face_paths(DEFAULT_CHIPS)
        chip_source = f"{len(paths)} real face chips from {paths[0].parent.parent.name}/"
        chips = face_chips(paths)
    chips = np.asarray(chips)
    if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3) or len(chips) < MIN_CHIPS:
        raise verified.NoRealFacesError(f"the conversion is verified on at least {MIN_CHIPS} real chips (n, 150, 150, 3); got {chips.shape}")
    if chip_source == "given chips":
        chip_source = f"{len(chips)} given face chips"
    graph = onnx_graph.dlib_graph(network, **dict(build_rules or {}))
    serialized = graph.SerializeToString()
    figures = compare(embed(onnx_graph.Runner(serialized), chips), dlib_descriptors(chips, network.source))
    record = verified.verify(
        "ONNX graph of dlib's ResNet",
        "dlib.face_recognition_model_v1.compute_face_descriptor",
        chip_source,
        {"max |diff|": figures["max_abs_diff"]},
        tolerance,
        median_abs_diff=figures["median_abs_diff"],
        min_cosine=figures["min_cosine"],
    )
    meta = {
        "format": FORMAT,
        "network": "dlib's face recognition ResNet",
        "converter_version": CONVERTER_VERSION,
        "source": str(network.source),
        "source_sha256": network.sha256,
        "input": {
            "size": [CHIP_SIZE, CHIP_SIZE, 3],
            "colour": "RGB",
            "dtype": "uint8",
            "alignment": f"dlib 5-point get_face_chip(size={CHIP_SIZE}, padding={CHIP_PADDING})",
            "mean_rgb": list(network.input.mean_rgb),
            "divisor": network.input.divisor,
        },
        "descriptor": {"dim": dlib_dnn.DESCRIPTOR_DIM, "l2_normalised": False, "layer": "fc (no bias), as dlib returns it"},
        "layer_counts": {kind: network.count(kind) for kind in ("con", "affine", "relu", "add_prev", "avg_pool", "max_pool")},
        "file_parameters": network.num_parameters(),
        # the graph's weights: the affine layers and the input's mean and divisor folded into the convolutions
        "num_parameters": sum(int(np.prod(t.dims)) for t in graph.graph.initializer if t.data_type == t.FLOAT),
        "verification": record,
        **onnx_graph.versions(),
        "dlib_version": getattr(dlib, "__version__", "unknown"),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    return serialized, meta


def cached_conversion(root: str | os.PathLike[str] | None = None, source: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The sidecar of the verified conversion in the store, where it is intact and was made by this
    converter version from this source; None where it must be converted (again)."""
    path = default_path(root, source)
    try:
        meta = verified.read(path, FORMAT, AGAIN)
    except GenderLibError as error:
        if path.exists():
            logger.warning("%s; it will be converted again", error)
        return None
    return meta if meta.get("converter_version") == CONVERTER_VERSION and meta.get("source_sha256", "")[:12] == path.stem else None


def ensure_converted(root: str | os.PathLike[str] | None = None, source: str | os.PathLike[str] | None = None) -> Path:
    """The verified conversion in the store: converted (and verified) on first use, reused after."""
    path = default_path(root, source)
    if cached_conversion(root, source) is None:
        convert(source, path)
    return path


def load(path: str | os.PathLike[str], threads: int | None = None, spin: bool = False) -> tuple[Any, dict[str, Any]]:
    """The converted graph at ``path`` on ONNX Runtime (``threads`` intra-op threads, default the
    process's cores; ``spin``: see :class:`~gender_lib.converters.onnx_graph.Runner`) and its checked sidecar."""
    return verified.load(path, FORMAT, AGAIN, threads, spin)
