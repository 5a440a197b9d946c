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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gender_lib.errors import GenderLibError
from gender_lib.images import IMAGE_EXTENSIONS

MAX_PIXELS = 80_000_000  # larger images are refused with a message (decompression-bomb guard)
NO_FACE = "no face found (if the image is already a cropped face, predict it with detect=False / --no-detect)"


class PredictionError(GenderLibError, ValueError):
    """An input that cannot be predicted; the message says which and why."""


@dataclasses.dataclass
class Face:
    """One face: box (left, top, right, bottom) in the input image's pixels, label, P(female)."""

    box: tuple[int, int, int, int]
    label: str
    p_female: float
    threshold: float = 0.5
    detected: bool = True

    @property
    def word(self) -> str:
        return "female" if self.label == "F" else "male"

    def text(self) -> str:
        """E.g. ``female, P(female) 0.97 (threshold 0.45), box (16, 17, 106, 106)``.

        The label is P(female) compared with the head's threshold (chosen on validation data),
        so the number shown is P(female) itself, never a 'confidence' that could read below 50%.
        """
        return f"{self.word}, P(female) {self.p_female:.2f} (threshold {self.threshold:.2f}), box {self.box}"


def read_image(image: Any, name: str = "image") -> np.ndarray:
    """Path, bytes, PIL image or array -> uint8 RGB (h, w, 3); :class:`PredictionError` otherwise."""
    from PIL import Image, UnidentifiedImageError

    from gender_lib.images import load_rgb

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
        from gender_lib.images import to_rgb

        if image.width * image.height > MAX_PIXELS:
            raise PredictionError(f"{name}: image too large ({image.width}x{image.height}); downscale it first")
        return to_rgb(image)  # any mode (CMYK, palette, 16-bit), EXIF orientation applied
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        name = str(path)
        if path.is_dir():
            raise PredictionError(f"{name}: is a folder, not an image (give folders to predict_paths / the CLI)")
        if not path.is_file():
            raise PredictionError(f"{name}: no such file")
        try:
            image = path.read_bytes()
        except OSError as error:
            raise PredictionError(f"{name}: cannot be read ({error.strerror or error})") from None
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
        raise PredictionError(
            f"{name}: image too large ({width}x{height} = {width * height / 1e6:.0f} megapixels; the limit is {MAX_PIXELS / 1e6:.0f}). Downscale it first."
        )
    try:
        return load_rgb(data)
    except Exception as error:  # noqa: BLE001 - truncated or corrupt files
        raise PredictionError(f"{name}: the image is damaged and cannot be decoded ({error})") from None


class Predictor:
    """A trained head plus its backbone, ready for photos."""

    def __init__(
        self,
        head_path: str | os.PathLike[str] | None = None,
        backbone: Any = None,
        vggface_path: str | os.PathLike[str] | None = None,
        engine: str = "keras",
        cache_root: str | os.PathLike[str] | None = None,
    ):
        """``engine``: ``keras`` (fast per face once loaded: notebooks, the widget, folders) or
        ``dlib`` (no TensorFlow import: a few photos from the command line start in about a second)."""
        from gender_lib import backbones, config, finetune

        self.head_path = Path(head_path) if head_path else config.paths().default_head
        # The head's forward pass in NumPy: same numbers, and no TensorFlow import for it.
        self.model, self.meta = finetune.load_any(self.head_path, backend="numpy", cache_root=cache_root or config.paths().cache)
        # Single photos: one process (worker start-up would cost more than it saves).
        description = self.meta["backbone"]
        flip_head = isinstance(self.model, finetune.NumpyFlipHead)
        if flip_head:  # dlib's unchanged network: descriptors of face and mirror image, on either engine
            description = finetune.descriptor_description(description)
        self.backbone = backbone or backbones.from_description(
            description, vggface_path, workers=1, engine=engine, cache_root=cache_root or config.paths().cache
        )
        if flip_head and self.backbone.dim == finetune.NumpyFlipHead.dim // 2:
            self.backbone = finetune.MirroredDescriptors(self.backbone)
            description = self.backbone.describe()
        if self.backbone.id != description["id"]:
            raise PredictionError(f"{self.head_path}: trained on {self.meta['backbone']['id']} descriptors, not {self.backbone.id}")
        self.threshold = float(self.meta["threshold"])

    def predict(self, image: Any, detect: bool = True, name: str = "image") -> list[Face]:
        """Faces in ``image`` (largest first). ``detect=False`` treats the whole image as one face crop."""
        from gender_lib import backbones
        from gender_lib import head as hd

        rgb = read_image(image, name)
        if detect:
            boxes: list[Any] = backbones.detect_faces(rgb)
            if not boxes:
                return []
            x = np.stack([self.backbone.prepare_face(rgb, box) for box in boxes])
        else:
            boxes = [(0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)]
            x = np.stack([self.backbone.prepare_face(rgb)])
        p = hd.predict_proba(self.model, self.backbone.embed(x))
        return [Face(tuple(int(v) for v in box), "F" if pi >= self.threshold else "M", float(pi), self.threshold, detect) for box, pi in zip(boxes, p)]

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
                rows.append({"path": str(path), "face": "", "label": "", "p_female": "", "box": "", "message": NO_FACE})
            for number, face in enumerate(faces, 1):  # numbered from 1, as the text output and the widget say it
                rows.append(
                    {
                        "path": str(path),
                        "face": number,
                        "label": face.label,
                        "p_female": round(face.p_female, 4),
                        "threshold": round(face.threshold, 4),
                        "box": " ".join(map(str, face.box)),
                        "message": "",
                    }
                )
        return rows

    def predict_folder(self, folder: str | os.PathLike[str], csv_path: str | os.PathLike[str], detect: bool = True) -> Path:
        """Predict every image below ``folder``; write one CSV row per face (atomically)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise PredictionError(f"{folder}: not a folder")
        return write_csv(self.predict_paths(images_in(folder), detect=detect), csv_path)

    def close(self) -> None:
        self.backbone.close()


CSV_COLUMNS = ["path", "face", "label", "p_female", "threshold", "box", "message"]


def images_in(folder: str | os.PathLike[str]) -> list[Path]:
    """Every image file below ``folder`` (by extension, sorted, hidden files skipped)."""
    return sorted(
        p
        for p in Path(folder).rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def expand_inputs(items: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files stay as they are; each folder becomes the images below it (order kept)."""
    out: list[Path] = []
    for item in items:
        path = Path(item)
        out.extend(images_in(path) if path.is_dir() else [path])
    return out


def write_csv(rows: Sequence[dict[str, Any]], csv_path: str | os.PathLike[str]) -> Path:
    """The rows of :meth:`Predictor.predict_paths` as a CSV, written atomically."""
    import pandas as pd

    from gender_lib.fileio import atomic_write

    frame = pd.DataFrame(list(rows), columns=CSV_COLUMNS)
    return atomic_write(Path(csv_path), lambda tmp: frame.to_csv(tmp, index=False))


def draw(rgb: np.ndarray, faces: Sequence[Face], title: str = "") -> Any:
    """The image with each face's box and label, as a :class:`gender_lib.plots.Plot`."""
    from gender_lib import plots

    return plots.detections(rgb, faces, title)
