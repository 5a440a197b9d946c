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
import logging
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gender_lib.errors import GenderLibError
from gender_lib.fileio import display_path
from gender_lib.images import IMAGE_EXTENSIONS

MAX_PIXELS = 80_000_000  # larger images are refused with a message (decompression-bomb guard)
NO_FACE = (
    "no face found (faces from {min_face} px wide are searched for, --min-face; "
    "for a tightly cropped face at least 40x40 px, --no-detect / detect=False reads the whole image as one face)"
)
#: A ``--no-detect`` crop whose centre has a grey-level standard deviation below this (0-255 scale)
#: is refused as featureless: a blank or flat image, not a face. Measured: the lowest of the 300
#: embedded sample faces is 9.5, of every 10th face of the full shared data 4.7 (a very dark
#: photo); a blank JPEG is under 1.
MIN_CONTRAST = 2.0
#: A ``--no-detect`` crop must look at least a little like a face to the detector: its best heatmap
#: value on the crop (:func:`gender_lib.faces.face_score`) must reach this. Measured: the lowest of
#: the 300 embedded sample faces is 0.065 (a blurred baby no detector finds; the next 0.65), of every
#: 20th face of the full shared data 0.37; a gradient, a checkerboard, noise, flat grey with noise
#: and a drawn smiley score 0.006-0.023 (at 128 and 300 px).
FACE_CANDIDATE_THRESHOLD = 0.04
#: ``--no-detect`` reads the whole image as one face: meant for tight crops, it refuses photos larger
#: than this (a 19 MP photo took 25 s and 2.4 GB, and labelled one face of three).
NO_DETECT_MAX_PIXELS = 4_000_000


def check_face_crop(rgb: np.ndarray, name: str = "image") -> None:
    """Refuse, with :class:`PredictionError`, a whole image offered as a face (``--no-detect``) that
    cannot be one: smaller than :data:`gender_lib.images.MIN_FACE_SIDE` on a side, featureless
    (centre contrast below :data:`MIN_CONTRAST`), or without even a weak face candidate
    (:data:`FACE_CANDIDATE_THRESHOLD`)."""
    from gender_lib.images import MIN_FACE_SIDE

    height, width = rgb.shape[:2]
    if height * width > NO_DETECT_MAX_PIXELS:
        raise PredictionError(
            f"{name}: {width}x{height} is a photo, not a face crop: --no-detect (detect=False) reads the whole image as one face, "
            f"for tight crops up to {NO_DETECT_MAX_PIXELS / 1e6:.0f} MP; leave it out and detection finds the faces"
        )
    if min(height, width) < MIN_FACE_SIDE:
        raise PredictionError(f"{name}: too small to be a face ({width}x{height}; a face needs at least {MIN_FACE_SIDE}x{MIN_FACE_SIDE} pixels)")
    grey = rgb[height // 4 : height - height // 4, width // 4 : width - width // 4].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if grey.std() < MIN_CONTRAST:
        raise PredictionError(f"{name}: blank or featureless image (contrast {grey.std():.1f} < {MIN_CONTRAST}); not a face")
    from gender_lib.faces import face_score

    if face_score(rgb) < FACE_CANDIDATE_THRESHOLD:
        raise PredictionError(f"{name}: nothing in the image looks like a face, even to a detector told to be lenient; not labelled")


class PredictionError(GenderLibError, ValueError):
    """An input that cannot be predicted; the message says which and why."""


#: The words for the labels (the CSV and the code use the letters of :data:`gender_lib.metrics.CLASSES`).
WORDS = {"F": "female", "M": "male"}


def _given(value: Any) -> bool:
    return value not in ("", None) and value == value  # not missing, not NaN


def text(
    label: str, p_female: float, threshold: float, p_correct: Any = "", forced: str = "", reason: str = "", age_group: str = "", age_group_p: Any = ""
) -> str:
    """One answer as the CLI, the widget and notebook 06 print it, e.g. ``female, P(female) 0.993
    (threshold 0.468), P(correct) 0.982, age 25-37 (P 0.541)``; ``uncertain (looks under 15; would
    be male), ...`` below the model's confidence level. A missing P(correct) or age ('' or NaN:
    a model without them) is left out.

    The label is P(female) compared with the model's threshold (chosen on validation data), so the
    number shown is P(female) itself, never a 'confidence' that could read below 50%; P(correct) is
    how often answers like this one were right on validation faces."""
    word = WORDS.get(label, label)
    if label not in WORDS:
        word += f" ({reason}; would be {WORDS.get(forced, forced)})" if reason else f" (would be {WORDS.get(forced, forced)})"
    out = f"{word}, P(female) {p_female:.3f} (threshold {threshold:.3f})"
    out += f", P(correct) {p_correct:.3f}" if _given(p_correct) else ""
    return out + (f", age {age_group} (P {age_group_p:.3f})" if age_group else "")


def caption(label: str, p_female: float, age_group: str = "") -> str:
    """The short form of an answer that figures show beside a face: ``F P(F)=0.97 25-37``, ``?`` where uncertain."""
    return f"{label if label in WORDS else '?'} P(F)={p_female:.2f}" + (f" {age_group}" if age_group else "")


@dataclasses.dataclass
class Face:
    """One face: box (left, top, right, bottom) in the input image's pixels, label (``"F"``, ``"M"``
    or ``"uncertain"``), P(female), P(correct) and the age group (NaN / '' from a model without them)."""

    box: tuple[int, int, int, int]
    label: str
    p_female: float
    threshold: float = 0.5
    detected: bool = True
    p_correct: float = float("nan")
    forced: str = ""  # the label P(female) and the threshold give, also where the answer is uncertain
    reason: str = ""  # why uncertain
    age_group: str = ""
    age_group_p: float = float("nan")

    def row(self) -> dict[str, Any]:
        """The CSV's fields of this face (rounded to 4 decimals; '' where the model has no such number)."""
        return {
            "label": self.label,
            "p_female": round(self.p_female, 4),
            "threshold": round(self.threshold, 4),
            "p_correct": round(self.p_correct, 4) if _given(self.p_correct) else "",
            "forced_label": self.forced,
            "reason": self.reason,
            "age_group": self.age_group,
            "age_group_p": round(self.age_group_p, 4) if _given(self.age_group_p) else "",
            "box": " ".join(map(str, self.box)),
        }

    def text(self) -> str:
        """The answer and box as the CLI prints them (:func:`row_text` of its CSV fields)."""
        return row_text(self.row())

    def caption(self) -> str:
        return caption(self.label, self.p_female, self.age_group)


def read_image(image: Any, name: str = "image", channels: str = "rgb") -> np.ndarray:
    """A path, bytes, PIL image or array -> uint8 RGB (h, w, 3).

    Arrays follow :func:`gender_lib.images.array_to_rgb`: (h, w), (h, w, 1), (h, w, 3) or
    (h, w, 4); uint8 as is, uint16 scaled by 255/65535, other integers 0-255, floats 0-1 (by
    dtype, never by value); ``channels="bgr"`` for OpenCV's order. PIL images of every mode follow
    :func:`gender_lib.images.to_rgb`. Files: JPEG, PNG, BMP, GIF, WebP, TIFF and HEIC/HEIF, EXIF
    orientation applied.

    Raises :class:`PredictionError` naming ``name`` and the problem: an unreadable or damaged file,
    a format Pillow cannot read, more than :data:`MAX_PIXELS` pixels, an empty array, NaN or
    infinite values, values outside the dtype's range, another shape or type.
    """
    from PIL import Image, UnidentifiedImageError

    from gender_lib.images import ImageContractError, array_to_rgb, load_rgb, register_decoders, to_rgb

    if isinstance(image, np.ndarray):
        try:
            return array_to_rgb(image, channels)
        except ImageContractError as error:
            raise PredictionError(f"{name}: {error}") from None
    if isinstance(image, Image.Image):
        if image.width * image.height > MAX_PIXELS:
            raise PredictionError(f"{name}: image too large ({image.width}x{image.height}); downscale it first")
        try:
            return to_rgb(image)  # any mode (CMYK, palette, 16-bit, float), EXIF orientation applied
        except (ImageContractError, ValueError, OSError) as error:
            raise PredictionError(f"{name}: PIL image in mode {image.mode} cannot be read as a picture ({error})") from None
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        name = display_path(path)
        if path.is_dir():
            raise PredictionError(f"{name}: is a folder, not an image (give folders to predict_paths / the CLI)")
        if not path.exists():  # a pipe (-, /dev/stdin) is no regular file, and is read like one
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
    register_decoders()
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
        with warnings.catch_warnings(record=True) as said:  # Pillow's warnings (broken EXIF) name no file
            warnings.simplefilter("always")
            rgb = load_rgb(data)
    except ImageContractError as error:  # decoded, but its values are not a picture's
        raise PredictionError(f"{name}: {error}") from None
    except Exception as error:  # noqa: BLE001 - truncated or corrupt files
        raise PredictionError(f"{name}: the image is damaged and cannot be decoded ({error})") from None
    for warning in said:
        logging.getLogger(__name__).warning("%s: %s", name, warning.message)
    return rgb


class Predictor:
    """A saved model (:func:`gender_lib.modeling.load`) plus its backbone, ready for photos.

    The backbone is rebuilt from the model's record, so it returns exactly the output the model
    reads (the descriptor, and of the mirror image with flip averaging); ``vggface_path``: where a
    VGG-Face model's converted network is. ``min_confidence``: see :meth:`~gender_lib.modeling.FrozenHead.answer`;
    ``spin``: ONNX Runtime's threads wait spinning between photos (lower latency, more CPU)."""

    def __init__(
        self,
        head_path: str | os.PathLike[str] | None = None,
        vggface_path: str | os.PathLike[str] | None = None,
        *,
        backbone: Any = None,
        min_confidence: float | None = None,
        min_face: int | None = None,
        spin: bool = True,
    ):
        from gender_lib import backbones, config, modeling

        self.head_path = Path(head_path) if head_path else config.paths().default_head
        self.model = modeling.load(self.head_path)
        self.meta = self.model.meta_
        # spin: ONNX Runtime's threads spin between passes, for the latency of single photos; over a
        # folder they would only take the cores from detection (twice the CPU for the same answers).
        self.backbone = backbone or backbones.from_description(self.meta["backbone"], vggface_path, spin=spin)
        if self.backbone.id != self.meta["backbone"]["id"]:
            raise PredictionError(f"{self.head_path}: trained on {self.meta['backbone']['id']} rows, not {self.backbone.id}")
        self.threshold = float(self.model.threshold_)
        self.min_confidence = min_confidence
        self.min_face = config.BackboneConfig().min_face if min_face is None else int(min_face)
        self.spin = spin

    def predict(self, image: Any, detect: bool = True, name: str = "image", channels: str = "rgb") -> list[Face]:
        """Faces in ``image`` (largest first): see :func:`read_image` for what ``image`` may be.

        ``detect=False`` reads the whole image as one face crop; it must be a face at least
        :data:`gender_lib.images.MIN_FACE_SIDE` px on a side, not blank, and hold at least a weak face
        candidate (:func:`check_face_crop`).
        ``channels="bgr"`` for OpenCV arrays. Raises :class:`PredictionError`; no face is ``[]``.
        """
        from gender_lib.faces import detect as find_faces

        rgb = read_image(image, name, channels)
        if detect:
            found = find_faces(rgb, self.min_face, spin=self.spin)
            if not found:
                return []
            boxes: list[Any] = [face.clipped(rgb.shape[1], rgb.shape[0]) for face in found]
            x = np.stack([self.backbone.prepare_face(rgb, face.box) for face in found])
        else:
            check_face_crop(rgb, name)
            boxes = [(0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)]
            x = np.stack([self.backbone.prepare_face(rgb)])
        said = self.model.answer(self.backbone.embed(x), self.min_confidence)
        return [
            Face(tuple(int(v) for v in box), label, float(p), self.threshold, detect, float(q), forced, reason, age, float(age_p))
            for box, label, p, q, forced, reason, age, age_p in zip(
                boxes, said.label, said.p_female, said.p_correct, said.forced, said.reason, said.age_group, said.age_group_p
            )
        ]

    def predict_paths(self, paths: Iterable[str | os.PathLike[str]], detect: bool = True) -> list[dict[str, Any]]:
        """One row per face (or per problem) for each path; never raises for a bad file."""
        return [row for path in paths for row in self.rows(path, detect)]

    def rows(self, path: str | os.PathLike[str], detect: bool = True) -> list[dict[str, Any]]:
        """The rows of one file: one per face, numbered from 1 as the text output and the widget say
        it, or one row with a message. Never raises for the file: any error is its row's message."""
        shown = display_path(path)
        try:
            faces = self.predict(path, detect=detect, name=shown)
        except PredictionError as error:
            return [_message_row(shown, str(error).removeprefix(f"{shown}: "), True)]  # the path has its own column
        except Exception as error:  # noqa: BLE001 - one file must not end a run of thousands
            return [_message_row(shown, f"could not be predicted ({type(error).__name__}: {error})", True)]
        if not faces:
            pages = _pages(path)
            return [_message_row(shown, NO_FACE.format(min_face=self.min_face) + (f"; only page 1 of {pages} was read" if pages > 1 else ""), False)]
        return [{"path": shown, "face": number, **face.row(), "message": "", "problem": False} for number, face in enumerate(faces, 1)]


def _pages(path: str | os.PathLike[str]) -> int:
    """How many pages (frames) the image file holds: a TIFF's pages, an animation's frames (1 where unknown)."""
    from PIL import Image

    from gender_lib.images import register_decoders

    register_decoders()
    try:
        with Image.open(path) as image:
            return int(getattr(image, "n_frames", 1))
    except Exception:  # noqa: BLE001 - only a hint for a message
        return 1


def _message_row(path: str, message: str, problem: bool) -> dict[str, Any]:
    return {"path": path, "face": "", "label": "", "p_female": "", "box": "", "message": message, "problem": problem}


CSV_COLUMNS = ["path", "face", "label", "p_female", "threshold", "p_correct", "forced_label", "reason", "age_group", "age_group_p", "box", "message"]


#: Files a folder walk names as not predictable, by extension, with what to do.
UNSUPPORTED = {
    **dict.fromkeys(
        (".cr2", ".cr3", ".nef", ".arw", ".dng", ".orf", ".rw2", ".raf", ".srw", ".pef"), "camera RAW file: not supported; export it as JPEG first"
    ),
    **dict.fromkeys((".jxl",), "JPEG XL: not supported; convert it to JPEG or PNG first"),
    **dict.fromkeys((".svg", ".pdf", ".eps", ".psd"), "not a photo format this reads; export it as JPEG or PNG first"),
}


@dataclasses.dataclass
class Skipped:
    """A file a folder walk leaves out: ``problem`` ones (broken link, unreadable, unsupported
    image format) fail the run; other files (notes, videos) are only named."""

    path: Path | str
    reason: str
    problem: bool


def walk(folder: str | os.PathLike[str]) -> tuple[list[Path], list[Skipped]]:
    """(images, skipped) below ``folder``, both sorted; nothing is left out in silence.

    Images are files with an extension of :data:`IMAGE_EXTENSIONS` (any case; HEIC included).
    Links to files and folders are followed; a folder reached twice (a link loop, or two links to
    one place) is walked once. Broken links, unreadable folders, unsupported image formats
    (:data:`UNSUPPORTED`) and other files each become a :class:`Skipped` entry; so do hidden files
    and folders (names starting with a dot), which are not walked. Any file name works,
    including bytes that are not valid UTF-8.
    """
    root = Path(folder)
    images: list[Path] = []
    skipped: list[Skipped] = []
    seen: set[tuple[int, int]] = set()

    def visit(directory: Path) -> None:
        try:
            info = directory.stat()
            if (info.st_dev, info.st_ino) in seen:
                return  # a loop, or a folder already walked through another link
            seen.add((info.st_dev, info.st_ino))
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as error:
            skipped.append(Skipped(directory, f"folder cannot be read ({error.strerror or error})", True))
            return
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith("."):  # .DS_Store, ._photo.jpg (macOS), .git, .ipynb_checkpoints: named, not walked
                skipped.append(Skipped(path, "skipped: hidden", False))
                continue
            try:
                is_dir = entry.is_dir()  # follows links
                is_file = entry.is_file()
            except OSError as error:
                skipped.append(Skipped(path, f"cannot be read ({error.strerror or error})", True))
                continue
            if is_dir:
                visit(path)
            elif is_file:
                suffix = path.suffix.lower()
                if suffix in IMAGE_EXTENSIONS:
                    images.append(path)
                elif suffix in UNSUPPORTED:
                    skipped.append(Skipped(path, f"skipped: {UNSUPPORTED[suffix]}", True))
                else:
                    skipped.append(Skipped(path, f"skipped: not an image file ({suffix or 'no extension'})", False))
            elif entry.is_symlink():
                target = os.readlink(path)
                skipped.append(Skipped(path, f"broken link (points to {display_path(target)}, which does not exist)", True))
            else:
                skipped.append(Skipped(path, "skipped: not a regular file", False))

    visit(root)
    return images, skipped


def expand_inputs(items: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], list[Skipped]]:
    """Files stay as they are (a missing one is reported when predicted); each folder becomes the
    images below it, order kept; ``-`` is standard input. A file given twice (or reached twice) is
    predicted once; a URL is refused by name (nothing is downloaded). Returns (paths, skipped) as
    :func:`walk` does."""
    out: list[Path] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for item in items:
        if isinstance(item, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", item):
            skipped.append(Skipped(item, "is a URL: gender-lib reads local files only and downloads nothing; save the image and give its path", True))
            continue
        path = Path("/dev/stdin" if item == "-" else item)
        found, left_out = walk(path) if path.is_dir() else ([path], [])
        skipped.extend(left_out)
        for image in found:
            real = os.path.realpath(image)
            if real in seen and image.exists():
                skipped.append(Skipped(image, "skipped: given more than once (predicted once)", False))
            else:
                seen.add(real)
                out.append(image)
    return out, skipped


def skipped_rows(skipped: Sequence[Skipped]) -> list[dict[str, Any]]:
    """CSV/text rows for :class:`Skipped` entries (the path column shown escaped where needed)."""
    return [_message_row(display_path(s.path), s.reason, s.problem) for s in skipped]


class CsvRows:
    """The CSV of a prediction run, written row by row as the answers come (each flushed), so an
    interrupted or failing run keeps every row it finished. RFC 4180 quoting (CRLF line ends), so a
    file name with a comma, a quote, a newline or a carriage return reads back as one field.

    The path is checked before any work: a folder, a link or anything but a regular file is refused
    (a device or a link is never replaced), as is a folder that cannot be written in; the error is a
    :class:`PredictionError` naming the path. A file already there is started over."""

    def __init__(self, path: str | os.PathLike[str]):
        import csv

        self.path = Path(path)
        shown = display_path(self.path)
        if self.path.is_symlink():
            raise PredictionError(f"{shown}: is a symbolic link; give the path of a regular file to write the CSV to")
        if self.path.exists() and not self.path.is_file():
            raise PredictionError(f"{shown}: is {'a folder' if self.path.is_dir() else 'not a regular file'}; give the path of a file to write the CSV to")
        try:
            self.handle = open(self.path, "w", newline="", encoding="utf-8", errors="surrogateescape")
        except OSError as error:
            raise PredictionError(f"{shown}: the CSV cannot be written ({error.strerror or error}); choose another place with --csv") from None
        self.writer = csv.DictWriter(self.handle, CSV_COLUMNS, extrasaction="ignore")
        self.writer.writeheader()
        self.count = 0

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        try:
            self.writer.writerows(rows)
            self.handle.flush()
        except OSError as error:
            raise PredictionError(f"{display_path(self.path)}: writing the CSV failed after {self.count} rows ({error.strerror or error})") from None
        self.count += len(rows)

    def close(self) -> None:
        self.handle.close()


#: The Parquet output's columns: the CSV's, then ``key``, the sha256 of the file's content (what makes
#: a run resumable; ``path:<name>`` for a file that could not be read and for a file left out).
PARQUET_COLUMNS = [*CSV_COLUMNS, "key"]
#: A Parquet output gets a part file every this many files, or this many seconds after the last part,
#: whichever comes first: a kill loses at most about that much work (redone on the next run).
PART_FILES, PART_SECONDS = 4096, 60.0
#: The file in a Parquet output that records what made its rows (a resumed run must be the same).
PARQUET_SETTINGS = "_gender_lib.json"


def _parquet_schema() -> Any:
    import pyarrow as pa

    types = {"face": pa.int32(), "p_female": pa.float64(), "threshold": pa.float64(), "p_correct": pa.float64(), "age_group_p": pa.float64()}
    return pa.schema([(name, types.get(name, pa.string())) for name in PARQUET_COLUMNS])


class ParquetRows:
    """A prediction run's rows as a folder of Parquet part files, written as the run goes, and resumable.

    Rows are added a file at a time (each row carries its file's ``key``). Every ``part_files``
    files, or ``flush_seconds`` after the last part (default :data:`PART_FILES`, :data:`PART_SECONDS`), the buffered rows become one part file
    ``part-<ns>-<pid>.parquet``, written to a hidden temp file and renamed into place: a run killed
    at any moment leaves complete parts, whose files' rows are all there, or no part. On opening, the
    ``key`` column of the parts there (only that column is read) says which files are done; a later
    run skips them, so a killed run started again writes each file's rows once. Temp files a killed
    run left are removed. ``settings`` (the model's hash, ``min_face``, ...) are recorded in
    :data:`PARQUET_SETTINGS`; a folder made with other settings is refused, as is a path that is a file,
    and a folder another run is writing to (a lock). Missing numbers are nulls (the CSV's ''). Read it
    with ``pandas.read_parquet(path)`` or ``pyarrow.dataset.dataset(path)``.

    Raises :class:`PredictionError` naming the path."""

    def __init__(self, path: str | os.PathLike[str], settings: dict[str, Any], part_files: int | None = None, flush_seconds: float | None = None):
        import fcntl
        import json
        import time

        from gender_lib.fileio import write_json

        self.path = Path(path)
        shown = display_path(self.path)
        if self.path.exists() and not self.path.is_dir():
            raise PredictionError(f"{shown}: is a file; --output names a folder of Parquet part files (it is made), e.g. results.parquet")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.path / "_gender_lib.lock", "w")
        except OSError as error:
            raise PredictionError(f"{shown}: the Parquet output cannot be written ({error.strerror or error}); choose another place with --output") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise PredictionError(f"{shown}: another run is writing to it; wait for it to end, or give another --output") from None
        recorded = self.path / PARQUET_SETTINGS
        if recorded.is_file():
            before = json.loads(recorded.read_text())
            differ = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
            if differ:
                self._lock.close()
                raise PredictionError(
                    f"{shown}: holds rows made with other settings ({', '.join(differ)} differ); give another --output, or remove the folder to start over"
                )
        else:
            write_json(recorded, settings)
        for temp in self.path.glob(".part-*"):  # a part a killed run was writing: its files are redone
            temp.unlink(missing_ok=True)
        self.done: set[str] = self._keys()
        self.part_files = part_files or PART_FILES
        self.flush_seconds = PART_SECONDS if flush_seconds is None else flush_seconds
        self.count = 0
        self._columns: dict[str, list[Any]] = {name: [] for name in PARQUET_COLUMNS}
        self._files, self._last = 0, time.monotonic()

    def _keys(self) -> set[str]:
        import pyarrow.dataset as ds

        parts = sorted(self.path.glob("part-*.parquet"))
        if not parts:
            return set()
        try:
            keys = ds.dataset([str(p) for p in parts], format="parquet").to_table(columns=["key"]).column("key")
        except Exception as error:  # noqa: BLE001 - pyarrow's own error types
            raise PredictionError(f"{display_path(self.path)}: a part file cannot be read ({error}); remove it and run again (its files are redone)") from None
        return set(keys.to_pylist())

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Add the rows of one file (or of files left out), each with its ``key``; a part is written when due."""
        import time

        for name, values in self._columns.items():  # kept as columns: a part's worth of rows in little memory
            values.extend(_parquet_value(name, r.get(name, "")) for r in rows)
        self.done.update(r["key"] for r in rows)
        self._files += 1
        if self._files >= self.part_files or time.monotonic() - self._last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the rows added since the last part as one part file (atomically)."""
        import time

        import pyarrow as pa
        import pyarrow.parquet as pq

        from gender_lib.fileio import atomic_write

        rows = len(self._columns["key"])
        if rows:
            table = pa.table(self._columns, schema=_parquet_schema())
            target = self.path / f"part-{time.time_ns():020d}-{os.getpid()}.parquet"
            try:
                atomic_write(target, lambda temp: pq.write_table(table, temp))
            except OSError as error:
                raise PredictionError(
                    f"{display_path(self.path)}: writing a part file failed after {self.count} rows ({error.strerror or error}); run again to resume"
                ) from None
            self.count += rows
        self._columns = {name: [] for name in PARQUET_COLUMNS}
        self._files, self._last = 0, time.monotonic()

    def close(self) -> None:
        """Write what is buffered and release the folder."""
        try:
            self.flush()
        finally:
            self._lock.close()


def _parquet_value(name: str, value: Any) -> Any:
    if value == "" or value is None:
        return None  # a missing number (or face number) is null; a missing text is null too, as in pandas' CSV reading
    return display_path(value) if name == "path" else value


def content_key(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes (as the descriptor cache keys images), or ``path:<name>`` for
    something that is not a regular file that can be read (a pipe, a missing or unreadable file)."""
    from gender_lib.fileio import sha256_file

    try:
        if Path(path).is_file():
            return sha256_file(path, 1 << 20)
    except OSError:
        pass
    return f"path:{display_path(path)}"


@dataclasses.dataclass
class Work:
    """The files a keyed run (Parquet output, or on Ray) predicts: one per distinct content, with
    the other paths of the same content, and the rows of files left out; those already done counted."""

    todo: list[tuple[Path, str, list[str]]]  # (path, key, other paths with the same content: each a row saying so)
    left_out: list[dict[str, Any]]
    done_before: int


def plan(paths: Sequence[Path], skipped: Sequence[Skipped], done: set[str], progress: bool = False) -> Work:
    """Key every file by content (:func:`content_key`, in threads, with a progress bar) and keep what
    is not in ``done``: a file's content predicted once, whatever its paths."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    keys: list[str] = []
    with (
        ThreadPoolExecutor(4, thread_name_prefix="gender_lib-hash") as pool,
        tqdm(total=len(paths), desc="hash", unit="file", disable=not progress, mininterval=1.0) as bar,
    ):
        for start in range(0, len(paths), 256):  # a few hundred at a time: memory stays flat in the files
            keys.extend(pool.map(content_key, paths[start : start + 256]))
            bar.update(len(paths[start : start + 256]))
    first: dict[str, int] = {}
    todo: list[tuple[Path, str, list[str]]] = []
    done_before = 0
    for path, key in zip(paths, keys):
        if key in done:
            done_before += 1
        elif key in first:
            todo[first[key]][2].append(display_path(path))
        else:
            first[key] = len(todo)
            todo.append((path, key, []))
    left_out = []
    for row in skipped_rows(skipped):
        key = f"path:{row['path']}"
        if key in done:
            done_before += 1
        else:
            left_out.append({**row, "key": key})
    return Work(todo, left_out, done_before)


def keyed_rows(rows: list[dict[str, Any]], key: str, same: Sequence[str]) -> list[dict[str, Any]]:
    """A file's rows with its ``key``, and a row for each other path of the same content."""
    shown = rows[0]["path"] if rows else ""
    extra = [_message_row(other, f"same content as {shown}: predicted once, there", False) for other in same]
    return [{**r, "key": key} for r in rows + extra]


@dataclasses.dataclass
class Tally:
    """Counts of a run's rows, added one file's rows at a time: what the summary says, without
    keeping the rows (a Parquet run of millions of photos keeps only these)."""

    faces: int = 0
    with_face: int = 0
    no_face: int = 0
    failed: int = 0
    others: int = 0
    done_before: int = 0  # files whose rows the output already held (a resumed run)

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        """Count the rows of one file (or of files left out, each a row with a message)."""
        answered = [r for r in rows if not r["message"]]
        self.faces += len(answered)
        self.with_face += len({r["path"] for r in answered})
        self.no_face += sum(1 for r in rows if r["message"].startswith("no face found"))
        self.failed += sum(1 for r in rows if r.get("problem"))
        self.others += sum(1 for r in rows if r["message"] and not r.get("problem") and not r["message"].startswith("no face found"))


@dataclasses.dataclass
class PredictResult:
    """The rows of a run of :func:`gender_lib.stages.predict` (one per face, or per file that gave
    none) and the CSV or Parquet folder written, with the text the CLI prints. A run writing
    Parquet keeps no rows (``rows`` is empty): its :class:`Tally` counts them."""

    rows: list[dict[str, Any]]
    csv: Path | None = None
    tally: Tally | None = None
    output: Path | None = None

    def __post_init__(self) -> None:
        if self.tally is None:
            self.tally = Tally()
            self.tally.add(self.rows)

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Rows for files that could not be used (not an image, damaged, too large, missing, a
        broken link, an unsupported format, too small or blank for ``--no-detect``)."""
        return [r for r in self.rows if r.get("problem")]

    @property
    def other_files(self) -> list[dict[str, Any]]:
        """Rows for files a folder walk left out that are not images (notes, videos): named, not failures."""
        return [r for r in self.rows if r["message"] and not r.get("problem") and not r["message"].startswith("no face found")]

    @property
    def exit_code(self) -> int:
        """0 when every input was read (faces or not), 1 when any could not be read."""
        return 1 if self.tally.failed else 0

    def lines(self) -> list[tuple[str, bool]]:
        """(text, is_problem) per row (:func:`line`): faces go to stdout, problems to stderr."""
        return [line(r) for r in self.rows]

    def summary(self) -> str:
        """Images with a face + images without one + unreadable files = images; faces counted apart."""
        t = self.tally
        images = t.with_face + t.no_face + t.failed
        summary = f"{images} images: {t.with_face} with a face ({t.faces} faces), {t.no_face} without a face, {t.failed} could not be read"
        summary += f"; {t.others} other file{'s' if t.others != 1 else ''} skipped" if t.others else ""
        summary += f"; {t.done_before} files already in {display_path(self.output)} (skipped)" if t.done_before and self.output else ""
        summary += f"; wrote {display_path(self.csv)}" if self.csv else ""
        return summary + (f"; wrote {display_path(self.output)}" if self.output else "")

    __str__ = summary


def line(row: dict[str, Any]) -> tuple[str, bool]:
    """(text, goes to stderr) of one row, as :func:`text` renders an answer: a message (a problem, no
    face found, a file left out) goes to stderr."""
    if row["message"]:
        return f"{row['path']}: {row['message']}", True
    return f"{row['path']}: face {row['face']}: {row_text(row)}", False


def row_text(r: dict[str, Any]) -> str:
    """One face's CSV fields as text (:func:`text`, then the box): the CLI, the widget and notebook 06
    show the same digits, rounded once, from the CSV's values."""
    said = text(r["label"], r["p_female"], r["threshold"], r["p_correct"], r["forced_label"], r["reason"], r["age_group"], r["age_group_p"])
    return f"{said}, box {r['box']}"


def example_image(path: str | os.PathLike[str] = "") -> Path:
    """The photo notebook 06 predicts by default: ``path`` where given, else the first adult woman of
    the embedded sample in whose crop the detector finds one face (a demo should show its box)."""
    from gender_lib.config import paths
    from gender_lib.errors import UserFileNotFoundError
    from gender_lib.faces import detect
    from gender_lib.images import load_rgb

    if path:
        return Path(path).expanduser()
    sample = paths().sample
    for candidate in sorted(sample.glob("[3-5]?_F/nm*.jpg")) + sorted(sample.glob("*/*.jpg")):
        if len(detect(load_rgb(candidate))) == 1:
            return candidate
    raise UserFileNotFoundError(f"{sample}: no face of the embedded sample could be found; set example_image to a photo")


def run(
    config: Any,
    paths: Sequence[Path],
    skipped: Sequence[Skipped],
    *,
    head: str | os.PathLike[str] | None = None,
    detect: bool = True,
    csv: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    predictor: Predictor | None = None,
    on_rows: Any = None,
    progress: bool = False,
) -> PredictResult:
    """A keyed prediction run (what :func:`gender_lib.stages.predict` does with ``output`` or a
    ``ray_address``): files keyed by content (:func:`plan`), those the ``output`` already holds
    skipped, the rest predicted here or, with ``config.backbone.ray_address``, on Ray
    (:func:`gender_lib.distributed.predict_ray`), each file's rows written to the Parquet ``output``
    (:class:`ParquetRows`) and the ``csv`` and passed to ``on_rows`` as they come. With an ``output``
    the rows are not kept (the result's :class:`Tally` counts them): memory stays flat in the files."""
    from gender_lib import config as cfg
    from gender_lib.fileio import sha256_file

    head_path = Path(head or config.paths.head_path or cfg.paths().default_head)
    settings = {
        "model_sha256": sha256_file(head_path) if head_path.is_file() else display_path(head_path),
        "detect": bool(detect),
        "min_face": int(config.backbone.min_face),
        "min_confidence": float(config.evaluation.min_confidence),
    }
    sinks: list[Any] = []
    try:
        if output:
            sinks.append(ParquetRows(output, settings))
        if csv:
            sinks.append(CsvRows(csv))
        work = plan(paths, skipped, sinks[0].done if output else set(), progress)
        tally = Tally(done_before=work.done_before)
        kept: list[dict[str, Any]] | None = None if output else []
        given = {key: (path, same) for path, key, same in work.todo}

        def emit(rows: list[dict[str, Any]]) -> None:
            try:
                for sink in sinks:
                    sink.write(rows)
            finally:
                tally.add(rows)
                if kept is not None:
                    kept.extend(rows)
                if on_rows is not None:
                    on_rows(rows)

        def on_file(key: str, rows: list[dict[str, Any]]) -> None:
            path, same = given[key]
            shown = display_path(path)  # the worker read it by its absolute path
            emit(keyed_rows([{**r, "path": shown} for r in rows], key, same))

        if config.backbone.ray_address:
            from gender_lib import distributed

            distributed.predict_ray(
                [(path, key) for path, key, _ in work.todo],
                on_file,
                Predictor,
                head_path=head_path,
                vggface_path=config.vggface_model(),
                min_face=config.backbone.min_face,
                min_confidence=config.evaluation.min_confidence,
                detect=detect,
                device=config.backbone.device,
                address=config.backbone.ray_address,
                progress=progress,
            )
        else:
            from tqdm.auto import tqdm

            if predictor is None:
                from gender_lib.converters import onnx_graph

                onnx_graph.use(config.backbone.device)
                predictor = Predictor(
                    head_path, config.vggface_model(), min_confidence=config.evaluation.min_confidence, min_face=config.backbone.min_face, spin=False
                )
            for path, key, same in tqdm(work.todo, desc="predict", unit="file", disable=not progress, mininterval=1.0):
                emit(keyed_rows(predictor.rows(path, detect), key, same))
        if work.left_out:
            emit(work.left_out)
    finally:
        for sink in sinks:
            sink.close()
    return PredictResult(kept or [], Path(csv) if csv else None, tally, Path(output) if output else None)
