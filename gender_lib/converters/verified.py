"""Save, check and load a verified network: the one way both converters keep what they make.

A conversion is an ONNX graph (``<name>.onnx``) and a JSON sidecar beside it (``<name>.json``)
that says where the network came from, how the graph was checked against its source
(:func:`verify`: the ``verification`` record) and the graph's sha256. :func:`save` publishes the
two together, and only after the check passed; :func:`read` refuses a sidecar of another format or
a graph that is not the one it records (changed, half-written); :func:`load` gives the graph on
ONNX Runtime (:class:`~gender_lib.converters.onnx_graph.Runner`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from gender_lib.errors import BadFileError, GenderLibError, UserFileNotFoundError
from gender_lib.fileio import publish_together, sha256_bytes, sha256_file_cached, write_json


class MismatchError(GenderLibError, RuntimeError):
    """A converted network does not reproduce its source within the tolerance; nothing was saved.
    ``figures``: the verification record (errors, tolerance, reference)."""

    def __init__(self, message: str, figures: dict[str, Any]):
        super().__init__(message)
        self.figures = figures


class ConvertedModelError(BadFileError):
    """A converted network or its sidecar that cannot be used (damaged, changed, another format)."""


class NoRealFacesError(GenderLibError, FileNotFoundError):
    """No real face images to verify the conversion on."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- real chips and dlib


def real_face_paths(n: int = 64, roots: Iterable[str | os.PathLike[str]] | None = None) -> list[Path]:
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
            return [files[int(i)] for i in np.linspace(0, len(files) - 1, n).round()] if len(files) > n else files
    raise NoRealFacesError(
        f"no real face images (*/*.jpg) in {' or '.join(tried)}: the conversion of dlib's network is "
        "verified on real faces and cannot run without them (set GENDER_LIB_DATASETS or pass chips)"
    )


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``<name>.json`` beside the graph ``<name>.onnx``."""
    return Path(path).with_suffix(".json")


def verify(what: str, reference: str, inputs: str, errors: dict[str, float], tolerance: float, **details: Any) -> dict[str, Any]:
    """The ``verification`` record of a conversion: ``errors`` (a name -> the largest error of that
    output against ``reference`` on ``inputs``), each at most ``tolerance``; otherwise
    :class:`MismatchError` (a NaN error fails too)."""
    record = {"reference": reference, "inputs": inputs, "errors": {k: float(v) for k, v in errors.items()}, "tolerance": tolerance, **details}
    bad = {k: v for k, v in record["errors"].items() if not v <= tolerance}
    if bad:
        shown = ", ".join(f"{k} {v:.3g}" for k, v in bad.items())
        raise MismatchError(f"the {what} does not reproduce {reference} on {inputs}: {shown} (tolerance {tolerance:g}); nothing was saved", record)
    return record


def save(path: str | os.PathLike[str], graph: bytes, meta: dict[str, Any]) -> dict[str, Any]:
    """Publish ``graph`` at ``path`` (``.onnx``) and ``meta`` plus the graph's sha256 as its sidecar,
    together: a failure leaves any earlier pair as it was. Returns the sidecar's contents."""
    path = Path(path)
    if path.suffix != ".onnx":
        raise ConvertedModelError(path, "a converted network is saved as .onnx (its .json sidecar beside it)")
    meta = {**meta, "sha256": sha256_bytes(graph)}
    publish_together([(path, lambda tmp: Path(tmp).write_bytes(graph)), (sidecar_path(path), lambda tmp: write_json(tmp, meta))])
    return meta


def read(path: str | os.PathLike[str], format: str, again: str) -> dict[str, Any]:
    """The checked sidecar of the graph at ``path``: it exists, parses, is of ``format`` and records
    the graph's sha256. Errors name the file and end with ``again`` (how to convert it again):
    :class:`~gender_lib.errors.UserFileNotFoundError` where the graph is missing,
    :class:`ConvertedModelError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFoundError(f"{path}: no converted network here; {again}")
    side = sidecar_path(path)
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConvertedModelError(path, f"its sidecar {side.name} is missing; {again}") from None
    except (ValueError, OSError) as error:
        raise ConvertedModelError(path, f"its sidecar {side.name} cannot be read ({error}); {again}") from None
    if not isinstance(meta, dict) or meta.get("format") != format:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ConvertedModelError(path, f"its sidecar {side.name} is not a {format} sidecar ({found!r}: made by another gender_lib version?); {again}")
    if meta.get("sha256") != sha256_file_cached(path):
        raise ConvertedModelError(path, f"does not match its sidecar {side.name} (sha256 differs): changed or half-written; {again}")
    return meta


def load(path: str | os.PathLike[str], format: str, again: str, threads: int | None = None, spin: bool = False) -> tuple[Any, dict[str, Any]]:
    """The graph at ``path`` on ONNX Runtime (a :class:`~gender_lib.converters.onnx_graph.Runner`
    with ``threads`` and ``spin``) and its sidecar, checked by :func:`read`."""
    from gender_lib.converters.onnx_graph import Runner

    meta = read(path, format, again)
    try:
        return Runner(Path(path), threads, spin), meta
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own types for a damaged graph
        raise ConvertedModelError(path, f"cannot be loaded ({type(error).__name__}: {error}); {again}") from None


def describe(meta: dict[str, Any]) -> str:
    """One line: what was converted, its weights, and how it was verified (rounded)."""
    v = meta["verification"]
    errors = ", ".join(f"{k} {value:.1e}" for k, value in v["errors"].items())
    return (
        f"{meta['network']} -> ONNX ({meta['num_parameters']:,} weights), verified against {v['reference']} "
        f"on {v['inputs']}: {errors} (tolerance {v['tolerance']:.0e})"
    )
