"""Face descriptor backbones behind one small interface, chosen by name.

A backbone turns RGB face images into float32 descriptors and owns every step of that:

* ``prepare_face(rgb, box=None)``: one uint8 (h, w, 3) image and an optional face box
  (left, top, right, bottom) -> the network's input. With no box the image is a face crop
  (the datasets); with a box it is a photo (the predictor). Alignment, cropping and resizing
  all happen here, so training and prediction cannot prepare faces differently.
* ``embed(batch)``: a stacked batch of prepared inputs -> float32 (n, dim);
* ``describe()``: every fact that changes the descriptors (weights hash, alignment, resize,
  layer, output); ``id`` is a hash of it, so no cache or head can be paired with other
  preprocessing, and :func:`from_description` rebuilds the backbone from it.

Two implementations, registered by name in :data:`REGISTRY`: ``dlib`` (dlib's ResNet face
descriptor, 128-d, weights from the ``face_recognition_models`` package) and ``vggface`` (the
converted VGG-Face, fc7 or fc8). Both run their network as an ONNX graph on ONNX Runtime,
converted from the original file and verified against its source (:mod:`gender_lib.converters`);
TensorFlow is never imported. Each returns one of :data:`OUTPUTS` per face.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gender_lib.converters.dlib_dnn import dlib_model_paths
from gender_lib.errors import ConfigError, GenderLibError, UserFileNotFoundError
from gender_lib.faces import dlib_chip
from gender_lib.fileio import sha256_bytes, sha256_file_cached

log = logging.getLogger(__name__)

#: A face box (left, top, right, bottom) in an image's pixels, whole or not.
FloatBox = tuple[float, float, float, float]
#: What a backbone returns per face: ``descriptor`` (dlib's 128-d, VGG-Face's fc7/fc8), and
#: ``pooled`` (dlib's 256-d average-pooled features, the input of its last projection: research,
#: measured no better as the head's input, docs/results.md), each also ``+mirror`` (of the face,
#: then of its mirror image: flip averaging). Recorded in ``describe()`` (absent for
#: ``descriptor``, so those ids never changed).
OUTPUTS = ("descriptor", "descriptor+mirror", "pooled", "pooled+mirror")
#: Record keys that say which output (and, in records of gender_lib 0.1, which engine), not which network and preprocessing.
OUTPUT_KEYS = ("id", "engine", "output", "dim")
#: The largest batch one forward pass takes (bigger batches are split: memory stays bounded).
MAX_BATCH = 128


class BackboneError(GenderLibError, ValueError):
    """A backbone that cannot be built as described (other weights, unknown name)."""


def output_of(description: dict[str, Any]) -> str:
    """The output a backbone record returns (:data:`OUTPUTS`, or another a research backbone records)."""
    return str(description.get("output", "descriptor"))


def backbone_id(name: str, description: dict[str, Any]) -> str:
    """``<name>-<12 hex>``: a hash of every field of ``description`` but the id itself (and 0.1's engine)."""
    fields = {k: v for k, v in sorted(description.items()) if k not in ("id", "engine")}
    return f"{name}-{sha256_bytes(json.dumps(fields, sort_keys=True, default=str).encode())[:12]}"


def same_network(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two backbone records are one network with one preprocessing (any output)."""
    return {k: v for k, v in a.items() if k not in OUTPUT_KEYS} == {k: v for k, v in b.items() if k not in OUTPUT_KEYS}


class Backbone(Protocol):
    """What every backbone provides."""

    name: str
    id: str
    dim: int

    def prepare_face(self, rgb: np.ndarray, box: FloatBox | None = None) -> np.ndarray: ...

    def prepare(self, rgb: np.ndarray) -> np.ndarray: ...

    def embed(self, batch: np.ndarray) -> np.ndarray: ...

    def load(self) -> Any: ...

    def describe(self) -> dict[str, Any]: ...


def crop_box(rgb: np.ndarray, box: FloatBox, margin: float = 0.0) -> np.ndarray:
    """The square region around ``box`` grown by ``margin`` on each side, clipped to the image."""
    left, top, right, bottom = (int(round(v)) for v in box)
    side = int(max(right - left, bottom - top) * (1 + 2 * margin))
    cx, cy = (left + right) // 2, (top + bottom) // 2
    x0, y0 = max(0, cx - side // 2), max(0, cy - side // 2)
    return rgb[y0 : min(rgb.shape[0], y0 + side), x0 : min(rgb.shape[1], x0 + side)]


def _check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise ConfigError(f"backbone output must be one of {list(OUTPUTS)}, got {output!r}")


def _forward(runner: Any, batch: np.ndarray, mirror: bool, output: str | None = None) -> np.ndarray:
    """float32 (n, dim) of ``batch`` through ``runner`` in passes of at most :data:`MAX_BATCH`; with
    ``mirror``, the descriptors of the batch and of its mirror images side by side (one pass over both)."""
    x = np.concatenate([batch, batch[:, :, ::-1]]) if mirror else batch
    out = np.concatenate([runner(np.ascontiguousarray(x[i : i + MAX_BATCH]), output) for i in range(0, len(x), MAX_BATCH)]).astype(np.float32)
    return np.concatenate([out[: len(batch)], out[len(batch) :]], axis=1) if mirror else out


# --------------------------------------------------------------------------- dlib


#: How the dlib backbone prepares a face crop (see :class:`DlibBackbone`), with the text its id hashes.
PREPROCESSING = {"chip": "centerface-box-dlib-5pt-chip150-pad0.25", "crop": "dlib-5pt-chip150-pad0.25-box=crop", "resize": "bicubic-resize150"}
ALIGNS = tuple(PREPROCESSING)


class DlibBackbone:
    """dlib's ResNet-34-style face descriptor (128-d, LFW 99.38%), CC0 weights from PyPI.

    ``align`` (:data:`ALIGNS`): ``"chip"`` (default) runs dlib's 5-point alignment on each crop, in
    the face box the detector finds there (:func:`gender_lib.faces.dlib_chip`; the whole crop where it
    finds none), as the network was trained; ``"crop"`` takes the whole crop as the face box, with no
    detection (for datasets of pre-cut, aligned faces); ``"resize"`` feeds the crop resized to 150 x 150
    directly. They differ only for crops: a photo's face, with its box, is chipped in that box by
    ``chip`` and ``crop`` alike. With ``chip`` the detector's weights are part of :meth:`describe`.

    The network is dlib's converted to an ONNX graph and verified against dlib
    (:func:`gender_lib.converters.dlib_resnet.ensure_converted`: converted once into the store,
    :mod:`gender_lib.store`, which is read when the backbone is made). It is loaded on the first
    :meth:`embed` (or :meth:`load`) with ``threads`` intra-op threads (default: the process's cores)
    and ``spin`` (threads spinning between passes: lower latency for single photos; see
    :class:`~gender_lib.converters.onnx_graph.Runner`).
    """

    name = "dlib"
    input_size = (150, 150)

    def __init__(self, align: str = "chip", output: str = "descriptor", threads: int | None = None, spin: bool = False):
        from gender_lib import store

        if align not in ALIGNS:
            raise ConfigError(f"dlib align must be one of {list(ALIGNS)}, got {align!r}")
        _check_output(output)
        self.align, self.output, self.threads, self.spin = align, output, threads, spin
        self.store = store.root()
        self.dim = (256 if output.startswith("pooled") else 128) * (2 if output.endswith("+mirror") else 1)
        self.weights_sha256 = sha256_file_cached(dlib_model_paths()["descriptor"])
        self.id = backbone_id(self.name, self.describe())
        self._runner: Any = None
        self.model_path: Path | None = None  # the converted graph, once loaded

    def prepare_face(self, rgb: np.ndarray, box: FloatBox | None = None) -> np.ndarray:
        """The 150x150 uint8 input: a 5-point chip (``align="chip"``, ``"crop"``) or the face resized
        (``"resize"``). ``box``: a detected face's box (:attr:`gender_lib.faces.Detection.box`)."""
        if self.align in ("chip", "crop"):
            return dlib_chip(rgb, box, detect_face=self.align == "chip")[0]
        from PIL import Image

        face = rgb if box is None else crop_box(rgb, box)
        return np.asarray(Image.fromarray(np.asarray(face, np.uint8)).resize(self.input_size, Image.BICUBIC), np.uint8)

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """A face crop's input (what extraction calls): ``prepare_face(rgb)``."""
        return self.prepare_face(rgb)

    def load(self) -> DlibBackbone:
        """Convert (first use of the store), check and load the network now instead of at the first :meth:`embed`."""
        if self._runner is None:
            from gender_lib.converters import dlib_resnet

            try:
                self.model_path = dlib_resnet.ensure_converted(self.store)
                self._runner = dlib_resnet.load(self.model_path, self.threads, self.spin)[0]
            except OSError as error:  # a read-only or full store: answers still come, a few seconds later each run
                from gender_lib.converters.onnx_graph import Runner

                log.warning(
                    "%s: dlib's converted network cannot be saved there (%s); converted and verified in memory for this run "
                    "(set GENDER_LIB_CACHE or --cache-dir to a writable folder to keep it)",
                    self.store,
                    error.strerror or error,
                )
                self._runner = Runner(dlib_resnet.verified_graph()[0], self.threads, self.spin)
        return self

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """float32 (n, dim) outputs of a uint8 batch (n, 150, 150, 3); n = 1 is a batch too."""
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1:] != (*self.input_size, 3):
            raise ValueError(f"dlib expects a batch (n, 150, 150, 3) of uint8 chips, got {batch.shape}")
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        layer = "pooled" if self.output.startswith("pooled") else None
        return _forward(self.load()._runner, np.ascontiguousarray(batch, np.uint8), self.output.endswith("+mirror"), layer)

    def describe(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "dim": self.dim,
            "align": self.align,
            "input_size": list(self.input_size),
            "preprocessing": f"rgb-uint8;{PREPROCESSING[self.align]}",
            "weights": "dlib_face_recognition_resnet_model_v1.dat (face_recognition_models, CC0)",
            "weights_sha256": self.weights_sha256,
        }
        if self.align == "chip":  # the crops' faces are found by the detector: its weights shape every chip
            from gender_lib.converters import centerface

            out["detector_sha256"] = sha256_file_cached(centerface.source_path())
        if self.output != "descriptor":  # recorded only when not the default, so descriptor ids stay as they were
            out["output"] = self.output
        return {**out, "id": backbone_id(self.name, out)}

    @classmethod
    def from_record(cls, description: dict[str, Any], output: str, threads: int | None = None, spin: bool = False, **_: Any) -> DlibBackbone:
        """:func:`from_description`'s dlib case: the recorded alignment."""
        return cls(align=description["align"], output=output, threads=threads, spin=spin)


# --------------------------------------------------------------------------- VGG-Face


class VGGFaceBackbone:
    """The converted VGG-Face (``gender-lib convert``, ``checkpoints/vggface.onnx``): fc7 (4096-d,
    L2-normalised, default) or fc8 (2622-d). ``runner``: its graph on ONNX Runtime
    (:func:`gender_lib.converters.vggface.load`); ``meta``: the conversion's sidecar."""

    name = "vggface"

    def __init__(self, runner: Any, meta: dict[str, Any], layer: str = "fc7", output: str = "descriptor"):
        if layer not in ("fc7", "fc8"):
            raise ConfigError(f"VGG-Face descriptor layer must be 'fc7' or 'fc8', got {layer!r}")
        _check_output(output)
        if output.startswith("pooled"):
            raise ConfigError("VGG-Face has no pooled output: its descriptor is fc7 or fc8")
        self.runner, self.meta, self.layer, self.output = runner, meta, layer, output
        size = meta["input"]["size"]
        self.input_size = (int(size[0]), int(size[1]))
        self.keep_aspect = bool(meta["input"].get("keep_aspect", True))
        self.dim = int(meta["descriptor_layers"][layer]["dim"]) * (2 if output == "descriptor+mirror" else 1)
        self.id = backbone_id(self.name, self.describe())

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], layer: str = "fc7", output: str = "descriptor") -> VGGFaceBackbone:
        """The converted network at ``path``. Raises :class:`~gender_lib.errors.UserFileNotFoundError`
        where nothing was converted, :class:`~gender_lib.converters.verified.ConvertedModelError` for damaged files."""
        from gender_lib.converters import vggface

        if not Path(path).is_file():
            raise UserFileNotFoundError(f"{path}: no converted VGG-Face model; run notebooks/01_convert.ipynb (needs vgg_face.mat) or use backbone='dlib'")
        runner, meta = vggface.load(path)
        return cls(runner, meta, layer, output)

    @classmethod
    def from_record(cls, description: dict[str, Any], output: str, vggface_path: Path, **_: Any) -> VGGFaceBackbone:
        """:func:`from_description`'s vggface case: the recorded layer."""
        return cls.from_checkpoint(vggface_path, description.get("layer", "fc7"), output)

    def prepare_face(self, rgb: np.ndarray, box: FloatBox | None = None) -> np.ndarray:
        """A crop (a photo's face box grown by 30%, as the VGG-Face crops were) resized to 224x224."""
        from gender_lib.converters.vggface import resize_one

        face = rgb if box is None else crop_box(rgb, box, margin=0.3)
        return resize_one(face, self.input_size, self.keep_aspect)

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        return self.prepare_face(rgb)

    def load(self) -> VGGFaceBackbone:
        """Nothing to do: the graph was loaded with the backbone."""
        return self

    def embed(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (*self.input_size, 3):
            raise ValueError(f"VGG-Face expects a batch (n, {self.input_size[0]}, {self.input_size[1]}, 3), got {batch.shape}")
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        return _forward(self.runner, batch, self.output == "descriptor+mirror", self.layer)

    def describe(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "dim": self.dim,
            "preprocessing": f"rgb;bicubic{self.input_size[0]};minus-mean-in-model",
            "input_size": list(self.input_size),
            "keep_aspect": self.keep_aspect,
            "face_margin": 0.3,
            "layer": self.layer,
            "weights_sha256": self.meta.get("source_sha256"),
            "synthetic": bool(self.meta.get("synthetic")),
        }
        if self.output != "descriptor":
            out["output"] = self.output
        return {**out, "id": backbone_id(self.name, out)}


#: The backbones by name: each class has ``from_record`` (rebuilt from a record), so nothing else branches on a name.
REGISTRY: dict[str, Any] = {"dlib": DlibBackbone, "vggface": VGGFaceBackbone}
BACKBONES = tuple(REGISTRY)


def get_backbone(
    name: str = "auto", *, vggface_path: str | os.PathLike[str] | None = None, layer: str = "fc7", align: str = "chip", output: str = "descriptor"
) -> Backbone:
    """A backbone by name: ``vggface``, ``dlib`` or ``auto`` (vggface if converted, else dlib),
    returning ``output`` (:data:`OUTPUTS`). ``align`` concerns dlib, ``layer`` VGG-Face."""
    from gender_lib import config

    path = Path(vggface_path) if vggface_path else config.paths().vggface_model
    if name == "auto":
        name = "vggface" if path.is_file() else "dlib"
    if name == "dlib":
        return DlibBackbone(align=align, output=output)
    if name == "vggface":
        return VGGFaceBackbone.from_checkpoint(path, layer, output)
    raise ConfigError(f"unknown backbone {name!r}; choose one of {list(BACKBONES)} or 'auto'")


def from_config(config: Any, output: str = "descriptor") -> Backbone:
    """The backbone a :class:`gender_lib.config.Config` names, in its store (``cache_dir``), returning ``output``."""
    from gender_lib import store

    b = config.backbone
    with store.using(config.cache_dir()):
        return get_backbone(b.backbone, vggface_path=config.vggface_model(), layer=b.vggface_layer, align=b.dlib_align, output=output)


def from_description(
    description: dict[str, Any],
    vggface_path: str | os.PathLike[str] | None = None,
    *,
    output: str | None = None,
    threads: int | None = None,
    spin: bool = False,
) -> Backbone:
    """Rebuild the backbone a head was trained with from its recorded ``describe()`` fields.

    The rebuilt backbone must describe itself identically (same weights hash, alignment, resize,
    layer, output): otherwise the head's predictions would be meaningless. ``output`` (default:
    the recorded one) asks the same network for another of :data:`OUTPUTS`; the network and
    preprocessing must still match. ``threads`` and ``spin``: the dlib backbone's ONNX Runtime
    settings. Raises :class:`BackboneError`.
    """
    from gender_lib import config

    name = description.get("name")
    if name not in REGISTRY:
        raise BackboneError(f"unknown backbone {name!r} in the record; this gender_lib knows {list(BACKBONES)}")
    path = Path(vggface_path) if vggface_path else config.paths().vggface_model
    try:
        backbone = REGISTRY[name].from_record(description, output=output or output_of(description), vggface_path=path, threads=threads, spin=spin)
    except KeyError as error:
        raise BackboneError(f"the backbone record {description.get('id')} has no {error.args[0]!r} field: it cannot be rebuilt; retrain the head") from None
    mine = backbone.describe()
    if (backbone.id != description.get("id")) if output is None else not same_network(mine, description):
        differ = sorted(k for k in set(mine) | set(description) if k not in OUTPUT_KEYS and mine.get(k) != description.get(k))
        old = "; it is a VGG-Face record of gender_lib 0.1 (Keras engine): retrain the head" if name == "vggface" and "precision" in description else ""
        raise BackboneError(
            f"the head was trained on {description.get('id')} but this machine's {name} is {backbone.id} "
            f"(they differ in {', '.join(differ) or 'id'}); its predictions would be meaningless{old}"
        )
    return backbone
