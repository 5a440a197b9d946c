"""Read MatConvNet ``vgg_face.mat`` files into a plain layer list, and build synthetic networks.

Two published layouts are understood:

* ``2015``: the original ``vgg_face.mat`` (``vgg_face_matconvnet.tar.gz``): one top-level
  struct ``net`` with ``layers``, ``normalization`` and ``classes``;
* ``tidy``: MatConvNet's later ``vgg-face.mat``: top-level ``layers`` and ``meta``
  (``meta.normalization``, ``meta.classes``), with extra per-layer fields
  (``precious``, ``dilate``, ``opts``, ``leak``, ``rate``, ``method``).

The reader returns a :class:`Network`: a list of :class:`Layer` (plain NumPy arrays, no
MATLAB wrappers) plus the normalisation and class names. Every problem with the file is a
:class:`ConversionError` that names the file and says what is wrong.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gender_lib.errors import BadFileError
from gender_lib.fileio import sha256_file

#: VGG-Face's per-channel RGB mean (``normalization.averageImage`` of the real file).
VGG_FACE_MEAN_RGB = (129.1863, 104.7624, 93.5940)
VGG_FACE_NUM_CLASSES = 2622
#: ImageNet classifiers (VGG-16/VGG-VD-16 from MatConvNet's model zoo) share VGG-Face's layer list.
IMAGENET_NUM_CLASSES = 1000
#: Real VGG-Face channel widths: 13 conv layers, then fc6, fc7, fc8.
VGG_FACE_CONV_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
VGG_FACE_FC_WIDTHS = (4096, 4096, VGG_FACE_NUM_CLASSES)
#: Where the conv blocks end (a 2x2 max pool follows these conv indices).
_POOL_AFTER = (1, 3, 6, 9, 12)
_CONV_NAMES = (
    "conv1_1",
    "conv1_2",
    "conv2_1",
    "conv2_2",
    "conv3_1",
    "conv3_2",
    "conv3_3",
    "conv4_1",
    "conv4_2",
    "conv4_3",
    "conv5_1",
    "conv5_2",
    "conv5_3",
)
_KNOWN_TYPES = {"conv", "relu", "pool", "dropout", "softmax"}
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class ConversionError(BadFileError):
    """A ``.mat`` file that cannot be read as VGG-Face; the message names the file."""


@dataclasses.dataclass
class Layer:
    """One MatConvNet layer with plain-NumPy fields.

    ``pad`` is always ``(top, bottom, left, right)`` and ``stride``/``pool`` are ``(rows, cols)``.
    """

    name: str
    type: str
    kernel: np.ndarray | None = None  # H x W x Cin x Cout float32 (TF's HWIO order already)
    bias: np.ndarray | None = None  # Cout float32
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    pool: tuple[int, int] = (1, 1)
    method: str = "max"


@dataclasses.dataclass
class Network:
    """A MatConvNet network read from disk (or built for tests)."""

    layers: list[Layer]
    average_image: np.ndarray  # RGB mean, shape (3,)
    image_size: tuple[int, int, int]
    interpolation: str
    keep_aspect: bool
    border: tuple[int, int]
    class_names: list[str]
    layout: str  # "2015", "tidy" or "memory"
    source: Path | None = None
    sha256: str | None = None

    @property
    def convs(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.type == "conv"]

    @property
    def num_classes(self) -> int:
        return int(self.convs[-1].kernel.shape[-1])


# --------------------------------------------------------------------------- reading


def _plain(value: Any) -> Any:
    """Strip scipy's 1x1 object/struct wrappers; leave numeric arrays as they are."""
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.reshape(-1)[0]
    return value


def _text(value: Any) -> str:
    value = _plain(value)
    if isinstance(value, np.ndarray):
        if value.size == 0:
            return ""
        if value.dtype.kind == "U":
            return "".join(value.reshape(-1).tolist())
    return str(value)


def _field(struct: Any, name: str, where: str, path: Path, default: Any = dataclasses.MISSING) -> Any:
    fields = getattr(struct, "_fieldnames", None)
    if fields is None or name not in fields:
        if default is not dataclasses.MISSING:
            return default
        raise ConversionError(path, f"{where} has no field '{name}' (fields: {fields or 'none'})")
    return _plain(getattr(struct, name))


def _ints(value: Any, count: int, what: str, path: Path) -> tuple[int, ...]:
    """Read a MATLAB numeric vector; a scalar is repeated, a pair expands to (a, a, b, b) for pads."""
    flat = np.asarray(_plain(value), dtype=np.float64).reshape(-1)
    if flat.size == 1:
        flat = np.repeat(flat, count)
    elif count == 4 and flat.size == 2:
        flat = np.array([flat[0], flat[0], flat[1], flat[1]])
    if flat.size != count or not np.all(np.isfinite(flat)) or np.any(flat != np.round(flat)) or np.any(flat < 0):
        raise ConversionError(path, f"{what} should be {count} non-negative integers, got {flat.tolist()}")
    return tuple(int(v) for v in flat)


def _cell_list(value: Any) -> list[Any]:
    value = getattr(value, "_value", value)
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [_plain(v) for v in value.reshape(-1, order="F")]
    return [value]


def _read_layer(struct: Any, index: int, path: Path) -> Layer:
    where = f"layer {index + 1}"
    if getattr(struct, "_fieldnames", None) is None:
        raise ConversionError(path, f"{where} is not a struct (got {type(struct).__name__})")
    name = _text(_field(struct, "name", where, path, default=f"layer{index + 1}"))
    kind = _text(_field(struct, "type", where, path)).lower()
    where = f"layer {index + 1} ('{name}', type '{kind}')"
    if kind not in _KNOWN_TYPES:
        raise ConversionError(path, f"{where}: unsupported layer type (VGG-Face has only {sorted(_KNOWN_TYPES)})")
    layer = Layer(name=name, type=kind)
    if kind == "conv":
        fields = struct._fieldnames
        if "weights" in fields:
            weights = _cell_list(struct.weights)
            if len(weights) != 2:
                raise ConversionError(path, f"{where}: 'weights' should be a 1x2 cell {{kernel, bias}}, got {len(weights)} entries")
            kernel, bias = weights
        elif "filters" in fields and "biases" in fields:  # pre-2015 MatConvNet field names
            kernel, bias = _plain(struct.filters), _plain(struct.biases)
        else:
            raise ConversionError(path, f"{where} has no field 'weights' (fields: {fields})")
        kernel = np.asarray(kernel)
        bias = np.asarray(bias)
        if kernel.dtype.kind != "f" or kernel.ndim not in (2, 3, 4):
            raise ConversionError(path, f"{where}: kernel should be a float H x W x Cin x Cout array, got {kernel.dtype} {kernel.shape}")
        # MATLAB drops trailing singleton dimensions (a 3x3x3x1 kernel is saved as 3x3x3).
        kernel = kernel.reshape(kernel.shape + (1,) * (4 - kernel.ndim)).astype(np.float32, copy=False)
        bias = bias.astype(np.float32, copy=False).reshape(-1)
        if bias.size != kernel.shape[3]:
            raise ConversionError(path, f"{where}: bias has {bias.size} values but the kernel {kernel.shape} has {kernel.shape[3]} outputs")
        layer.kernel, layer.bias = kernel, bias
        layer.stride = _ints(_field(struct, "stride", where, path, default=1), 2, f"{where} stride", path)
        layer.pad = _ints(_field(struct, "pad", where, path, default=0), 4, f"{where} pad", path)
        dilate = _field(struct, "dilate", where, path, default=1)
        if _ints(dilate, 2, f"{where} dilate", path) != (1, 1):
            raise ConversionError(path, f"{where}: dilated convolutions are not used by VGG-Face")
    elif kind == "pool":
        layer.pool = _ints(_field(struct, "pool", where, path), 2, f"{where} pool", path)
        layer.stride = _ints(_field(struct, "stride", where, path, default=1), 2, f"{where} stride", path)
        layer.pad = _ints(_field(struct, "pad", where, path, default=0), 4, f"{where} pad", path)
        layer.method = _text(_field(struct, "method", where, path, default="max")).lower()
        if layer.method != "max":
            raise ConversionError(path, f"{where}: pooling method '{layer.method}' (VGG-Face uses 'max')")
    elif kind == "relu":
        leak_value = np.asarray(_field(struct, "leak", where, path, default=0.0), dtype=np.float64).reshape(-1)
        leak = float(leak_value[0]) if leak_value.size else 0.0
        if leak != 0.0:
            raise ConversionError(path, f"{where}: leaky ReLU (leak={leak}) is not VGG-Face")
    return layer


def _check_header(path: Path) -> None:
    if not path.exists():
        raise ConversionError(
            path,
            "file not found. Download vgg_face_matconvnet.tar.gz from the VGG group's VGG-Face page "
            "(about 1 GB), extract vgg_face.mat and place it there (see docs/backbones.md, 'The VGG-Face weights').",
        )
    if path.is_dir():
        raise ConversionError(path, "is a folder, not a .mat file: give the path of vgg_face.mat itself")
    size = path.stat().st_size
    if size == 0:
        raise ConversionError(path, "file is empty (0 bytes): the download or copy was interrupted")
    with path.open("rb") as handle:
        head = handle.read(1024)
    if head[:10] == b"MATLAB 7.3" or head[512:520] == _HDF5_SIGNATURE or head[:8] == _HDF5_SIGNATURE:
        raise ConversionError(
            path,
            "is a MATLAB v7.3 (HDF5) file, which scipy cannot read. Re-save it in MATLAB/Octave with "
            "save('vgg_face.mat', '-struct', 'S', '-v7') or use the original vgg_face.mat from the VGG group.",
        )
    if not head.startswith(b"MATLAB 5.0 MAT-file") and not head[:4].count(b"\x00"):
        raise ConversionError(path, "is not a MATLAB .mat file (no 'MATLAB 5.0 MAT-file' header)")


def read_network(path: str | os.PathLike[str], *, strict: bool = True) -> Network:
    """Read a MatConvNet VGG-Face file (either layout) into a :class:`Network`.

    With ``strict`` (the default) the network must have VGG-Face's shape: 13 convs and
    3 fully connected layers in 5 blocks, ending in a softmax over ``len(class_names)``.
    """
    import scipy.io

    path = Path(path)
    _check_header(path)
    try:
        contents = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=False)
    except NotImplementedError as error:  # scipy's words for v7.3 files
        raise ConversionError(path, f"is a MATLAB v7.3 (HDF5) file, which scipy cannot read ({error})") from None
    except Exception as error:  # noqa: BLE001 - scipy raises many types for damaged files
        raise ConversionError(
            path,
            f"cannot be read as a .mat file; it is truncated or corrupt ({type(error).__name__}: {error}). "
            "Download it again and compare its size with the original (about 1 GB).",
        ) from None

    if "net" in contents:
        layout = "2015"
        net = _plain(contents["net"])
        where = "struct 'net'"
        layers_value = _field(net, "layers", where, path)
        normalization = _field(net, "normalization", where, path)
        classes = _field(net, "classes", where, path)
    elif "layers" in contents and "meta" in contents:
        layout = "tidy"
        meta = _plain(contents["meta"])
        layers_value = _plain(contents["layers"])
        normalization = _field(meta, "normalization", "struct 'meta'", path)
        classes = _field(meta, "classes", "struct 'meta'", path)
    else:
        names = sorted(k for k in contents if not k.startswith("__"))
        raise ConversionError(
            path,
            f"is not a MatConvNet network: expected a variable 'net' (2015 vgg_face.mat) or 'layers' "
            f"and 'meta' (vgg-face.mat), found {names or 'no variables'}",
        )

    if not (isinstance(layers_value, np.ndarray) and layers_value.dtype == object):
        raise ConversionError(path, "'layers' should be a cell array of layer structs")
    layers = [_read_layer(_plain(item), i, path) for i, item in enumerate(layers_value.reshape(-1, order="F"))]

    where = "'normalization'"
    average = np.asarray(_field(normalization, "averageImage", where, path), dtype=np.float64)
    if average.size != 3:
        # A full mean image (H x W x 3) reduces to its per-channel mean, as MatConvNet's code does.
        if average.ndim == 3 and average.shape[2] == 3:
            average = average.mean(axis=(0, 1))
        else:
            raise ConversionError(path, f"normalization.averageImage should hold 3 RGB values, got shape {average.shape}")
    size_value = np.asarray(_field(normalization, "imageSize", where, path)).reshape(-1)
    if size_value.size == 2:  # some files give only H W
        size_value = np.append(size_value, 3)
    image_size = _ints(size_value, 3, "normalization.imageSize", path)
    interpolation = _text(_field(normalization, "interpolation", where, path, default="bilinear")) or "bilinear"
    keep_aspect = bool(np.asarray(_field(normalization, "keepAspect", where, path, default=True)).reshape(-1)[0])
    border_raw = _field(normalization, "border", where, path, default=np.zeros(2))
    border = _ints(border_raw, 2, "normalization.border", path) if np.size(border_raw) else (0, 0)
    # Person names are in classes.description in the real file (classes.name holds ids).
    names_value = _field(classes, "description", "'classes'", path, default=None)
    if names_value is None or not np.size(names_value):
        names_value = _field(classes, "name", "'classes'", path)
    class_names = [_text(name) for name in _cell_list(names_value)] if np.size(names_value) else []

    network = Network(
        layers=layers,
        average_image=average.reshape(3).astype(np.float32),
        image_size=tuple(image_size),
        interpolation=interpolation,
        keep_aspect=keep_aspect,
        border=tuple(border),
        class_names=class_names,
        layout=layout,
        source=path.resolve(),
        sha256=sha256_file(path),
    )
    validate(network, strict=strict, path=path)
    return network


def descriptor_indices(network: Network) -> dict[str, int]:
    """Indices in ``network.layers`` whose outputs are the descriptors.

    ``fc7``: the ReLU right after the second-to-last conv (dropouts skipped), as in the
    authors' code; ``fc8``: whatever feeds the final softmax (the last conv in VGG-Face), so a
    stray ReLU there, the original work's bug, would show in the output.
    """
    conv_idx = [i for i, layer in enumerate(network.layers) if layer.type == "conv"]
    if len(conv_idx) < 2:
        raise ConversionError(network.source or "<network>", "needs at least two conv layers (fc7 and fc8)")
    after = [i for i in range(conv_idx[-2] + 1, len(network.layers)) if network.layers[i].type != "dropout"]
    if not after or network.layers[after[0]].type != "relu":
        raise ConversionError(network.source or "<network>", f"'{network.layers[conv_idx[-2]].name}' (fc7) is not followed by a ReLU")
    fc8 = conv_idx[-1]
    if network.layers[-1].type == "softmax":
        fc8 = max(i for i in range(len(network.layers) - 1) if network.layers[i].type != "dropout")
    return {"fc7": after[0], "fc8": fc8}


def output_shapes(network: Network) -> list[tuple[int, int, int]]:
    """Feature-map shape (H, W, C) after each layer, following MatConvNet's size rule."""
    h, w, c = network.image_size
    shapes = []
    for layer in network.layers:
        if layer.type in ("conv", "pool"):
            kh, kw = layer.kernel.shape[:2] if layer.type == "conv" else layer.pool
            top, bottom, left, right = layer.pad
            h = (h + top + bottom - kh) // layer.stride[0] + 1
            w = (w + left + right - kw) // layer.stride[1] + 1
            if layer.type == "conv":
                c = layer.kernel.shape[3]
        shapes.append((h, w, c))
    return shapes


def _count_non_finite(values: np.ndarray) -> int:
    """How many NaN/inf entries ``values`` holds (cheap when there are none)."""
    values = np.asarray(values)
    if values.dtype.kind not in "fc" or np.isfinite(values).all():
        return 0
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def validate(network: Network, *, strict: bool = True, path: str | os.PathLike[str] | None = None) -> None:
    """Check that the layers chain together (and, if ``strict``, that this is VGG-Face's shape)."""
    where = Path(path) if path is not None else Path(str(network.source or "<network>"))
    convs = network.convs
    if not convs:
        raise ConversionError(where, "has no conv layers")
    for layer in convs:
        bad = _count_non_finite(layer.kernel) + _count_non_finite(layer.bias)
        if bad:
            raise ConversionError(where, f"layer {layer.name} has {bad} NaN/inf values in its weights: the file is damaged; download it again")
    if _count_non_finite(network.average_image):
        raise ConversionError(where, f"normalization.averageImage has NaN/inf values ({network.average_image.tolist()})")
    channels = network.image_size[2]
    for layer in convs:
        if layer.kernel.shape[2] != channels:
            raise ConversionError(
                where, f"layer '{layer.name}': kernel {layer.kernel.shape} expects {layer.kernel.shape[2]} input channels but receives {channels}"
            )
        channels = layer.kernel.shape[3]
    shapes = output_shapes(network)
    for layer, (h, w, _) in zip(network.layers, shapes):
        if h < 1 or w < 1:
            raise ConversionError(where, f"layer '{layer.name}' shrinks the {network.image_size[:2]} input to nothing")
    if shapes[-1][:2] != (1, 1):
        raise ConversionError(
            where,
            f"the last layer outputs {shapes[-1]}, not a 1 x 1 x classes vector: the fully connected layers do not match the input size {network.image_size}",
        )
    if network.class_names and len(network.class_names) != network.num_classes:
        raise ConversionError(where, f"has {len(network.class_names)} class names but fc8 outputs {network.num_classes} scores")
    if not strict:
        return
    if network.num_classes != VGG_FACE_NUM_CLASSES:
        if network.num_classes == IMAGENET_NUM_CLASSES:
            kind = (
                f"fc8 outputs {IMAGENET_NUM_CLASSES} classes: this is an ImageNet classifier (such as MatConvNet's "
                f"imagenet-vgg-verydeep-16.mat), not VGG-Face, whose fc8 scores {VGG_FACE_NUM_CLASSES} identities"
            )
        else:
            kind = f"fc8 outputs {network.num_classes} classes, but VGG-Face scores {VGG_FACE_NUM_CLASSES} identities: this is not VGG-Face"
        raise ConversionError(
            where,
            f"{kind}. Use vgg_face.mat from the VGG group's VGG-Face page, or convert it anyway with strict=False (`gender-lib convert --lenient`).",
        )
    types = [layer.type for layer in network.layers if layer.type != "dropout"]
    if len(convs) != 16 or types.count("pool") != 5 or types[-1] != "softmax":
        raise ConversionError(
            where,
            f"is not the VGG-Face network: expected 16 conv layers (13 conv + fc6, fc7, fc8), 5 max pools and a final softmax; "
            f"found {len(convs)} conv, {types.count('pool')} pool, last layer '{types[-1]}'",
        )
    for i, layer in enumerate(network.layers):
        if layer.type == "conv":
            following = [later.type for later in network.layers[i + 1 :] if later.type != "dropout"][:1]
            if layer is not convs[-1] and following != ["relu"]:
                raise ConversionError(where, f"layer '{layer.name}' is not followed by a ReLU as in VGG-Face")
    if types[-2] != "conv":
        raise ConversionError(where, f"fc8 '{convs[-1].name}' must feed the softmax directly (found '{types[-2]}' between them)")


# --------------------------------------------------------------------------- synthetic files


def synthetic_network(
    conv_widths: Sequence[int] = (4, 4, 6, 6, 8, 8, 8, 8, 8, 8, 8, 8, 8),
    fc_widths: Sequence[int] = (16, 16, VGG_FACE_NUM_CLASSES),
    *,
    seed: int = 0,
    with_dropout: bool = True,
    random_weights: bool = True,
    num_classes: int | None = None,
) -> Network:
    """A VGG-Face-shaped :class:`Network` with random weights and chosen widths.

    The real widths are :data:`VGG_FACE_CONV_WIDTHS` and :data:`VGG_FACE_FC_WIDTHS`; tests
    use narrow ones so a forward pass takes milliseconds. Weights are He-normal so
    activations neither vanish nor explode through 16 layers. ``num_classes`` replaces
    fc8's width (e.g. :data:`IMAGENET_NUM_CLASSES` for a VGG-16 ImageNet look-alike).
    """
    if len(conv_widths) != 13 or len(fc_widths) != 3:
        raise ValueError("VGG-Face has 13 conv widths and 3 fully connected widths")
    if num_classes is not None:
        fc_widths = (*tuple(fc_widths)[:2], int(num_classes))
    rng = np.random.default_rng(seed)
    layers: list[Layer] = []
    channels = 3

    def conv(name: str, size: int, cout: int, pad: int) -> Layer:
        nonlocal channels
        fan_in = size * size * channels
        shape = (size, size, channels, cout)
        if random_weights:
            kernel = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
            bias = rng.uniform(-0.05, 0.05, cout).astype(np.float32)
        else:
            kernel, bias = np.zeros(shape, np.float32), np.zeros(cout, np.float32)
        channels = cout
        return Layer(name=name, type="conv", kernel=kernel, bias=bias, stride=(1, 1), pad=(pad,) * 4)

    for i, width in enumerate(conv_widths):
        layers.append(conv(_CONV_NAMES[i], 3, width, 1))
        layers.append(Layer(name=_CONV_NAMES[i].replace("conv", "relu"), type="relu"))
        if i in _POOL_AFTER:
            layers.append(Layer(name=f"pool{_POOL_AFTER.index(i) + 1}", type="pool", pool=(2, 2), stride=(2, 2)))
    layers.append(conv("fc6", 7, fc_widths[0], 0))
    layers.append(Layer(name="relu6", type="relu"))
    if with_dropout:
        layers.append(Layer(name="dropout6", type="dropout"))
    layers.append(conv("fc7", 1, fc_widths[1], 0))
    layers.append(Layer(name="relu7", type="relu"))
    if with_dropout:
        layers.append(Layer(name="dropout7", type="dropout"))
    layers.append(conv("fc8", 1, fc_widths[2], 0))
    layers.append(Layer(name="prob", type="softmax"))
    return Network(
        layers=layers,
        average_image=np.array(VGG_FACE_MEAN_RGB, np.float32),
        image_size=(224, 224, 3),
        interpolation="bicubic",
        keep_aspect=True,
        border=(32, 32),
        class_names=[f"Synthetic_Person_{i:04d}" for i in range(fc_widths[2])],
        layout="memory",
    )
