"""Face descriptor backbones behind one small interface, chosen by name.

A backbone turns RGB face images into float32 descriptors and owns every step of that:

* ``prepare_face(rgb, box=None)``: one uint8 (h, w, 3) image and an optional face box
  (left, top, right, bottom) -> the model's input. With no box the image is a face crop
  (the datasets); with a box it is a photo (the predictor). Alignment, cropping and resizing
  all happen here, so training and prediction cannot prepare faces differently.
* ``embed(batch)``: a stacked batch of prepared inputs -> float32 (n, dim);
* ``describe()``: every fact that changes the descriptors (weights hash, alignment, resize,
  layer, precision, converter version); ``id`` is a hash of it, so no cache or head can be
  paired with other preprocessing, and :func:`from_description` rebuilds the backbone from it.

Two implementations, registered by name in :data:`REGISTRY`: ``vggface`` (the converted VGG-Face,
fc7 or fc8, fp32 or bfloat16) and ``dlib`` (dlib's ResNet face descriptor, 128-d, weights from the
``face_recognition_models`` package). :func:`get_backbone` picks one by name; ``"auto"`` means
vggface where a converted model exists, else dlib. Each returns one of :data:`OUTPUTS` per face.

The dlib backbone has three engines computing the same descriptors (:data:`ENGINES`): ``onnx``
(dlib's network written as an ONNX graph by :mod:`gender_lib.converters.onnx_graph` and run on ONNX
Runtime: no TensorFlow import), ``keras`` (the network converted to Keras, batched in TensorFlow, on
a GPU where TensorFlow sees one; the only engine that returns dlib's inner levels) and ``dlib``
(dlib's own code in worker processes, for comparison). Both converted networks are verified against
dlib to 1e-5 before they are saved (:mod:`gender_lib.converters.dlib_keras`). ``auto`` (the
default) is onnx where ONNX Runtime is installed, else keras (:func:`resolve_engine`). The engine
is recorded in ``describe()`` but is no part of the id, so all share the descriptor cache and the
heads. VGG-Face runs on the same ``onnx`` and ``keras`` engines.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gender_lib.errors import ConfigError, GenderLibError, UserFileNotFoundError
from gender_lib.faces import Box, dlib_chip, dlib_model_paths, dlib_models
from gender_lib.fileio import sha256_bytes, sha256_file_cached

log = logging.getLogger(__name__)

#: Backbone engines: ``onnx`` (the converted network as an ONNX graph on ONNX Runtime) | ``keras``
#: (the converted network in TensorFlow) | ``dlib`` (dlib's own code; the dlib backbone only).
#: ``auto`` picks one (:func:`resolve_engine`).
ENGINES = ("onnx", "keras", "dlib")
#: Description keys that are no part of the id: which implementation computed descriptors
#: verified equal to the others' (dlib's conversions to 1e-5 against dlib itself), so caches and heads are shared.
NOT_HASHED = ("id", "engine")
#: What a backbone returns per face: ``descriptor`` (dlib's 128-d, VGG-Face's fc7/fc8),
#: ``descriptor+mirror`` (the descriptor of the face, then of its mirror image: flip averaging), or,
#: dlib only, ``level2`` (the activation map after the third residual level, 8x8x128, of the chip and
#: of its mirror image, flattened: what :mod:`gender_lib.modeling.finetune` trains the top levels on).
#: The output is recorded in ``describe()`` (absent for ``descriptor``, so those ids never changed).
OUTPUTS = ("descriptor", "descriptor+mirror", "level2")
#: The Keras layer whose output is the ``level2`` map (the converted model's layer names are dlib's indices).
LEVEL2_LAYER = "relu_090"
LEVEL2_SHAPE = (8, 8, 128)
LEVEL2_DIM = 2 * 8 * 8 * 128


class BackboneError(GenderLibError, ValueError):
    """A backbone that cannot be built as described (other weights, unknown name)."""


def resolve_engine(engine: str, output: str = "descriptor") -> str:
    """The engine that runs for ``engine`` (one of :data:`ENGINES` or ``auto``): ``auto`` is onnx
    where ONNX Runtime and onnx are installed (inference without TensorFlow; onnx writes the graph
    on first use), else keras; the ``level2`` output is keras whatever is asked (only the Keras
    model exposes dlib's inner levels)."""
    if engine not in (*ENGINES, "auto"):
        raise ConfigError(f"engine must be one of {[*ENGINES, 'auto']}, got {engine!r}")
    if output == "level2":
        return "keras"
    if engine == "auto":
        from gender_lib.converters import onnx_graph

        return "onnx" if onnx_graph.can_convert() else "keras"
    return engine


def output_of(description: dict[str, Any]) -> str:
    """The :data:`OUTPUTS` entry a backbone record returns."""
    return str(description.get("output", "descriptor"))


def _mirrored(embed: Any, batch: np.ndarray) -> np.ndarray:
    """``descriptor+mirror``: the descriptors of ``batch`` and of its mirror images, side by side,
    from one forward pass over both (a batch of 2n costs less than two batches of n)."""
    both = embed(np.concatenate([batch, batch[:, :, ::-1]]))
    return np.concatenate([both[: len(batch)], both[len(batch) :]], axis=1)


def backbone_id(name: str, description: dict[str, Any]) -> str:
    """``<name>-<12 hex>``: a hash of every field of ``description`` except the id itself and
    the ``engine`` (see :data:`NOT_HASHED`)."""
    import json

    fields = {k: v for k, v in sorted(description.items()) if k not in NOT_HASHED}
    return f"{name}-{sha256_bytes(json.dumps(fields, sort_keys=True, default=str).encode())[:12]}"


class Backbone(Protocol):
    """What every backbone provides."""

    name: str
    id: str
    dim: int
    input_size: tuple[int, int]
    preprocessing: str

    def prepare_face(self, rgb: np.ndarray, box: Box | None = None) -> np.ndarray: ...

    def prepare(self, rgb: np.ndarray) -> np.ndarray: ...

    def embed(self, batch: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


# --------------------------------------------------------------------------- dlib


def crop_box(rgb: np.ndarray, box: Box, margin: float = 0.0) -> np.ndarray:
    """The square region around ``box`` grown by ``margin`` on each side, clipped to the image."""
    left, top, right, bottom = box
    side = int(max(right - left, bottom - top) * (1 + 2 * margin))
    cx, cy = (left + right) // 2, (top + bottom) // 2
    x0, y0 = max(0, cx - side // 2), max(0, cy - side // 2)
    return rgb[y0 : min(rgb.shape[0], y0 + side), x0 : min(rgb.shape[1], x0 + side)]


def _dlib_embed_chunk(chips: np.ndarray) -> np.ndarray:
    models = dlib_models()
    vectors = models.descriptor.compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
    return np.asarray([np.asarray(v) for v in vectors], np.float32).reshape(len(chips), 128)


#: The converted engines' largest forward batch (bigger batches are split; memory stays bounded).
KERAS_MAX_BATCH = 128
_KERAS_MODELS: dict[str, Any] = {}
_KERAS_LOCK = threading.Lock()
_ONNX_RUNNERS: dict[str, Any] = {}


def _onnx_forward(path: Path, threads: int | None = None, spin: bool = False) -> Any:
    """An ONNX Runtime session of the converted dlib model at ``path``: (n, 150, 150, 3) uint8 ->
    float32 (n, 128); loaded once per process, file version and thread setting (sessions are
    stateless, and ONNX Runtime runs one session from several threads)."""
    key = f"{path}@{Path(path).stat().st_mtime_ns}:{threads}:{spin}"
    with _KERAS_LOCK:
        if key not in _ONNX_RUNNERS:
            from gender_lib.converters import dlib_keras

            _ONNX_RUNNERS[key] = dlib_keras.load(path, threads, spin)[0]
        return _ONNX_RUNNERS[key]


def _keras_forward(path: Path, output: str = "descriptor") -> Any:
    """A ``tf.function`` (any n, 150, 150, 3) uint8 -> NumPy (n, dim) of the converted model at
    ``path`` (``output``: see :data:`OUTPUTS`); loaded and traced once per process and file
    version (models are stateless at inference)."""
    key = f"{path}@{Path(path).stat().st_mtime_ns}:{output}"  # a conversion redone in this process is loaded anew
    with _KERAS_LOCK:
        if key not in _KERAS_MODELS:
            import tensorflow as tf

            from gender_lib.converters import dlib_keras

            model, _ = dlib_keras.load(path)
            if output == "level2":
                import keras

                lower = keras.Model(model.input, model.get_layer(LEVEL2_LAYER).output, name="dlib_lower_levels")

                @tf.function(input_signature=[tf.TensorSpec((None, dlib_keras.CHIP_SIZE, dlib_keras.CHIP_SIZE, 3), tf.uint8)])
                def level2(x: Any) -> Any:
                    x = tf.cast(x, tf.float32)
                    n = tf.shape(x)[0]
                    maps = lower(tf.concat([x, x[:, :, ::-1, :]], axis=0), training=False)  # the chip, then its mirror image
                    return tf.reshape(tf.transpose(tf.reshape(maps, (2, n, -1)), (1, 0, 2)), (n, LEVEL2_DIM))

                _KERAS_MODELS[key] = lambda x: level2(x).numpy()
                return _KERAS_MODELS[key]

            # uint8 in, so a GPU receives a quarter of the bytes; one trace serves every batch size.
            @tf.function(input_signature=[tf.TensorSpec((None, dlib_keras.CHIP_SIZE, dlib_keras.CHIP_SIZE, 3), tf.uint8)])
            def forward(x: Any) -> Any:
                return model(tf.cast(x, tf.float32), training=False)

            _KERAS_MODELS[key] = lambda x: forward(x).numpy()
        return _KERAS_MODELS[key]


#: How the dlib backbone prepares a face crop (see :class:`DlibBackbone`), with the text its id hashes.
PREPROCESSING = {"chip": "dlib-5pt-chip150-pad0.25", "crop": "dlib-5pt-chip150-pad0.25-box=crop", "resize": "bicubic-resize150"}
ALIGNS = tuple(PREPROCESSING)


class DlibBackbone:
    """dlib's ResNet-34-style face descriptor (128-d, LFW 99.38%), CC0 weights from PyPI.

    ``align`` (:data:`ALIGNS`): ``"chip"`` (default) runs dlib's 5-point alignment on each crop, in
    the face box dlib's HOG detector finds there (the whole crop where it finds none), as the model
    was trained; ``"crop"`` takes the whole crop as the face box, with no detection (for datasets of
    pre-cut, aligned faces: the detection is most of a face's preparation time); ``"resize"`` feeds
    the crop resized to 150 x 150 directly. They differ only for crops: a photo's face, with its box,
    is chipped in that box by ``chip`` and ``crop`` alike. benchmarks/dlib_align.py and
    benchmarks/engines.py measure them.

    ``engine`` (:data:`ENGINES`, or ``"auto"``: :func:`resolve_engine`): ``"onnx"`` and ``"keras"``
    embed batches with dlib's network converted and verified against dlib
    (:func:`gender_lib.converters.dlib_keras.ensure_converted`: converted once into
    ``<cache_root>/dlib_onnx/`` or ``dlib_keras/``, default the descriptor cache root), on ONNX
    Runtime with ``threads`` intra-op threads (default: the process's cores; ``spin``: whether they
    spin while waiting, for the latency of single photos: see
    :class:`~gender_lib.converters.onnx_graph.Runner`) or in TensorFlow; the runtime is imported and
    the model loaded on the first :meth:`embed`, not before. ``"dlib"``
    runs dlib's own code, shared by ``workers`` processes (dlib runs one core each). All engines
    have the same id. Faces are prepared by dlib's code either way (5-point chips, or the resize).
    """

    name = "dlib"
    dim = 128
    input_size = (150, 150)

    def __init__(
        self,
        align: str = "chip",
        workers: int | None = None,
        engine: str = "auto",
        cache_root: str | os.PathLike[str] | None = None,
        output: str = "descriptor",
        threads: int | None = None,
        spin: bool = False,
    ):
        if align not in ALIGNS:
            raise ConfigError(f"dlib align must be one of {list(ALIGNS)}, got {align!r}")
        if engine not in (*ENGINES, "auto"):
            raise ConfigError(f"dlib engine must be one of {[*ENGINES, 'auto']}, got {engine!r}")
        if output not in OUTPUTS:
            raise ConfigError(f"dlib output must be one of {list(OUTPUTS)}, got {output!r}")
        if output == "level2" and engine not in ("keras", "auto"):
            raise ConfigError("the dlib backbone's level2 output needs engine 'keras' (only the Keras model exposes dlib's inner levels)")
        self.align, self.engine, self.output = align, resolve_engine(engine, output), output
        self.threads, self.spin = threads, spin
        self.dim = {"descriptor": 128, "descriptor+mirror": 256, "level2": LEVEL2_DIM}[output]
        self.workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
        self.cache_root = Path(cache_root).expanduser().resolve() if cache_root is not None else None
        self.weights_sha256 = sha256_file_cached(dlib_model_paths()["descriptor"])
        self.preprocessing = f"rgb-uint8;{PREPROCESSING[align]}"
        self.id = backbone_id(self.name, self.describe())
        self._pool = None
        self._forward: Any = None
        self.model_path: Path | None = None  # the converted model the onnx or keras engine runs, once loaded

    def prepare_face(self, rgb: np.ndarray, box: Box | None = None) -> np.ndarray:
        """The 150x150 input: a 5-point chip (``align="chip"``, ``"crop"``) or the face resized (``"resize"``)."""
        if self.align == "crop" and box is None:
            box = (0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)
        if self.align in ("chip", "crop"):
            return dlib_chip(rgb, box)[0]
        from PIL import Image

        face = rgb if box is None else crop_box(rgb, box)
        return np.asarray(Image.fromarray(np.asarray(face, np.uint8)).resize(self.input_size, Image.BICUBIC), np.uint8)

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """A face crop's input (what extraction calls): ``prepare_face(rgb)``."""
        return self.prepare_face(rgb)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """float32 (n, dim) outputs of a uint8 batch (n, 150, 150, 3); n = 1 is a batch too."""
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1:] != (*self.input_size, 3):
            raise ValueError(f"dlib expects a batch (n, 150, 150, 3) of uint8 chips, got {batch.shape}")
        batch = np.ascontiguousarray(batch, np.uint8)
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        if self.output == "descriptor+mirror":
            return _mirrored(self._embed_one_view, batch)
        return self._embed_one_view(batch)

    def _embed_one_view(self, batch: np.ndarray) -> np.ndarray:
        if self.engine != "dlib":
            return self._embed_converted(batch)
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

    def load(self) -> DlibBackbone:
        """Get the onnx or keras engine ready now (convert on first use, load, trace) instead of at the first embed."""
        if self.engine != "dlib" and self._forward is None:
            from gender_lib.converters import dlib_keras

            root = self.cache_root
            if root is None:
                from gender_lib import config

                root = config.paths().cache
            self.model_path = dlib_keras.ensure_converted(root, engine=self.engine)
            if self.engine == "onnx":
                self._forward = _onnx_forward(self.model_path, self.threads, self.spin)
            else:
                self._forward = _keras_forward(self.model_path, "level2" if self.output == "level2" else "descriptor")
        return self

    def _embed_converted(self, batch: np.ndarray) -> np.ndarray:
        forward = self.load()._forward
        parts = [forward(batch[i : i + KERAS_MAX_BATCH]) for i in range(0, len(batch), KERAS_MAX_BATCH)]
        return np.asarray(parts[0] if len(parts) == 1 else np.concatenate(parts), np.float32).reshape(len(batch), -1)

    def _get_pool(self) -> Any:
        if self._pool is None:
            import concurrent.futures
            import multiprocessing

            if multiprocessing.parent_process() is not None:
                raise RuntimeError(
                    "gender_lib's dlib backbone started from a worker's import of an unguarded script; put the script's work under `if __name__ == '__main__':`"
                )

            # spawn: forking a process that may also run TensorFlow threads is unsafe.
            self._pool = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def close(self) -> None:
        """Stop the dlib engine's worker processes; nothing to do for the converted engines (their
        loaded model stays in the process for the next backbone)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def describe(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "dim": self.dim,
            "align": self.align,
            "input_size": list(self.input_size),
            "preprocessing": self.preprocessing,
            "weights": "dlib_face_recognition_resnet_model_v1.dat (face_recognition_models, CC0)",
            "weights_sha256": self.weights_sha256,
            "engine": self.engine,
        }
        if self.output != "descriptor":  # recorded only when not the default, so descriptor ids stay as they were
            out["output"] = self.output
        return {**out, "id": getattr(self, "id", None) or backbone_id(self.name, out)}

    @classmethod
    def build(
        cls,
        *,
        align: str = "chip",
        workers: int | None = None,
        engine: str = "auto",
        cache_root: Any = None,
        output: str = "descriptor",
        threads: int | None = None,
        spin: bool = False,
        **options: Any,
    ) -> DlibBackbone:
        """:func:`get_backbone`'s dlib case; VGG-Face's options must be their defaults."""
        if options.get("precision", "float32") != "float32":
            raise ConfigError("the dlib backbone runs in float32 only (precision: float32)")
        engine = "keras" if output == "level2" else engine  # whatever was asked: only Keras returns inner levels (same network, verified equal)
        return cls(align=align, workers=workers, engine=engine, cache_root=cache_root, output=output, threads=threads, spin=spin)

    @classmethod
    def rebuild(
        cls,
        description: dict[str, Any],
        *,
        output: str,
        engine: str,
        workers: int | None,
        cache_root: Any,
        threads: int | None = None,
        spin: bool = False,
        **_: Any,
    ) -> DlibBackbone:
        """:func:`from_description`'s dlib case: the recorded alignment, on ``engine`` (keras for level2)."""
        if "align" not in description:
            raise BackboneError(
                f"the head's backbone record has no 'align' field ({description.get('id')}); it was saved by an older gender_lib: retrain the head"
            )
        engine = "keras" if output == "level2" else engine  # only the keras engine returns inner activations
        return cls(align=description["align"], workers=workers, engine=engine, cache_root=cache_root, output=output, threads=threads, spin=spin)

    @staticmethod
    def worker_kwargs(description: dict[str, Any]) -> dict[str, Any]:
        """What Ray actors pass to :func:`from_description`: the described engine, one dlib process
        each (Ray is the parallelism) and the configured cache root for the converted model."""
        from gender_lib import config

        return {"engine": description.get("engine", "auto"), "workers": 1, "cache_root": str(config.paths().cache)}

    @staticmethod
    def prepare_workers(kwargs: dict[str, Any], address: str | None) -> None:
        """Convert the onnx or keras model once on the driver before the actors start (they would each
        convert it at once otherwise). On a cluster only a path the workers share makes this useful;
        where the driver cannot write there, the actors convert it themselves."""
        engine = resolve_engine(kwargs.get("engine", "auto"))
        if engine == "dlib":
            return
        from gender_lib.converters import dlib_keras

        try:
            dlib_keras.ensure_converted(kwargs.get("cache_root"), engine=engine)
        except OSError as error:
            if not address:
                raise
            log.warning("could not convert the dlib %s model on the driver (%s); the actors will", engine, error)


# --------------------------------------------------------------------------- VGG-Face


def with_precision(model: Any, precision: str) -> Any:
    """The same Keras model computing in ``float32`` or ``bfloat16`` (mixed: weights stay fp32)."""
    import keras

    if precision == "float32":
        return model
    if precision != "bfloat16":
        raise ConfigError(f"precision must be 'float32' or 'bfloat16', got {precision!r}")

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


def _check_vggface_output(output: str) -> None:
    if output not in OUTPUTS[:2]:
        raise ConfigError(f"output {output!r} (model kinds features, finetune) needs the dlib backbone's inner levels; VGG-Face gives {list(OUTPUTS[:2])}")


_WARNED: set[str] = set()  # converted VGG-Face models already said to lack their ONNX graph


class VGGFaceBackbone:
    """The converted VGG-Face: fc7 (4096-d, L2-normalised, default) or fc8 (2622-d).

    ``engine``: ``onnx`` (the ONNX graph written beside the ``.keras`` file by ``gender-lib convert``,
    verified against the same NumPy reference; float32 only) or ``keras`` (TensorFlow; float32 or
    bfloat16); ``auto`` (default) is onnx where ONNX Runtime is installed and the conversion wrote
    the graph, else keras. ``model``: a Keras model, or an ONNX
    :class:`~gender_lib.converters.onnx_graph.Runner` for the onnx engine."""

    name = "vggface"

    def __init__(self, model: Any, meta: dict[str, Any], layer: str = "fc7", precision: str = "float32", output: str = "descriptor", engine: str = "keras"):
        if layer not in ("fc7", "fc8"):
            raise ConfigError(f"VGG-Face descriptor layer must be 'fc7' or 'fc8', got {layer!r}")
        _check_vggface_output(output)
        if engine not in ("onnx", "keras"):
            raise ConfigError(f"VGG-Face runs on engine 'onnx' or 'keras', got {engine!r}")
        if engine == "onnx" and precision != "float32":
            raise ConfigError("VGG-Face's onnx engine runs in float32 only; bfloat16 needs engine 'keras'")
        self.layer, self.precision, self.meta, self.output, self.engine = layer, precision, meta, output, engine
        if precision == "bfloat16" and not cpu_supports_bf16():
            import warnings

            warnings.warn("this CPU has no bfloat16 matrix instructions (AVX512-BF16/AMX): bfloat16 will not be faster than float32", stacklevel=2)
        size = meta["input"]["size"]
        self.input_size = (int(size[0]), int(size[1]))
        self.keep_aspect = bool(meta["input"].get("keep_aspect", True))
        self.dim = int(meta["descriptor_layers"][layer]["dim"]) * (2 if output == "descriptor+mirror" else 1)
        self.preprocessing = f"rgb;bicubic{self.input_size[0]};minus-mean-in-model"
        self.id = backbone_id(self.name, self.describe())
        if engine == "onnx":
            self.model = model
            self._forward: Any = lambda x: model(x, layer)
            return
        import tensorflow as tf

        self.model = with_precision(model, precision)
        model_ = self.model

        @tf.function(input_signature=[tf.TensorSpec((None, *self.input_size, 3), tf.float32)])
        def forward(x: Any) -> Any:
            return tf.cast(model_(x, training=False)[layer], tf.float32)

        self._forward = lambda x: forward(x).numpy()

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike[str], layer: str = "fc7", precision: str = "float32", output: str = "descriptor", engine: str = "auto"
    ) -> VGGFaceBackbone:
        """The converted model at ``path`` (``checkpoints/vggface.keras``; its ONNX graph beside it)
        on ``engine``. Raises :class:`~gender_lib.errors.UserFileNotFoundError` where nothing was
        converted, :class:`~gender_lib.converters.vggface.ConvertedModelError` for damaged files."""
        from gender_lib.converters import vggface

        _check_vggface_output(output)  # before loading 580 MB
        if not Path(path).is_file():
            raise UserFileNotFoundError(f"{path}: no converted VGG-Face model; run notebooks/01_convert.ipynb (needs vgg_face.mat) or use backbone='dlib'")
        engine = "keras" if engine == "dlib" else engine  # dlib's own code runs only dlib's network
        if engine == "onnx" and precision != "float32":
            raise ConfigError("VGG-Face's onnx engine runs in float32 only; bfloat16 needs engine 'keras'")
        if engine == "auto":
            wanted = precision == "float32" and resolve_engine("auto") == "onnx"
            engine = "onnx" if wanted and vggface.has_onnx(path) else "keras"
            if wanted and engine == "keras" and str(path) not in _WARNED:
                _WARNED.add(str(path))
                log.warning("%s was converted without its ONNX graph: VGG-Face runs on TensorFlow; `gender-lib convert` again writes the graph", path)
        if engine == "onnx":
            runner, meta = vggface.load_onnx(path)
            return cls(runner, meta, layer, precision, output, engine)
        model, meta = vggface.load_model(path)
        return cls(model, meta, layer, precision, output, engine)

    @classmethod
    def build(
        cls, *, vggface_path: Path, layer: str = "fc7", precision: str = "float32", output: str = "descriptor", engine: str = "auto", **_: Any
    ) -> VGGFaceBackbone:
        """:func:`get_backbone`'s vggface case (the dlib options do not apply)."""
        return cls.from_checkpoint(vggface_path, layer, precision, output, engine)

    @classmethod
    def rebuild(cls, description: dict[str, Any], *, output: str, vggface_path: Path, engine: str = "auto", **_: Any) -> VGGFaceBackbone:
        """:func:`from_description`'s vggface case: the recorded layer and precision, on ``engine``."""
        return cls.from_checkpoint(vggface_path, description.get("layer", "fc7"), description.get("precision", "float32"), output, engine)

    @staticmethod
    def worker_kwargs(description: dict[str, Any]) -> dict[str, Any]:
        return {"engine": description.get("engine", "auto")}

    @staticmethod
    def prepare_workers(kwargs: dict[str, Any], address: str | None) -> None:
        """Nothing to prepare: each actor loads the converted model."""

    def prepare_face(self, rgb: np.ndarray, box: Box | None = None) -> np.ndarray:
        """A crop (a photo's face box grown by 30%, as the VGG-Face crops were) resized to 224x224."""
        from gender_lib.converters.vggface import resize_one

        face = rgb if box is None else crop_box(rgb, box, margin=0.3)
        return resize_one(face, self.input_size, self.keep_aspect)

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        return self.prepare_face(rgb)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (*self.input_size, 3):
            raise ValueError(f"VGG-Face expects a batch (n, {self.input_size[0]}, {self.input_size[1]}, 3), got {batch.shape}")
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        if self.output == "descriptor+mirror":
            return _mirrored(self._forward, batch)
        return np.asarray(self._forward(batch), np.float32)

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "dim": self.dim,
            "preprocessing": self.preprocessing,
            "input_size": list(self.input_size),
            "keep_aspect": self.keep_aspect,
            "face_margin": 0.3,
            "layer": self.layer,
            "precision": self.precision,
            "weights_sha256": self.meta.get("source_sha256"),
            "converter": self.meta.get("converter_version"),
            "synthetic": bool(self.meta.get("synthetic")),
            "engine": self.engine,
        }
        if self.output != "descriptor":
            out["output"] = self.output
        return {**out, "id": getattr(self, "id", None) or backbone_id(self.name, out)}


#: The backbones by name: each class has ``build`` (from options), ``rebuild`` (from a record),
#: ``worker_kwargs`` and ``prepare_workers`` (Ray actors), so nothing else branches on a name.
REGISTRY: dict[str, Any] = {"dlib": DlibBackbone, "vggface": VGGFaceBackbone}
BACKBONES = tuple(REGISTRY)


def _backbone_class(name: Any) -> Any:
    if name not in REGISTRY:
        raise BackboneError(f"unknown backbone {name!r}; choose one of {list(BACKBONES)} or 'auto'")
    return REGISTRY[name]


def get_backbone(
    name: str = "auto",
    *,
    vggface_path: str | os.PathLike[str] | None = None,
    layer: str = "fc7",
    precision: str = "float32",
    align: str = "chip",
    workers: int | None = None,
    engine: str = "auto",
    cache_root: str | os.PathLike[str] | None = None,
    output: str = "descriptor",
    threads: int | None = None,
) -> Backbone:
    """A backbone by name: ``vggface``, ``dlib`` or ``auto`` (vggface if converted, else dlib),
    returning ``output`` (:data:`OUTPUTS`) on ``engine`` (:data:`ENGINES` or ``auto``:
    :func:`resolve_engine`). ``align``, ``workers`` (the dlib engine's processes), ``threads`` (the
    onnx engine's intra-op threads) and ``cache_root`` (where the converted dlib models are kept)
    concern dlib; ``layer`` and ``precision`` VGG-Face."""
    from gender_lib import config

    path = Path(vggface_path) if vggface_path else config.paths().vggface_model
    if name == "auto":
        name = "vggface" if path.is_file() else "dlib"
    if name not in REGISTRY:  # a user's typo: a config error, not a damaged record
        raise ConfigError(f"unknown backbone {name!r}; choose one of {list(BACKBONES)} or 'auto'")
    return REGISTRY[name].build(
        vggface_path=path,
        layer=layer,
        precision=precision,
        align=align,
        workers=workers,
        engine=engine,
        cache_root=cache_root,
        output=output,
        threads=threads,
    )


def from_config(config: Any, workers: int | None = None, output: str = "descriptor") -> Backbone:
    """The backbone a :class:`gender_lib.config.Config` names (the converted dlib models kept under
    its cache_dir), returning ``output``."""
    b = config.backbone
    engine = local_engine(b.engine)
    return get_backbone(
        b.backbone,
        layer=b.vggface_layer,
        precision=b.precision,
        align=b.dlib_align,
        workers=workers,
        engine=engine,
        cache_root=config.cache_dir(),
        output=output,
    )


def local_engine(engine: str) -> str:
    """The backbone engine of a config's ``engine`` in this process: ``ray`` spreads the work over
    Ray actors, which run the engine ``auto`` picks here (:func:`resolve_engine`, recorded in the
    backbone's description); the others are backbone engines."""
    return "auto" if engine == "ray" else engine


def worker_kwargs(description: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    """What remote workers (Ray actors) pass to :func:`from_description`: the backbone's own
    (``worker_kwargs`` of its class), resolved on the driver; ``given`` overrides each."""
    kwargs = {**_backbone_class(description.get("name")).worker_kwargs(description), **(given or {})}
    if kwargs.get("cache_root") is not None:
        kwargs["cache_root"] = str(Path(kwargs["cache_root"]).expanduser().resolve())
    return kwargs


def prepare_workers(description: dict[str, Any], kwargs: dict[str, Any], address: str | None) -> None:
    """What the backbone's class does on the driver before Ray actors start."""
    _backbone_class(description.get("name")).prepare_workers(kwargs, address)


#: Description keys that say which output and engine, not which network and preprocessing.
OUTPUT_KEYS = ("id", "engine", "output", "dim")


def same_network(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two backbone records are one network with one preprocessing (any output or engine)."""
    return {k: v for k, v in a.items() if k not in OUTPUT_KEYS} == {k: v for k, v in b.items() if k not in OUTPUT_KEYS}


def from_description(
    description: dict[str, Any],
    vggface_path: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    *,
    engine: str = "auto",
    cache_root: str | os.PathLike[str] | None = None,
    output: str | None = None,
    threads: int | None = None,
    spin: bool = False,
) -> Backbone:
    """Rebuild the backbone a head was trained with from its recorded ``describe()`` fields.

    The rebuilt backbone must describe itself identically (same weights hash, alignment,
    resize, layer, precision, output): otherwise the head's predictions would be meaningless. The
    recorded ``engine`` is not followed: ``engine`` (default auto: :func:`resolve_engine`) chooses,
    as all engines make the same descriptors. ``output`` (default: the recorded one) asks the same network for another
    of :data:`OUTPUTS`; the network and preprocessing must still match. Raises :class:`BackboneError`.
    """
    from gender_lib import config

    name = description.get("name")
    wanted = output or output_of(description)
    path = Path(vggface_path) if vggface_path else config.paths().vggface_model
    backbone = _backbone_class(name).rebuild(
        description, output=wanted, engine=engine, workers=workers, cache_root=cache_root, vggface_path=path, threads=threads, spin=spin
    )
    mine = backbone.describe()
    if (backbone.id != description.get("id")) if output is None else not same_network(mine, description):
        differ = sorted(k for k in set(mine) | set(description) if k not in NOT_HASHED and mine.get(k) != description.get(k))
        backbone.close()
        raise BackboneError(
            f"the head was trained on {description.get('id')} but this machine's {name} is {backbone.id} "
            f"(they differ in {', '.join(differ) or 'id'}); its predictions would be meaningless"
        )
    return backbone
