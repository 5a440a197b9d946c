"""Read dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in Python.

The file is a serialised ``anet_type`` (dlib's ``tools/python/src/face_recognition.cpp`` and
``examples/dnn_face_recognition_ex.cpp``)::

    loss_metric<fc_no_bias<128, avg_pool_everything<
        alevel0<alevel1<alevel2<alevel3<alevel4<
        max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>>>>>

with ``alevel4`` = 3 x ``ares<32>``, ``alevel3`` = ``ares_down<64>`` + 3 x ``ares<64>``,
``alevel2`` = ``ares_down<128>`` + 2 x ``ares<128>``, ``alevel1`` = ``ares_down<256>`` + 2 x
``ares<256>``, ``alevel0`` = ``ares_down<256>``, and::

    block<N,stride>  = affine<con<N,3,3,1,1, relu<affine<con<N,3,3,stride,stride, SUBNET>>>>>
    ares<N>          = relu<add_prev1<block<N,1, tag1<SUBNET>>>>
    ares_down<N>     = relu<add_prev2<avg_pool<2,2,2,2, skip1<tag2<block<N,2, tag1<SUBNET>>>>>>>

The byte format, from dlib 19.24/20.0's sources (checked against the file):

* ``serialize.h``: integers are packed: one control byte (low nibble = number of value bytes,
  0x80 = negative), then the magnitude little-endian; zero is ``01 00``. Strings are a packed
  length then the bytes. Floats are a (mantissa int64, exponent int16) pair of packed ints,
  value ``ldexp((float)mantissa, exponent)``. ``bool`` is the character ``'0'`` or ``'1'``.
* ``cuda/tensor.h``: a tensor is version 2, then num_samples, k, nr, nc (NCHW), then the raw
  little-endian float32 data; an ``alias_tensor`` is version 1 and the four sizes, no data.
* ``dnn/core.h``: ``add_loss_layer`` writes version 1, the loss, then its subnetwork; every
  ``add_layer`` writes its version (2), its subnetwork, *then* its own layer and training state
  (three bools, x_grad, cached_output, params_grad); the innermost ``add_layer`` over the input
  layer writes version 3 (or 2), the input layer, its layer, the same state, ``grad_final`` and
  (v3) ``_sample_expansion_factor``. ``add_tag_layer`` and ``add_skip_layer`` write only
  version 1 and their subnetwork: **their tag numbers are not in the file**, and ``add_prev_``
  writes only its name. So the file fixes the order of every layer and its parameters; which
  tag a ``skip``/``add_prev`` refers to comes from ``anet_type`` (:data:`FACE_RESNET`), which
  the file is checked against layer by layer.
* ``dnn/layers.h``: ``con_`` (``con_4``..``con_6``): params tensor (filters then biases), then
  num_filters, nr, nc, stride_y, stride_x, padding_y, padding_x, the ``filters`` alias
  (num_filters, k, nr, nc) and ``biases`` alias, four learning-rate/decay floats, and (5+)
  use_bias, (6) use_relu. ``affine_``/``affine_2``: params (gamma then beta), gamma and beta
  aliases, mode (0 = per channel), (2) disabled. ``relu_``/``relu_2`` (+ disabled).
  ``max_pool_2``/``avg_pool_2``: nr, nc, stride_y, stride_x, padding_y, padding_x (window 0 =
  the whole input: ``avg_pool_everything``). ``fc_2``/``fc_3``: num_outputs, num_inputs,
  params (num_inputs x num_outputs), weights/biases aliases, bias mode (1 = no bias), four
  floats, (3) use_bias. ``input_rgb_image_sized``: the red, green, blue means, nr, nc.

The semantics that matter for a port (all in dlib's ``cpu_dlib.cpp``/``layers.h``/``input.h``):
conv and pooling pad symmetrically with zeros by ``padding`` whose default is
``stride != 1 ? 0 : size/2`` (so strided layers do not pad), output size
``1 + (n + 2 pad - size) / stride``; conv is a cross-correlation; ``add_prev`` gives a tensor
of the larger of each dimension and adds the two inputs zero-extended (missing channels *and*
missing bottom rows / right columns are zeros); the input is ``(pixel - mean) / 256``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from gender_lib.errors import BadFileError
from gender_lib.fileio import sha256_file

logger = logging.getLogger(__name__)

#: dlib's ``input_rgb_image_sized::to_tensor``: ``(pixel - avg) / 256.0`` per channel.
INPUT_DIVISOR = 256.0
DESCRIPTOR_DIM = 128


#: The semantics the converted models follow by default (dlib's, as this module's docstring sets
#: out), for :func:`gender_lib.converters.onnx_graph.dlib_graph` (and experiments' Keras copy). Tests pass other
#: values to show that the check against dlib catches each wrong rule.
DLIB_RULES: dict[str, Any] = {
    "strided_padding": "dlib",  # "same": TensorFlow's asymmetric 'same' padding on strided convs
    "channel_padding": "end",  # "front": add_prev's missing channels zero-padded before, not after
    "spatial_padding": "end",  # "start": add_prev's missing rows/columns padded top/left
    "input_divisor": None,  # None: dlib's 256 from the reader; a number overrides it
}


def build_rules(**rules: Any) -> dict[str, Any]:
    """:data:`DLIB_RULES` with ``rules`` overriding some; an unknown name is a ``ValueError``."""
    unknown = set(rules) - set(DLIB_RULES)
    if unknown:
        raise ValueError(f"unknown build rule(s) {sorted(unknown)}; known: {sorted(DLIB_RULES)}")
    return {**DLIB_RULES, **rules}


class DlibModelError(BadFileError):
    """A file that is not (or not a readable copy of) dlib's face recognition ResNet."""


@dataclasses.dataclass
class Layer:
    """One layer in forward order (input first). ``kind`` is one of ``input``, ``con``,
    ``affine``, ``relu``, ``max_pool``, ``avg_pool``, ``avg_pool_everything``, ``tag``,
    ``skip``, ``add_prev``, ``fc``.

    Fields by kind:

    * ``input``: ``mean_rgb`` (3 float32), ``divisor`` (256), ``size`` (nr, nc);
    * ``con``: ``num_filters``, ``size`` (nr, nc), ``stride`` (y, x), ``padding`` (y, x),
      ``filters`` float32 (num_filters, k, nr, nc), ``biases`` float32 (num_filters,) or None;
    * ``affine``: ``gamma``, ``beta`` float32 (k,);
    * pools: ``size`` (nr, nc; (0, 0) for avg_pool_everything), ``stride``, ``padding``;
    * ``tag``/``skip``/``add_prev``: ``tag`` (the id, from :data:`FACE_RESNET`);
    * ``fc``: ``num_outputs``, ``num_inputs``, ``weights`` float32 (num_inputs, num_outputs),
      ``biases`` None (``fc_no_bias``).
    """

    kind: str
    version: str = ""
    size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] | None = None
    num_filters: int | None = None
    filters: np.ndarray | None = None
    biases: np.ndarray | None = None
    gamma: np.ndarray | None = None
    beta: np.ndarray | None = None
    tag: int | None = None
    mean_rgb: tuple[float, float, float] | None = None
    divisor: float | None = None
    num_outputs: int | None = None
    num_inputs: int | None = None
    weights: np.ndarray | None = None

    def describe(self) -> str:
        if self.kind == "con":
            return f"con {self.num_filters} {self.size[0]}x{self.size[1]}/{self.stride[0]} pad {self.padding[0]}{'' if self.biases is not None else ' no-bias'}"
        if self.kind in ("max_pool", "avg_pool"):
            return f"{self.kind} {self.size[0]}x{self.size[1]}/{self.stride[0]} pad {self.padding[0]}"
        if self.kind in ("tag", "skip", "add_prev"):
            return f"{self.kind}{self.tag}"
        if self.kind == "affine":
            return f"affine {len(self.gamma)}"
        if self.kind == "fc":
            return f"fc {self.num_inputs}->{self.num_outputs} no-bias"
        if self.kind == "input":
            return f"input {self.size[0]}x{self.size[1]} mean {self.mean_rgb} /{self.divisor:g}"
        return self.kind


@dataclasses.dataclass
class Network:
    """The parsed file: ``layers`` in forward order and the ``loss`` header."""

    layers: list[Layer]
    loss: dict[str, Any]
    source: Path
    sha256: str

    def count(self, kind: str) -> int:
        return sum(layer.kind == kind for layer in self.layers)

    @property
    def input(self) -> Layer:
        return self.layers[0]

    def num_parameters(self) -> int:
        """Learned numbers in the file: con filters + biases, affine gamma + beta, fc weights."""
        total = 0
        for layer in self.layers:
            for array in (layer.filters, layer.biases, layer.gamma, layer.beta, layer.weights):
                if array is not None:
                    total += int(array.size)
        return total

    def summary(self) -> str:
        return "\n".join(f"{i:3d} {layer.describe()}" for i, layer in enumerate(self.layers))


# --------------------------------------------------------------------------- the architecture


def _face_resnet() -> list[tuple[Any, ...]]:
    """``anet_type`` in forward order: (kind, ...) with the C++ template arguments."""
    out: list[tuple[Any, ...]] = [("input", 150, 150), ("con", 32, 7, 2), ("affine",), ("relu",), ("max_pool", 3, 2)]

    def block(n: int, stride: int) -> list[tuple[Any, ...]]:
        return [("con", n, 3, stride), ("affine",), ("relu",), ("con", n, 3, 1), ("affine",)]

    def ares(n: int) -> list[tuple[Any, ...]]:
        return [("tag", 1), *block(n, 1), ("add_prev", 1), ("relu",)]

    def ares_down(n: int) -> list[tuple[Any, ...]]:
        return [("tag", 1), *block(n, 2), ("tag", 2), ("skip", 1), ("avg_pool", 2, 2), ("add_prev", 2), ("relu",)]

    for n, down, plain in ((32, 0, 3), (64, 1, 3), (128, 1, 2), (256, 1, 2), (256, 1, 0)):
        out += (ares_down(n) if down else []) + [x for _ in range(plain) for x in ares(n)]
    out += [("avg_pool_everything",), ("fc", DESCRIPTOR_DIM)]
    return out


#: dlib's face recognition ``anet_type``, input first (the file is checked against it).
FACE_RESNET: list[tuple[Any, ...]] = _face_resnet()


# --------------------------------------------------------------------------- byte reader


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data = data
        self.pos = 0
        self.path = path

    def fail(self, problem: str) -> DlibModelError:
        return DlibModelError(self.path, problem)

    def _need(self, n: int, what: str) -> None:
        if self.pos + n > len(self.data):
            raise self.fail(f"truncated: {what} needs {n} bytes at byte {self.pos:,} but the file ends at byte {len(self.data):,}")

    def byte(self, what: str) -> int:
        self._need(1, what)
        value = self.data[self.pos]
        self.pos += 1
        return value

    def int(self, what: str, signed: bool = True) -> int:
        start = self.pos
        control = self.byte(what)
        size = control & 0x0F
        negative = bool(control & 0x80)
        if size == 0 or size > 8 or control & 0x70 or (negative and not signed):
            raise self.fail(f"not a dlib serialised value: bad integer control byte 0x{control:02x} for {what} at byte {start:,}")
        self._need(size, what)
        value = int.from_bytes(self.data[self.pos : self.pos + size], "little")
        self.pos += size
        return -value if negative else value

    def peek_int(self) -> int | None:
        pos = self.pos
        try:
            return self.int("peek")
        except DlibModelError:
            return None
        finally:
            self.pos = pos

    def float(self, what: str) -> float:
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail(f"{what} at byte {self.pos:,} uses dlib's old text float format, which is not supported")
        mantissa = self.int(f"{what} (mantissa)")
        exponent = self.int(f"{what} (exponent)")
        if exponent == 32000:
            return float("inf")
        if exponent == 32001:
            return float("-inf")
        if exponent == 32002:
            return float("nan")
        # dlib: std::ldexp((float)mantissa, exponent): round the mantissa to float first.
        return float(np.ldexp(np.float32(mantissa), exponent))

    def string(self, what: str, max_len: int = 256) -> str:
        start = self.pos
        length = self.int(f"length of {what}", signed=False)
        if length > max_len:
            raise self.fail(f"not a dlib network: expected {what} at byte {start:,}, found a length of {length:,}")
        self._need(length, what)
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"not a dlib network: {what} at byte {start:,} is not text") from None
        return text

    def bool(self, what: str) -> bool:
        start = self.pos
        ch = self.byte(what)
        if ch not in (ord("0"), ord("1")):
            raise self.fail(f"corrupt: {what} at byte {start:,} should be '0' or '1', found 0x{ch:02x}")
        return ch == ord("1")

    def tensor(self, what: str) -> np.ndarray:
        start = self.pos
        version = self.int(f"{what} version")
        if version != 2:
            raise self.fail(f"corrupt: tensor {what} at byte {start:,} has version {version}, expected 2")
        shape = tuple(self.int(f"{what} size") for _ in range(4))
        if min(shape) < 0:
            raise self.fail(f"corrupt: tensor {what} at byte {start:,} has a negative size {shape}")
        count = int(np.prod(shape, dtype=np.int64))
        self._need(4 * count, f"tensor {what} {shape}")
        array = np.frombuffer(self.data, "<f4", count, self.pos).astype(np.float32).reshape(shape)
        self.pos += 4 * count
        return array

    def alias(self, what: str) -> tuple[int, int, int, int]:
        start = self.pos
        version = self.int(f"{what} version")
        if version != 1:
            raise self.fail(f"corrupt: alias tensor {what} at byte {start:,} has version {version}, expected 1")
        return tuple(self.int(f"{what} size") for _ in range(4))  # type: ignore[return-value]


# --------------------------------------------------------------------------- layer details


def _read_input(r: _Reader) -> Layer:
    name = r.string("input layer name")
    if name != "input_rgb_image_sized":
        raise r.fail(f"the input layer is '{name}', not dlib's input_rgb_image_sized: not the face recognition ResNet")
    mean = tuple(r.float(f"{c} mean") for c in ("red", "green", "blue"))
    nr, nc = r.int("input rows"), r.int("input columns")
    return Layer(
        "input",
        version=name,
        mean_rgb=tuple(float(np.float32(m)) for m in mean),  # type: ignore[arg-type]
        divisor=INPUT_DIVISOR,
        size=(nr, nc),
    )


def _read_details(r: _Reader) -> Layer:
    start = r.pos
    name = r.string("layer name")
    if name in ("con_4", "con_5", "con_6"):
        params = r.tensor("con params")
        num_filters = r.int("num_filters")
        nr, nc = r.int("nr"), r.int("nc")
        sy, sx = r.int("stride_y"), r.int("stride_x")
        py, px = r.int("padding_y"), r.int("padding_x")
        filters_shape = r.alias("con filters")
        biases_shape = r.alias("con biases")
        for what in ("learning_rate_multiplier", "weight_decay_multiplier", "bias_learning_rate_multiplier", "bias_weight_decay_multiplier"):
            r.float(what)
        use_bias = r.bool("use_bias") if name != "con_4" else True
        use_relu = r.bool("use_relu") if name == "con_6" else False
        if use_relu:
            raise r.fail(f"con layer at byte {start:,} has its fused ReLU enabled, which the face recognition ResNet does not use")
        n_filters = int(np.prod(filters_shape))
        n_bias = num_filters if use_bias else 0
        if filters_shape[0] != num_filters or filters_shape[2:] != (nr, nc) or params.size != n_filters + n_bias:
            raise r.fail(
                f"corrupt: con layer at byte {start:,}: filters {filters_shape}, {num_filters} filters of {nr}x{nc}, {params.size} parameters do not agree"
            )
        flat = params.reshape(-1)
        filters = flat[:n_filters].reshape(filters_shape)
        biases = flat[n_filters:].copy() if use_bias else None
        del biases_shape
        return Layer("con", version=name, num_filters=num_filters, size=(nr, nc), stride=(sy, sx), padding=(py, px), filters=filters, biases=biases)
    if name in ("affine_", "affine_2"):
        params = r.tensor("affine params")
        gamma_shape = r.alias("gamma")
        r.alias("beta")
        mode = r.int("affine mode")
        disabled = r.bool("affine disabled") if name == "affine_2" else False
        if disabled:
            raise r.fail(f"affine layer at byte {start:,} is disabled, which the face recognition ResNet does not use")
        if mode != 0:
            raise r.fail(f"affine layer at byte {start:,} is in mode {mode} (per position), not per channel (0)")
        n = int(np.prod(gamma_shape))
        if params.size != 2 * n:
            raise r.fail(f"corrupt: affine layer at byte {start:,}: {params.size} parameters for {n} channels")
        flat = params.reshape(-1)
        return Layer("affine", version=name, gamma=flat[:n].copy(), beta=flat[n:].copy())
    if name in ("bn_con2", "bn_fc2"):
        raise r.fail(
            f"has a batch-norm layer ('{name}') at byte {start:,}: this is a training network, not the inference network dlib distributes (affine layers)"
        )
    if name in ("relu_", "relu_2"):
        if name == "relu_2" and r.bool("relu disabled"):
            raise r.fail(f"relu layer at byte {start:,} is disabled")
        return Layer("relu", version=name)
    if name in ("max_pool_2", "avg_pool_2"):
        nr, nc = r.int("pool nr"), r.int("pool nc")
        sy, sx = r.int("pool stride_y"), r.int("pool stride_x")
        py, px = r.int("pool padding_y"), r.int("pool padding_x")
        kind = name[:-2]
        if kind == "avg_pool" and nr == 0 and nc == 0:
            kind = "avg_pool_everything"
        return Layer(kind, version=name, size=(nr, nc), stride=(sy, sx), padding=(py, px))
    if name == "add_prev_":
        return Layer("add_prev", version=name)
    if name in ("fc_2", "fc_3"):
        num_outputs, num_inputs = r.int("fc num_outputs"), r.int("fc num_inputs")
        params = r.tensor("fc params")
        weights_shape = r.alias("fc weights")
        r.alias("fc biases")
        bias_mode = r.int("fc bias mode")
        for what in ("learning_rate_multiplier", "weight_decay_multiplier", "bias_learning_rate_multiplier", "bias_weight_decay_multiplier"):
            r.float(what)
        use_bias = r.bool("fc use_bias") if name == "fc_3" else True
        has_bias = bias_mode == 0 and use_bias  # FC_HAS_BIAS = 0, FC_NO_BIAS = 1
        if has_bias:
            raise r.fail(f"fc layer at byte {start:,} has a bias; the face recognition ResNet's fc has none (fc_no_bias)")
        if weights_shape[:2] != (num_inputs, num_outputs) or params.size != num_inputs * num_outputs:
            raise r.fail(f"corrupt: fc layer at byte {start:,}: {params.size} parameters for {num_inputs} x {num_outputs}")
        return Layer("fc", version=name, num_outputs=num_outputs, num_inputs=num_inputs, weights=params.reshape(num_inputs, num_outputs).copy())
    raise r.fail(f"has a layer '{name}' at byte {start:,} that the face recognition ResNet does not use")


def _read_layer_state(r: _Reader, input_layer_version: int | None = None) -> None:
    """What ``add_layer`` writes after its layer: three bools and the training buffers."""
    for what in ("this_layer_setup_called", "gradient_input_is_stale", "get_output_and_gradient_input_disabled"):
        r.bool(what)
    r.tensor("x_grad")
    r.tensor("cached_output")
    if input_layer_version is None:
        r.tensor("params_grad")
    else:
        r.tensor("grad_final")
        if input_layer_version >= 3:
            r.int("sample_expansion_factor")


# --------------------------------------------------------------------------- the file


def _identify_other(r: _Reader) -> None:
    """Name the other dlib files people confuse with this one (first bytes after version 1)."""
    pos = r.pos
    value = r.peek_int()
    if value is not None and value < 0:
        r.int("matrix rows")
        cols = r.peek_int()
        r.pos = pos
        if cols == -1 and -value % 2 == 0:
            raise r.fail(f"is a shape predictor ({-value // 2} landmarks), not dlib's face recognition ResNet")
        raise r.fail("is a dlib file but not a network (it starts with a matrix), not dlib's face recognition ResNet")


def read_network(path: str | os.PathLike[str] | None = None) -> Network:
    """Parse the ``.dat`` at ``path`` (default: ``face_recognition_models``' copy).

    Raises :class:`DlibModelError` naming the file for anything else: empty, truncated,
    random bytes, a shape predictor, the MMOD detector, a differently built network.
    """
    path = Path(path) if path is not None else default_source()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DlibModelError(path, "no such file") from None
    except IsADirectoryError:
        raise DlibModelError(path, "is a folder, not dlib's face recognition ResNet file") from None
    except OSError as error:
        raise DlibModelError(path, f"cannot be read ({error.strerror or error})") from None
    if not data:
        raise DlibModelError(path, "is empty (0 bytes), not dlib's face recognition ResNet")
    if data[:3] == b"BZh":
        raise DlibModelError(path, "is bzip2-compressed: decompress it first (bunzip2)")
    r = _Reader(data, path)

    version = r.int("loss layer version")
    if version != 1:
        raise r.fail(f"not a dlib network file: it starts with version {version}, dlib's add_loss_layer writes 1")
    _identify_other(r)
    loss_name = r.string("loss layer name")
    if loss_name.startswith("loss_mmod"):
        raise r.fail("is dlib's MMOD CNN face detector (loss_mmod), not dlib's face recognition ResNet")
    if loss_name == "loss_metric_":
        loss = {"name": loss_name, "margin": 0.1, "distance_threshold": 0.75}
    elif loss_name == "loss_metric_2":
        loss = {"name": loss_name, "margin": r.float("margin"), "distance_threshold": r.float("distance threshold")}
    elif loss_name.startswith("loss_"):
        raise r.fail(f"is a dlib network with the loss '{loss_name}', not dlib's face recognition ResNet (loss_metric)")
    else:
        raise r.fail(f"not a dlib network file: expected a loss layer name, found {loss_name!r}")

    # Wrappers, outermost first: add_layer writes 2 (or 1 in old files), tag/skip write 1.
    # They end at the innermost add_layer's version followed by the input layer's name.
    wrappers: list[tuple[int, int]] = []
    while True:
        pos = r.pos
        v = r.int("layer version")
        after = r.pos
        try:
            n = r.int("x", signed=False)
            is_input = n < 64 and data[r.pos : r.pos + 6] == b"input_"
        except DlibModelError:
            is_input = False
        r.pos = after
        if is_input:
            input_version = v
            break
        if v not in (1, 2):
            raise r.fail(f"corrupt: unexpected layer version {v} at byte {pos:,}")
        wrappers.append((v, pos))
        if len(wrappers) > 10_000:
            raise r.fail("corrupt: no input layer found")
    if input_version not in (2, 3):
        raise r.fail(f"corrupt: input add_layer version {input_version}")
    inner = [_read_input(r), _read_details(r)]
    _read_layer_state(r, input_layer_version=input_version)

    # Now the remaining add_layers' details, innermost first; tag/skip wrappers wrote nothing.
    adds = sum(v == 2 for v, _ in wrappers)
    details = []
    for _ in range(adds):
        details.append(_read_details(r))
        _read_layer_state(r)
    if r.pos != len(data):
        raise r.fail(f"has {len(data) - r.pos:,} unexpected bytes after the network (byte {r.pos:,})")
    # Forward order: input, con, then the wrappers from the innermost out.
    layers = inner
    it = iter(details)
    for v, _ in reversed(wrappers):
        layers.append(next(it) if v == 2 else Layer("marker"))
    _match_architecture(layers, r)
    network = Network(layers=layers, loss=loss, source=path.resolve(), sha256=sha256_file(path))
    logger.info(
        "read %s: %d layers (%d con, %d affine, %d add_prev), %s parameters, loss %s",
        path.name,
        len(layers),
        network.count("con"),
        network.count("affine"),
        network.count("add_prev"),
        f"{network.num_parameters():,}",
        loss,
    )
    return network


def _match_architecture(layers: list[Layer], r: _Reader) -> None:
    """Check the layer list against :data:`FACE_RESNET`; fill in tag ids; check shapes chain."""
    expected = FACE_RESNET
    kinds = [layer.kind for layer in layers]
    exp_kinds = ["marker" if e[0] in ("tag", "skip") else e[0] for e in expected]
    if kinds != exp_kinds:
        first = next((i for i, (a, b) in enumerate(zip(kinds, exp_kinds)) if a != b), min(len(kinds), len(exp_kinds)))
        found = kinds[first] if first < len(kinds) else "the end"
        want = exp_kinds[first] if first < len(exp_kinds) else "the end"
        raise r.fail(
            f"is a dlib network but not the face recognition ResNet: layer {first} is {found}, expected {want} "
            f"({kinds.count('con')} con layers, expected {exp_kinds.count('con')})"
        )
    channels = 3
    nr, nc = layers[0].size
    if (nr, nc) != (expected[0][1], expected[0][2]):
        raise r.fail(f"input is {nr}x{nc}, expected 150x150")
    for i, (layer, spec) in enumerate(zip(layers, expected)):
        kind = spec[0]
        if kind in ("tag", "skip", "add_prev"):
            layer.kind = kind
            layer.tag = spec[1]
        elif kind == "con":
            n, size, stride = spec[1:]
            default_pad = 0 if stride != 1 else size // 2
            if (layer.num_filters, layer.size, layer.stride, layer.padding) != (n, (size, size), (stride, stride), (default_pad, default_pad)):
                raise r.fail(f"layer {i} is {layer.describe()}, expected con {n} {size}x{size}/{stride} pad {default_pad}")
            if layer.filters.shape[1] != channels and i == 1:
                raise r.fail(f"layer {i}: filters expect {layer.filters.shape[1]} input channels, the input has {channels}")
            channels = n
        elif kind in ("max_pool", "avg_pool"):
            size, stride = spec[1:]
            if (layer.size, layer.stride, layer.padding) != ((size, size), (stride, stride), (0, 0)):
                raise r.fail(f"layer {i} is {layer.describe()}, expected {kind} {size}x{size}/{stride} pad 0")
        elif kind == "avg_pool_everything":
            if layer.stride != (1, 1) or layer.padding != (0, 0):
                raise r.fail(f"layer {i} is {layer.describe()}, expected avg_pool_everything")
        elif kind == "fc" and layer.num_outputs != spec[1]:
            raise r.fail(f"the fc layer outputs {layer.num_outputs} values, expected {spec[1]}")
    _check_shapes(layers, r)


def output_shapes(layers: list[Layer]) -> list[tuple[int, int, int]]:
    """(k, nr, nc) after each layer with dlib's size rules (add_prev: the larger of each)."""
    shapes: list[tuple[int, int, int]] = []
    tags: dict[int, tuple[int, int, int]] = {}
    shape = (3, *layers[0].size)
    for layer in layers:
        k, nr, nc = shape
        if layer.kind == "con":
            (fy, fx), (sy, sx), (py, px) = layer.size, layer.stride, layer.padding
            shape = (layer.num_filters, 1 + (nr + 2 * py - fy) // sy, 1 + (nc + 2 * px - fx) // sx)
        elif layer.kind in ("max_pool", "avg_pool"):
            (fy, fx), (sy, sx), (py, px) = layer.size, layer.stride, layer.padding
            shape = (k, 1 + (nr + 2 * py - fy) // sy, 1 + (nc + 2 * px - fx) // sx)
        elif layer.kind == "avg_pool_everything":
            shape = (k, 1, 1)
        elif layer.kind == "tag":
            tags[layer.tag] = shape
        elif layer.kind == "skip":
            shape = tags[layer.tag]
        elif layer.kind == "add_prev":
            other = tags[layer.tag]
            shape = tuple(max(a, b) for a, b in zip(shape, other))  # type: ignore[assignment]
        elif layer.kind == "fc":
            shape = (layer.num_outputs, 1, 1)
        shapes.append(shape)
    return shapes


def _check_shapes(layers: list[Layer], r: _Reader) -> None:
    shapes = output_shapes(layers)
    previous = (3, *layers[0].size)
    for i, (layer, shape) in enumerate(zip(layers, shapes)):
        if min(shape) < 1:
            raise r.fail(f"layer {i} ({layer.describe()}) shrinks the input to nothing")
        if layer.kind == "con" and layer.filters.shape[1] != previous[0]:
            raise r.fail(f"layer {i} ({layer.describe()}): filters expect {layer.filters.shape[1]} channels, the input has {previous[0]}")
        if layer.kind == "affine" and len(layer.gamma) != previous[0]:
            raise r.fail(f"layer {i}: affine has {len(layer.gamma)} channels, its input {previous[0]}")
        if layer.kind == "fc" and layer.num_inputs != previous[0] * previous[1] * previous[2]:
            raise r.fail(f"layer {i}: fc takes {layer.num_inputs} inputs, gets {previous}")
        previous = shape


#: dlib's files in ``face_recognition_models``' ``models/`` folder, by role.
DLIB_MODEL_FILES = {
    "descriptor": "dlib_face_recognition_resnet_model_v1.dat",
    "landmarks5": "shape_predictor_5_face_landmarks.dat",
    "cnn_detector": "mmod_human_face_detector.dat",
}


@functools.lru_cache(maxsize=1)
def dlib_model_paths() -> dict[str, Path]:
    """Where ``face_recognition_models`` installed dlib's files (no download ever happens).

    Found from the package's location without importing it: its ``__init__`` imports
    ``pkg_resources``, which alone costs about 0.2 s of every cold ``predict``."""
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - it is a declared dependency
        raise RuntimeError("the dlib backbone needs the face_recognition_models package (pip install face_recognition_models)")
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    return {role: models / name for role, name in DLIB_MODEL_FILES.items()}


def default_source() -> Path:
    """``face_recognition_models``' copy of the file (installed with the package, never downloaded)."""
    try:
        return dlib_model_paths()["descriptor"]
    except RuntimeError as error:  # pragma: no cover - a declared dependency
        raise DlibModelError(Path("dlib_face_recognition_resnet_model_v1.dat"), str(error)) from error


__all__ = [
    "DLIB_RULES",
    "DlibModelError",
    "FACE_RESNET",
    "build_rules",
    "INPUT_DIVISOR",
    "Layer",
    "Network",
    "default_source",
    "dlib_model_paths",
    "output_shapes",
    "read_network",
]
