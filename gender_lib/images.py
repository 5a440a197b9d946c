"""Image files: which names count as images, checking that a file decodes, loading it as RGB.

No pandas here (and PIL only inside the functions): the cleaning step runs :func:`inspect_file`
in spawned worker processes, which import only this module.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

#: HEIC/HEIF (the iPhone's default), decoded by pillow-heif (a dependency, registered on first use).
HEIF_EXTENSIONS = {".heic", ".heif"}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".png", ".apng", ".bmp", ".gif", ".webp", ".avif", ".tif", ".tiff", ".tga"} | HEIF_EXTENSIONS
#: Smallest face, in pixels of width and height, that anything here labels: a dataset image or a
#: ``--no-detect`` crop below it is refused, and detection searches down to faces this wide
#: (dlib's HOG window is 80 px, so 40 px faces need the image upsampled once, to twice its size).
MIN_FACE_SIDE = 40


def register_decoders() -> bool:
    """Teach Pillow HEIC/HEIF (pillow-heif); once, on first use, never at import. False if it is missing."""
    global _HEIF
    if _HEIF is None:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
            _HEIF = True
        except ImportError:
            _HEIF = False
    return _HEIF


_HEIF: bool | None = None


def is_image_name(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def inspect_image(data: bytes) -> dict[str, Any]:
    """Decode ``data`` fully; return width, height, mode and what loading to RGB will change.

    Raises ``ValueError`` with the reason ("empty file", "truncated image", "corrupt or not
    an image", "too small") when it cannot be used.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ValueError("empty file")
    register_decoders()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode, (width, height) = image.mode, image.size
            orientation = image.getexif().get(0x0112, 1)
    except UnidentifiedImageError:
        raise ValueError("corrupt or not an image") from None
    except OSError as error:
        raise ValueError("truncated image" if "truncated" in str(error).lower() else f"corrupt image ({error})") from None
    except Exception as error:  # noqa: BLE001 - decoders raise assorted errors on bad data
        raise ValueError(f"corrupt image ({type(error).__name__}: {error})") from None
    notes = []
    if mode != "RGB":
        notes.append(f"{mode} converted to RGB")
    if orientation not in (1, None):
        notes.append(f"EXIF orientation {orientation} applied")
    if width < MIN_FACE_SIDE or height < MIN_FACE_SIDE:
        raise ValueError(f"too small ({width}x{height}; a face needs at least {MIN_FACE_SIDE}x{MIN_FACE_SIDE} pixels)")
    return {"width": width, "height": height, "mode": mode, "note": "; ".join(notes)}


def inspect_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``path`` once: its sha256 plus :func:`inspect_image`'s facts, or ``{"error": reason}``.

    Never raises for a bad file (it runs in worker processes over whole datasets).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        return {"error": f"unreadable ({error.strerror or error})"}
    digest = hashlib.sha256(data).hexdigest()
    try:
        facts = inspect_image(data)
    except ValueError as error:
        return {"error": str(error), "sha256": digest}
    return {"sha256": digest, **facts}


class ImageContractError(ValueError):
    """An array or PIL image whose values cannot be read as a picture; the message says why."""


#: PIL modes whose values are not 8-bit: what each is taken to hold (see :func:`to_rgb`).
WIDE_MODES = {"I;16": "uint16", "I;16B": "uint16", "I;16L": "uint16", "I;16N": "uint16", "I": "int", "F": "float"}


def to_rgb(image: Any) -> np.ndarray:
    """A PIL image in any mode -> uint8 (h, w, 3) RGB; EXIF rotation applied, alpha on white.

    * 8-bit modes (``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``) convert with
      Pillow; modes with alpha (``RGBA``, ``LA``, ``PA``, ``La``, ``RGBa``) are composited on white.
    * ``I;16*`` (16-bit, as Pillow opens 16-bit PNGs): values taken as 0-65535 and scaled by that
      range, as for a uint16 array.
    * ``I`` (32-bit integers): values taken as 0-255, as for an int32 array (a clear error outside).
    * ``F`` (32-bit float, as in scientific TIFFs): values 0-1 as for a float array, or else 0-255;
      a file says nothing of its range, so both are read (a clear error outside them).

    Raises :class:`ImageContractError` for NaN, infinite or out-of-range values.
    """
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in WIDE_MODES:
        values = np.asarray(image)
        if (
            image.mode == "F"
            and np.isfinite(values).all()
            and values.size
            and 1 + FLOAT_SLACK < values.max() <= 255 + FLOAT_SLACK
            and values.min() >= -FLOAT_SLACK
        ):
            values = values / 255.0  # a float image holding 0-255
        if WIDE_MODES[image.mode] == "uint16":
            if values.size and (values.min() < 0 or values.max() > 65535):
                raise ImageContractError(f"a PIL image in mode {image.mode} must hold 0-65535, got {values.min()} to {values.max()}")
            values = values.astype(np.uint16)
        return array_to_rgb(values)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode == "La":  # premultiplied: Pillow converts it to LA only
        image = image.convert("LA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


#: How far a float image may stray outside [0, 1] (resampling overshoot) before it is refused.
FLOAT_SLACK = 0.05


def array_to_rgb(array: np.ndarray, channels: str = "rgb") -> np.ndarray:
    """An image array -> uint8 (h, w, 3) RGB, by its dtype, never by its values.

    Shapes: (h, w) grey, (h, w, 1), (h, w, 3) colour or (h, w, 4) colour + alpha (composited on
    white). ``channels``: ``"rgb"`` (PIL, matplotlib, imageio) or ``"bgr"`` (OpenCV's order).
    Dtypes:

    * uint8: 0-255, as is;
    * uint16: 0-65535 (OpenCV's 16-bit PNG), scaled by 255/65535;
    * other integers (int32/int64 from ``np.array`` of Python ints): 0-255;
    * floats: 0-1 (values up to :data:`FLOAT_SLACK` outside are clipped).

    Raises :class:`ImageContractError` for an empty array, another shape, a bool or complex
    array, NaN or infinite values, and values outside the dtype's range (e.g. floats 0-255: pass
    uint8, or divide by 255).
    """
    if channels not in ("rgb", "bgr"):
        raise ImageContractError(f"channels must be 'rgb' or 'bgr', got {channels!r}")
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageContractError(f"an image array must be (h, w), (h, w, 1), (h, w, 3) or (h, w, 4), got shape {array.shape}")
    if array.size == 0:
        raise ImageContractError(f"the image array is empty (shape {array.shape})")
    kind = array.dtype.kind
    if kind == "f":
        if not np.all(np.isfinite(array)):
            raise ImageContractError(f"the image array holds {int(np.sum(~np.isfinite(array)))} NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < -FLOAT_SLACK or high > 1 + FLOAT_SLACK:
            raise ImageContractError(
                f"a float image array must hold values in [0, 1], got {low:g} to {high:g}; "
                "for 0-255 values pass uint8 (array.astype(np.uint8)) or divide by 255"
            )
        scaled = np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0
    elif array.dtype == np.uint16:
        scaled = array.astype(np.float64) * (255.0 / 65535.0)
    elif kind in "ui":
        low, high = int(array.min()), int(array.max())
        if array.dtype != np.uint8 and (low < 0 or high > 255):
            hint = "for a 16-bit image pass uint16 (read as 0-65535), else clip to 0-255" if high > 1023 and low >= 0 else "clip it to 0-255"
            raise ImageContractError(f"an integer image array ({array.dtype}) must hold 0-255, got {low} to {high}: {hint}")
        scaled = None
    else:
        raise ImageContractError(f"an image array must be uint8, uint16, another integer type or float, got {array.dtype}")
    rgb = array.astype(np.uint8) if scaled is None else np.floor(scaled + 0.5).astype(np.uint8)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    if channels == "bgr":
        rgb = np.concatenate([rgb[:, :, 2::-1], rgb[:, :, 3:]], axis=2)
    if rgb.shape[2] == 4:  # alpha on white, as for PIL images
        alpha = rgb[:, :, 3:].astype(np.float64) / 255.0
        rgb = np.floor(rgb[:, :, :3] * alpha + 255.0 * (1 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def load_rgb(source: str | os.PathLike[str] | bytes) -> np.ndarray:
    """Any supported image (a path or its bytes) -> uint8 (h, w, 3) RGB; see :func:`to_rgb`."""
    from PIL import Image

    data = source if isinstance(source, (bytes, bytearray, memoryview)) else Path(source).read_bytes()
    register_decoders()
    with Image.open(io.BytesIO(bytes(data))) as image:
        return to_rgb(image)
