"""Face descriptor backbones behind one small interface, chosen by name.

A backbone turns RGB face crops into float32 descriptors:

* ``prepare(rgb)``: one uint8 (h, w, 3) image -> the model's input (runs in the input pipeline);
* ``embed(batch)``: a stacked batch of prepared inputs -> float32 (n, dim);
* ``id``: stable, and includes a hash of the weights and the preprocessing, so cached
  descriptors are never mixed across models.

Two implementations: ``vggface`` (the converted VGG-Face, fc7 or fc8, fp32 or bfloat16) and
``dlib`` (dlib's ResNet face descriptor, 128-d, weights from the ``face_recognition_models``
package). :func:`get_backbone` picks one by name; ``"auto"`` means vggface where a converted
model exists, else dlib.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gender_lib.fileio import sha256_file

BACKBONES = ("vggface", "dlib")


class Backbone(Protocol):
    """What every backbone provides."""

    name: str
    id: str
    dim: int
    input_size: tuple[int, int]
    preprocessing: str

    def prepare(self, rgb: np.ndarray) -> np.ndarray: ...

    def embed(self, batch: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


# --------------------------------------------------------------------------- dlib


@functools.lru_cache(maxsize=None)
def _hash_of(path: str) -> str:
    return sha256_file(path)


def dlib_model_paths() -> dict[str, Path]:
    """Where ``face_recognition_models`` installed dlib's files (no download ever happens)."""
    try:
        import face_recognition_models as frm
    except ImportError as error:  # pragma: no cover - it is a declared dependency
        raise RuntimeError("the dlib backbone needs the face_recognition_models package (pip install face_recognition_models)") from error
    return {
        "descriptor": Path(frm.face_recognition_model_location()),
        "landmarks5": Path(frm.pose_predictor_five_point_model_location()),
        "cnn_detector": Path(frm.cnn_face_detector_model_location()),
    }


class _DlibModels:
    """dlib objects for one process (dlib objects cannot be pickled to workers)."""

    def __init__(self) -> None:
        import dlib

        paths = dlib_model_paths()
        self.descriptor = dlib.face_recognition_model_v1(str(paths["descriptor"]))
        self.landmarks = dlib.shape_predictor(str(paths["landmarks5"]))
        self.detector = dlib.get_frontal_face_detector()


@functools.lru_cache(maxsize=1)
def _dlib_models() -> _DlibModels:
    return _DlibModels()


def dlib_chip(rgb: np.ndarray, models: _DlibModels | None = None, size: int = 150, padding: float = 0.25) -> tuple[np.ndarray, bool]:
    """dlib's aligned face chip of an RGB crop: HOG detection (upsampled once), 5-point landmarks,
    then ``get_face_chip``. Where no face is found the whole crop is taken as the face box.
    Returns (chip uint8 (size, size, 3), face_found).
    """
    import dlib

    models = models or _dlib_models()
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    found = models.detector(rgb, 1)
    box = max(found, key=lambda r: r.area()) if found else dlib.rectangle(0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)
    shape = models.landmarks(rgb, box)
    return np.asarray(dlib.get_face_chip(rgb, shape, size=size, padding=padding), np.uint8), bool(found)


def _dlib_embed_chunk(chips: np.ndarray) -> np.ndarray:
    models = _dlib_models()
    vectors = models.descriptor.compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
    return np.asarray([np.asarray(v) for v in vectors], np.float32).reshape(len(chips), 128)


class DlibBackbone:
    """dlib's ResNet-34-style face descriptor (128-d, LFW 99.38%), CC0 weights from PyPI.

    ``align``: ``"chip"`` (default) runs dlib's 5-point alignment on each crop, as the model
    was trained; ``"resize"`` feeds the crop resized to 150 x 150 directly. benchmarks/dlib_align.py
    measures both. ``workers`` processes share the embedding work (dlib runs one core each).
    """

    name = "dlib"
    dim = 128
    input_size = (150, 150)

    def __init__(self, align: str = "chip", workers: int | None = None):
        if align not in ("chip", "resize"):
            raise ValueError(f"dlib align must be 'chip' or 'resize', got {align!r}")
        self.align = align
        self.workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
        self.weights_sha256 = _hash_of(str(dlib_model_paths()["descriptor"]))
        self.preprocessing = f"rgb-uint8;{'dlib-5pt-chip150-pad0.25' if align == 'chip' else 'bicubic-resize150'}"
        self.id = f"dlib-resnet128-{align}-{self.weights_sha256[:12]}"
        self._pool = None

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        if self.align == "chip":
            return dlib_chip(rgb)[0]
        from PIL import Image

        return np.asarray(Image.fromarray(np.asarray(rgb, np.uint8)).resize(self.input_size, Image.BICUBIC), np.uint8)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, np.uint8)
        if batch.ndim != 4 or batch.shape[1:] != (*self.input_size, 3):
            raise ValueError(f"dlib expects a batch (n, 150, 150, 3) of uint8 chips, got {batch.shape}")
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        if self.workers == 1 or len(batch) < 2 * self.workers:
            return _dlib_embed_chunk(batch)
        from concurrent.futures.process import BrokenProcessPool

        pool = self._get_pool()
        parts = np.array_split(batch, self.workers)
        try:
            return np.concatenate(list(pool.map(_dlib_embed_chunk, parts)))
        except BrokenProcessPool:
            self._pool = None
            raise RuntimeError(
                "dlib worker processes died. In a script, put the code that extracts under "
                "`if __name__ == '__main__':` (worker processes re-import the script), or pass workers=1."
            ) from None

    def _get_pool(self) -> Any:
        if self._pool is None:
            import concurrent.futures
            import multiprocessing

            if multiprocessing.parent_process() is not None:
                raise RuntimeError("gender_lib's dlib backbone started from a worker's import of an unguarded script; "
                                   "put the script's work under `if __name__ == '__main__':`")

            # spawn: forking a process that may also run TensorFlow threads is unsafe.
            self._pool = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "id": self.id, "dim": self.dim, "preprocessing": self.preprocessing,
                "weights": "dlib_face_recognition_resnet_model_v1.dat (face_recognition_models, CC0)",
                "weights_sha256": self.weights_sha256}


# --------------------------------------------------------------------------- VGG-Face


def with_precision(model: Any, precision: str) -> Any:
    """The same Keras model computing in ``float32`` or ``bfloat16`` (mixed: weights stay fp32)."""
    import keras

    if precision == "float32":
        return model
    if precision != "bfloat16":
        raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}")

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        if not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = "mixed_bfloat16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def cpu_supports_bf16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AVX512-BF16 or AMX); without them
    Keras' mixed_bfloat16 runs but is not faster than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16"))


class VGGFaceBackbone:
    """The converted VGG-Face: fc7 (4096-d, L2-normalised, default) or fc8 (2622-d)."""

    name = "vggface"

    def __init__(self, model: Any, meta: dict[str, Any], layer: str = "fc7", precision: str = "float32"):
        import tensorflow as tf

        if layer not in ("fc7", "fc8"):
            raise ValueError(f"VGG-Face descriptor layer must be 'fc7' or 'fc8', got {layer!r}")
        self.layer, self.precision, self.meta = layer, precision, meta
        if precision == "bfloat16" and not cpu_supports_bf16():
            import warnings

            warnings.warn("this CPU has no bfloat16 matrix instructions (AVX512-BF16/AMX): bfloat16 will not be faster than float32", stacklevel=2)
        self.model = with_precision(model, precision)
        size = meta["input"]["size"]
        self.input_size = (int(size[0]), int(size[1]))
        self.keep_aspect = bool(meta["input"].get("keep_aspect", True))
        self.dim = int(meta["descriptor_layers"][layer]["dim"])
        weights = (meta.get("source_sha256") or "unknown")[:12]
        self.preprocessing = f"rgb;bicubic{self.input_size[0]};minus-mean-in-model"
        self.id = f"vggface-{layer}-{precision}-{weights}"
        model_ = self.model

        @tf.function(input_signature=[tf.TensorSpec((None, *self.input_size, 3), tf.float32)])
        def forward(x: Any) -> Any:
            return tf.cast(model_(x, training=False)[layer], tf.float32)

        self._forward = forward

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], layer: str = "fc7", precision: str = "float32") -> "VGGFaceBackbone":
        from gender_lib import vggface

        model, meta = vggface.load_model(path)
        return cls(model, meta, layer, precision)

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        from gender_lib.vggface import resize_one

        return resize_one(rgb, self.input_size, self.keep_aspect)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (*self.input_size, 3):
            raise ValueError(f"VGG-Face expects a batch (n, {self.input_size[0]}, {self.input_size[1]}, 3), got {batch.shape}")
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self._forward(batch).numpy()

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "id": self.id, "dim": self.dim, "preprocessing": self.preprocessing,
                "layer": self.layer, "precision": self.precision, "weights_sha256": self.meta.get("source_sha256"),
                "synthetic": bool(self.meta.get("synthetic"))}


def get_backbone(
    name: str = "auto",
    *,
    vggface_path: str | os.PathLike[str] | None = None,
    layer: str = "fc7",
    precision: str = "float32",
    align: str = "chip",
    workers: int | None = None,
) -> Backbone:
    """A backbone by name: ``vggface``, ``dlib`` or ``auto`` (vggface if converted, else dlib)."""
    from gender_lib import config

    path = Path(vggface_path) if vggface_path else config.paths().vggface_model
    if name == "auto":
        name = "vggface" if path.is_file() else "dlib"
    if name == "vggface":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no converted VGG-Face model; run notebooks/01_convert.ipynb (needs vgg_face.mat) or use backbone='dlib'")
        return VGGFaceBackbone.from_checkpoint(path, layer, precision)
    if name == "dlib":
        if precision != "float32":
            raise ValueError("the dlib backbone runs in float32 only")
        return DlibBackbone(align=align, workers=workers)
    raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES} or 'auto'")


def from_description(description: dict[str, Any], vggface_path: str | os.PathLike[str] | None = None) -> Backbone:
    """Rebuild the backbone a head was trained with (from its recorded ``describe()``), checking the id."""
    name = description.get("name")
    if name == "dlib":
        align = "chip" if "-chip-" in description["id"] else "resize"
        backbone: Backbone = DlibBackbone(align=align)
    elif name == "vggface":
        backbone = get_backbone("vggface", vggface_path=vggface_path, layer=description.get("layer", "fc7"), precision=description.get("precision", "float32"))
    else:
        raise ValueError(f"unknown backbone in the head's metadata: {description!r}")
    if backbone.id != description["id"]:
        raise ValueError(f"the head was trained on {description['id']} but this machine's {name} is {backbone.id} (other weights); "
                         "its predictions would be meaningless")
    return backbone
