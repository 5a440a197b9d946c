"""Predictor: an image (path, bytes, PIL image or array) -> for each face, a box, a label and P(female).

Photos go through dlib's HOG face detector (its weights ship inside dlib) and the crop or
alignment the backbone expects: dlib's 5-point chip from the full photo for the dlib
backbone, a margin crop for VGG-Face. Pre-cut faces (like the dataset crops) can skip
detection with ``detect=False``. Every user-facing failure is a :class:`PredictionError`
with a plain message (not an image, too large, unreadable); no face is an empty result.
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from gender_lib.dataset import IMAGE_EXTENSIONS

#: The head trained by the package's own pipeline on the shared data (committed, a few KB).
DEFAULT_HEAD = "dlib_gender_head.keras"
MAX_PIXELS = 80_000_000  # larger images are refused with a message (decompression-bomb guard)
DETECT_MAX_SIDE = 1600  # detection runs on a copy no larger than this; boxes are mapped back


class PredictionError(ValueError):
    """An input that cannot be predicted; the message says which and why."""


@dataclasses.dataclass
class Face:
    """One face: box (left, top, right, bottom) in the input image's pixels, label, P(female)."""

    box: tuple[int, int, int, int]
    label: str
    p_female: float
    detected: bool = True

    @property
    def confidence(self) -> float:
        return self.p_female if self.label == "F" else 1.0 - self.p_female

    def text(self) -> str:
        word = "female" if self.label == "F" else "male"
        return f"{word} ({self.confidence:.0%}) at {self.box}"


def read_image(image: Any, name: str = "image") -> np.ndarray:
    """Path, bytes, PIL image or array -> uint8 RGB (h, w, 3); :class:`PredictionError` otherwise."""
    from PIL import Image, UnidentifiedImageError

    from gender_lib.dataset import load_rgb

    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] not in (3, 4):
            raise PredictionError(f"{name}: an image array must be (h, w), (h, w, 3) or (h, w, 4), got {array.shape}")
        if array.dtype != np.uint8:
            scale = 255.0 if array.dtype.kind == "f" and array.max() <= 1.0 else 1.0
            array = np.clip(array * scale, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(array[:, :, :3])
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        image = buffer.getvalue()
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        name = str(path)
        if not path.is_file():
            raise PredictionError(f"{name}: no such file")
        image = path.read_bytes()
    if not isinstance(image, (bytes, bytearray, memoryview)):
        raise PredictionError(f"{name}: expected a path, bytes, a PIL image or an array, got {type(image).__name__}")
    data = bytes(image)
    if not data:
        raise PredictionError(f"{name}: the file is empty")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Image.DecompressionBombError as error:
        raise PredictionError(f"{name}: image too large ({error})") from None
    except UnidentifiedImageError:
        raise PredictionError(f"{name}: not an image (or a format Pillow cannot read)") from None
    except Exception as error:  # noqa: BLE001
        raise PredictionError(f"{name}: the image is damaged and cannot be decoded ({error})") from None
    if width * height > MAX_PIXELS:
        raise PredictionError(f"{name}: image too large ({width}x{height} = {width * height / 1e6:.0f} megapixels; the limit is {MAX_PIXELS / 1e6:.0f}). Downscale it first.")
    try:
        return load_rgb(data)
    except Exception as error:  # noqa: BLE001 - truncated or corrupt files
        raise PredictionError(f"{name}: the image is damaged and cannot be decoded ({error})") from None


def detect_faces(rgb: np.ndarray, upsample: int = 1) -> list[tuple[int, int, int, int]]:
    """dlib HOG face boxes (left, top, right, bottom) in ``rgb``'s pixels, largest first."""
    from PIL import Image

    from gender_lib.backbones import _dlib_models

    height, width = rgb.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
    small = rgb if scale == 1.0 else np.asarray(Image.fromarray(rgb).resize((round(width * scale), round(height * scale)), Image.BILINEAR))
    # Small images (face crops) need upsampling for HOG to see the face; big photos do not.
    found = _dlib_models().detector(np.ascontiguousarray(small), upsample if max(small.shape[:2]) < 800 else 0)
    boxes = []
    for r in found:
        left, top, right, bottom = (int(round(v / scale)) for v in (r.left(), r.top(), r.right(), r.bottom()))
        boxes.append((max(0, left), max(0, top), min(width - 1, right), min(height - 1, bottom)))
    return sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))


def _dlib_face_input(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    import dlib

    from gender_lib.backbones import _dlib_models

    models = _dlib_models()
    shape = models.landmarks(rgb, dlib.rectangle(*box))
    return np.asarray(dlib.get_face_chip(rgb, shape, size=150, padding=0.25), np.uint8)


def _margin_crop(rgb: np.ndarray, box: tuple[int, int, int, int], margin: float = 0.3) -> np.ndarray:
    left, top, right, bottom = box
    w, h = right - left, bottom - top
    side = int(max(w, h) * (1 + 2 * margin))
    cx, cy = (left + right) // 2, (top + bottom) // 2
    x0, y0 = max(0, cx - side // 2), max(0, cy - side // 2)
    return rgb[y0 : min(rgb.shape[0], y0 + side), x0 : min(rgb.shape[1], x0 + side)]


class Predictor:
    """A trained head plus its backbone, ready for photos."""

    def __init__(self, head_path: str | os.PathLike[str] | None = None, backbone: Any = None, vggface_path: str | os.PathLike[str] | None = None):
        from gender_lib import backbones, config
        from gender_lib import head as hd

        self.head_path = Path(head_path) if head_path else config.paths().checkpoints / DEFAULT_HEAD
        self.model, self.meta = hd.load_head(self.head_path)
        self.backbone = backbone or backbones.from_description(self.meta["backbone"], vggface_path)
        if self.backbone.id != self.meta["backbone"]["id"]:
            raise PredictionError(f"{self.head_path}: trained on {self.meta['backbone']['id']} descriptors, not {self.backbone.id}")
        self.threshold = float(self.meta["threshold"])

    def _inputs(self, rgb: np.ndarray, boxes: Sequence[tuple[int, int, int, int]]) -> np.ndarray:
        if self.backbone.name == "dlib":
            return np.stack([_dlib_face_input(rgb, box) for box in boxes])
        return np.stack([self.backbone.prepare(_margin_crop(rgb, box)) for box in boxes])

    def predict(self, image: Any, detect: bool = True, name: str = "image") -> list[Face]:
        """Faces in ``image`` (largest first). ``detect=False`` treats the whole image as one face."""
        from gender_lib import head as hd

        rgb = read_image(image, name)
        if detect:
            boxes = detect_faces(rgb)
            if not boxes:
                return []
            x = self._inputs(rgb, boxes)
        else:
            boxes = [(0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)]
            x = np.stack([self.backbone.prepare(rgb)])
        p = hd.predict_proba(self.model, self.backbone.embed(x))
        return [Face(tuple(int(v) for v in box), "F" if pi >= self.threshold else "M", float(pi), detect) for box, pi in zip(boxes, p)]

    def predict_paths(self, paths: Iterable[str | os.PathLike[str]], detect: bool = True) -> list[dict[str, Any]]:
        """One row per face (or per problem) for each path; never raises for a bad file."""
        rows = []
        for path in paths:
            try:
                faces = self.predict(path, detect=detect, name=str(path))
            except PredictionError as error:
                message = str(error).removeprefix(f"{path}: ")  # the path has its own column
                rows.append({"path": str(path), "face": "", "label": "", "p_female": "", "box": "", "message": message})
                continue
            if not faces:
                rows.append({"path": str(path), "face": "", "label": "", "p_female": "", "box": "", "message": "no face found"})
            for i, face in enumerate(faces):
                rows.append({"path": str(path), "face": i, "label": face.label, "p_female": round(face.p_female, 4),
                             "box": " ".join(map(str, face.box)), "message": ""})
        return rows

    def predict_folder(self, folder: str | os.PathLike[str], csv_path: str | os.PathLike[str], detect: bool = True) -> Path:
        """Predict every image below ``folder``; write one CSV row per face (atomically)."""
        import pandas as pd

        from gender_lib.fileio import atomic_write

        folder = Path(folder)
        if not folder.is_dir():
            raise PredictionError(f"{folder}: not a folder")
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        rows = self.predict_paths(paths, detect=detect)
        frame = pd.DataFrame(rows, columns=["path", "face", "label", "p_female", "box", "message"])
        return atomic_write(Path(csv_path), lambda tmp: frame.to_csv(tmp, index=False))

    def close(self) -> None:
        self.backbone.close()


def draw(rgb: np.ndarray, faces: Sequence[Face], title: str = "") -> Any:
    """A matplotlib figure of the image with each face's box and label."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    height, width = rgb.shape[:2]
    figure = Figure(figsize=(5, 5 * height / max(width, 1)))
    ax = figure.subplots()
    ax.imshow(rgb)
    for face in faces:
        left, top, right, bottom = face.box
        color = "#d6336c" if face.label == "F" else "#1c7ed6"
        ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, edgecolor=color, linewidth=2.5))
        ax.text(left, max(0, top - 4), f"{face.label} {face.confidence:.0%}", color="white", fontsize=11, va="bottom",
                bbox={"facecolor": color, "edgecolor": "none", "pad": 2})
    ax.set_title(title or ("no face found" if not faces else ""), fontsize=10)
    ax.axis("off")
    figure.tight_layout()
    return figure
