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

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
#: Smallest width and height an image may have to be kept.
MIN_SIDE = 8


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
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ValueError(f"too small ({width}x{height})")
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


def to_rgb(image: Any) -> np.ndarray:
    """A PIL image in any mode -> uint8 (h, w, 3) RGB; EXIF rotation applied, alpha on white.

    Grayscale, palette, CMYK, 16-bit and 32-bit integer and alpha images all become 8-bit RGB.
    """
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_rgb(source: str | os.PathLike[str] | bytes) -> np.ndarray:
    """Any supported image (a path or its bytes) -> uint8 (h, w, 3) RGB; see :func:`to_rgb`."""
    from PIL import Image

    data = source if isinstance(source, (bytes, bytearray, memoryview)) else Path(source).read_bytes()
    with Image.open(io.BytesIO(bytes(data))) as image:
        return to_rgb(image)
