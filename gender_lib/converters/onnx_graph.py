"""ONNX graphs of the converted networks, written node by node from their layer lists.

Inference runs dlib's face ResNet and VGG-Face on ONNX Runtime: no TensorFlow import (4-7 s) and a
lean CPU path. The graphs are written here from the layer lists that
:mod:`gender_lib.converters.dlib_dnn` and :mod:`gender_lib.converters.matconvnet` read, with their
sources' semantics (and deliberately wrong ``rules`` for the tests that show the checks catch
them); :mod:`gender_lib.converters.dlib_resnet` and :mod:`gender_lib.converters.vggface` verify
them against dlib itself and against a float64 NumPy reference before anything is saved.

* :func:`dlib_graph`: uint8 chips (n, 150, 150, 3) RGB -> ``descriptor`` float32 (n, 128), dlib's
  fc output (not normalised). Each ``affine`` layer (batch norm folded by dlib into a per-channel
  scale and shift) is folded into the convolution before it (every one follows a ``con``), and the
  input's ``(pixel - mean) / 256`` into the first convolution, which pads nothing.
* :func:`vggface_graph`: float32 (n, 224, 224, 3) RGB 0-255 -> ``fc7`` (n, 4096, after relu7,
  L2-normalised) and ``fc8`` (n, 2622, before the softmax).

Both graphs take NHWC images and work in NCHW inside (ONNX's order). :class:`Runner` loads a
graph into an ONNX Runtime session with a set number of threads. ``onnx`` (to write graphs) and
``onnxruntime`` (to run them) are imported only when used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: The ONNX operator set the graphs are written for (ONNX Runtime 1.14 and later run it).
OPSET = 17


def versions() -> dict[str, str]:
    """``{"onnx_version": ..., "onnxruntime_version": ...}`` for a conversion's sidecar."""
    import onnx
    import onnxruntime

    return {"onnx_version": onnx.__version__, "onnxruntime_version": onnxruntime.__version__}


class _Graph:
    """Nodes and initializers of one graph, with unique names (a thin layer over ``onnx.helper``)."""

    def __init__(self) -> None:
        import onnx

        self.onnx = onnx
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = set()

    def name(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.name(base)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], base: str, *, output: str | None = None, **attributes: Any) -> str:
        """A node whose output is named after ``base`` (made unique), or exactly ``output`` (a name
        reserved with :meth:`reserve`: the graph's outputs)."""
        out = output or self.name(base)
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [out], name=out, **attributes))
        return out

    def reserve(self, *names: str) -> None:
        """Keep ``names`` for the graph's outputs: other nodes named after them get a suffix."""
        self._names.update(names)

    def model(self, inputs: Sequence[Any], outputs: Sequence[Any], name: str, doc: str) -> Any:
        """The checked ``onnx.ModelProto`` of the nodes so far (``onnx.checker`` raises on a malformed graph)."""
        helper = self.onnx.helper
        graph = helper.make_graph(self.nodes, name, list(inputs), list(outputs), self.initializers, doc_string=doc)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="gender_lib")
        model.ir_version = min(model.ir_version, 8)  # what ONNX Runtime 1.14+ reads; the graph needs nothing newer
        self.onnx.checker.check_model(model)
        return model


def _nhwc_input(g: _Graph, name: str, size: Sequence[int], elem_type: int) -> tuple[Any, str]:
    """The graph input (n, h, w, 3) of ``elem_type`` and its float32 NCHW copy (transposed before
    the cast: a uint8 image is a quarter of the bytes to move)."""
    info = g.onnx.helper.make_tensor_value_info(name, elem_type, ["n", int(size[0]), int(size[1]), 3])
    x = g.op("Transpose", [name], "nchw", perm=[0, 3, 1, 2])
    return info, g.op("Cast", [x], "as_float", to=g.onnx.TensorProto.FLOAT) if elem_type != g.onnx.TensorProto.FLOAT else x


# --------------------------------------------------------------------------- dlib's face ResNet


def dlib_graph(network: Any, *, fold_affine: bool = True, fold_input: bool = True, **rules: Any) -> Any:
    """dlib's face ResNet (a :class:`gender_lib.converters.dlib_dnn.Network` or its layer list,
    input first) as an ``onnx.ModelProto``: uint8 ``rgb_chip`` (n, 150, 150, 3) -> float32
    ``descriptor`` (n, 128), and ``pooled`` (n, 256): the average over the last feature map, the
    fc layer's input (the descriptor is its projection).

    The semantics are :data:`gender_lib.converters.dlib_dnn.DLIB_RULES`: convolutions pad
    ``padding`` zeros on each side (none where strided), pools do not pad; ``add_prev`` zero-extends the smaller
    input (channels at the end, rows at the bottom, columns at the right); the input is
    ``(pixel - mean) / divisor``. ``rules`` override them (only for the tests that show the
    verification catches each wrong one). ``fold_affine`` folds each ``affine`` into the
    convolution before it (``w * gamma``, ``b * gamma + beta``): the same function, one pass fewer.
    ``fold_input`` folds the input's ``(pixel - mean) / divisor`` into the first convolution where it
    pads nothing (``w / divisor``, ``b - sum(w * mean) / divisor``; dlib's is strided, so unpadded):
    two passes over the image fewer. Raises ``ValueError`` for a layer list this cannot express.
    """
    from gender_lib.converters.dlib_dnn import build_rules

    rule = build_rules(**rules)
    layers = list(getattr(network, "layers", network))
    if not layers or layers[0].kind != "input":
        raise ValueError("the layer list must start with the input layer")
    first = layers[0]
    g = _Graph()
    graph_input, x = _nhwc_input(g, "rgb_chip", first.size, g.onnx.TensorProto.UINT8)
    divisor = float(rule["input_divisor"] or first.divisor)
    mean = np.asarray(first.mean_rgb, np.float64)
    head = layers[1] if len(layers) > 1 else None
    unpadded = head is not None and head.kind == "con" and head.padding == (0, 0) and not (rule["strided_padding"] == "same" and head.stride != (1, 1))
    input_norm = (mean, divisor) if fold_input and unpadded else None  # zero padding of a normalised image is not zero pixels
    if input_norm is None:
        x = g.op("Sub", [x, g.const("mean_rgb", mean.astype(np.float32).reshape(1, 3, 1, 1))], "minus_mean")
        x = g.op("Div", [x, g.const("divisor", np.asarray(divisor, np.float32))], "divided")
    g.reserve("pooled")  # the second output
    pooled: tuple[str, int] | None = None
    shape = (3, *first.size)  # (k, nr, nc) of x, to size add_prev's zero extension
    tags: dict[int, tuple[str, tuple[int, int, int]]] = {}
    skip_next = False
    for i, layer in enumerate(layers[1:], start=1):
        if skip_next:  # an affine folded into the convolution before it
            skip_next = False
            continue
        tag = f"{i:03d}"
        if layer.kind == "con":
            affine = layers[i + 1] if fold_affine and i + 1 < len(layers) and layers[i + 1].kind == "affine" else None
            x, shape = _dlib_conv(g, x, shape, layer, affine, tag, rule, input_norm if i == 1 else None)
            skip_next = affine is not None
        elif layer.kind == "affine":
            k = len(layer.gamma)
            x = g.op("Mul", [x, g.const(f"gamma_{tag}", layer.gamma.reshape(1, k, 1, 1))], f"affine_{tag}_scale")
            x = g.op("Add", [x, g.const(f"beta_{tag}", layer.beta.reshape(1, k, 1, 1))], f"affine_{tag}")
        elif layer.kind == "relu":
            x = g.op("Relu", [x], f"relu_{tag}")
        elif layer.kind in ("max_pool", "avg_pool"):
            (fy, fx), (sy, sx), (py, px) = layer.size, layer.stride, layer.padding
            if (py, px) != (0, 0):  # dlib's strided pools do not pad, and the reader refuses a file whose do
                raise ValueError(f"layer {i}: {layer.kind} pads {layer.padding}; only unpadded pools are supported")
            op = "MaxPool" if layer.kind == "max_pool" else "AveragePool"
            x = g.op(op, [x], f"{layer.kind}_{tag}", kernel_shape=[fy, fx], strides=[sy, sx])
            shape = (shape[0], 1 + (shape[1] + 2 * py - fy) // sy, 1 + (shape[2] + 2 * px - fx) // sx)
        elif layer.kind == "avg_pool_everything":
            x = g.op("GlobalAveragePool", [x], f"avg_pool_everything_{tag}")
            shape = (shape[0], 1, 1)
            pooled = (x, shape[0])
        elif layer.kind == "tag":
            tags[layer.tag] = (x, shape)
        elif layer.kind == "skip":
            x, shape = tags[layer.tag]
        elif layer.kind == "add_prev":
            x, shape = _add_zero_extended(g, (x, shape), tags[layer.tag], tag, rule)
        elif layer.kind == "fc":
            if shape[0] * shape[1] * shape[2] != layer.num_inputs:
                raise ValueError(f"fc expects {layer.num_inputs} inputs, the network gives {shape}")
            flat = g.op("Flatten", [x], f"fc_{tag}_flatten", axis=1)  # NCHW flattened as (k, r, c): dlib's own order
            x = g.op("MatMul", [flat, g.const("fc_weights", layer.weights.astype(np.float32))], "descriptor")
            shape = (layer.num_outputs, 1, 1)
        else:
            raise ValueError(f"layer {i}: unsupported kind {layer.kind!r}")
    outputs = [g.onnx.helper.make_tensor_value_info(x, g.onnx.TensorProto.FLOAT, ["n", shape[0]])]
    if pooled is not None:
        flat = g.op("Flatten", [pooled[0]], "pooled", output="pooled", axis=1)
        outputs.append(g.onnx.helper.make_tensor_value_info(flat, g.onnx.TensorProto.FLOAT, ["n", pooled[1]]))
    return g.model([graph_input], outputs, "dlib_face_resnet", "dlib's face recognition ResNet (dlib_face_recognition_resnet_model_v1.dat)")


def _dlib_conv(
    g: _Graph,
    x: str,
    shape: tuple[int, int, int],
    layer: Any,
    affine: Any,
    tag: str,
    rule: Mapping[str, Any],
    input_norm: tuple[np.ndarray, float] | None = None,
) -> tuple[str, tuple[int, int, int]]:
    (fy, fx), (sy, sx), (py, px) = layer.size, layer.stride, layer.padding
    weights = layer.filters.astype(np.float64)  # (n, k, nr, nc): ONNX's OIHW already
    bias = layer.biases.astype(np.float64) if layer.biases is not None else np.zeros(layer.num_filters)
    if input_norm is not None:  # conv of (x - mean) / d == conv of x with w / d, minus sum(w * mean) / d (no padding)
        mean, divisor = input_norm
        bias = bias - np.einsum("okij,k->o", weights, mean) / divisor
        weights = weights / divisor
    if affine is not None:  # conv then x * gamma + beta == conv with w * gamma and b * gamma + beta
        gamma, beta = affine.gamma.astype(np.float64), affine.beta.astype(np.float64)
        weights, bias = weights * gamma[:, None, None, None], bias * gamma + beta
    attributes: dict[str, Any] = {"kernel_shape": [fy, fx], "strides": [sy, sx]}
    if rule["strided_padding"] == "same" and (sy, sx) != (1, 1):
        attributes["auto_pad"] = "SAME_UPPER"  # deliberately wrong: TensorFlow's 'same' on strided convs
        out_hw = (-(-shape[1] // sy), -(-shape[2] // sx))
    else:
        attributes["pads"] = [py, px, py, px]
        out_hw = (1 + (shape[1] + 2 * py - fy) // sy, 1 + (shape[2] + 2 * px - fx) // sx)
    inputs = [x, g.const(f"con_{tag}_w", weights.astype(np.float32))]
    if affine is not None or layer.biases is not None or input_norm is not None:
        inputs.append(g.const(f"con_{tag}_b", bias.astype(np.float32)))
    return g.op("Conv", inputs, f"con_{tag}", **attributes), (layer.num_filters, *out_hw)


def _add_zero_extended(
    g: _Graph, a: tuple[str, tuple[int, int, int]], b: tuple[str, tuple[int, int, int]], tag: str, rule: Mapping[str, Any]
) -> tuple[str, tuple[int, int, int]]:
    """dlib's add_prev: the output is the larger of each dimension; missing parts count as zero."""
    target = tuple(max(p, q) for p, q in zip(a[1], b[1]))
    parts = []
    for j, (x, shape) in enumerate((a, b)):
        dc, dh, dw = (t - s for t, s in zip(target, shape))
        if (dc, dh, dw) != (0, 0, 0):
            start = rule["spatial_padding"] == "start"
            front = [0, dc if rule["channel_padding"] == "front" else 0, dh if start else 0, dw if start else 0]
            back = [0, dc - front[1], dh - front[2], dw - front[3]]
            x = g.op("Pad", [x, g.const(f"add_prev_{tag}_in{j}_pads", np.asarray(front + back, np.int64))], f"add_prev_{tag}_in{j}_zero_extend")
        parts.append(x)
    return g.op("Add", parts, f"add_prev_{tag}"), target  # type: ignore[return-value]


# --------------------------------------------------------------------------- VGG-Face


def vggface_graph(network: Any) -> Any:
    """VGG-Face (a :class:`gender_lib.converters.matconvnet.Network`) as an ``onnx.ModelProto``:
    float32 ``rgb_0_255`` (n, H, W, 3) at the network's input size -> ``fc7`` (n, C7; after relu7,
    L2-normalised) and ``fc8`` (n, C8; before the softmax), as :func:`gender_lib.converters.vggface.reference_forward` computes them.

    MatConvNet's semantics: the file's ``averageImage`` is subtracted; convolutions pad
    (top, bottom, left, right) zeros; max pools pad with -inf (ONNX's MaxPool ignores its
    padding, which is the same); dropouts are the identity; the softmax is dropped.
    """
    from gender_lib.converters.matconvnet import ConversionError, descriptor_indices

    g = _Graph()
    g.reserve("fc7", "fc8")  # the outputs; MatConvNet names its layers fc6, fc7, fc8 too
    height, width, _ = network.image_size
    graph_input, x = _nhwc_input(g, "rgb_0_255", (height, width), g.onnx.TensorProto.FLOAT)
    x = g.op("Sub", [x, g.const("average_image", np.asarray(network.average_image, np.float32).reshape(1, 3, 1, 1))], "subtract_average_image")
    taps = {index: key for key, index in descriptor_indices(network).items()}
    outputs: dict[str, str] = {}
    dims: dict[str, int] = {}
    channels = 3
    for index, layer in enumerate(network.layers):
        if layer.type == "conv":
            kh, kw, _, cout = layer.kernel.shape
            top, bottom, left, right = layer.pad
            w = g.const(f"{layer.name}_w", np.ascontiguousarray(layer.kernel.transpose(3, 2, 0, 1), np.float32))  # HWIO -> OIHW
            b = g.const(f"{layer.name}_b", np.asarray(layer.bias, np.float32).reshape(-1))
            x = g.op("Conv", [x, w, b], layer.name, kernel_shape=[kh, kw], strides=list(layer.stride), pads=[top, left, bottom, right])
            channels = cout
        elif layer.type == "relu":
            x = g.op("Relu", [x], layer.name)
        elif layer.type == "pool":
            if layer.method != "max":
                raise ConversionError(network.source or "<network>", f"pool '{layer.name}' is {layer.method!r}; only max pooling is supported")
            top, bottom, left, right = layer.pad
            x = g.op("MaxPool", [x], layer.name, kernel_shape=list(layer.pool), strides=list(layer.stride), pads=[top, left, bottom, right])
        key = taps.get(index)
        if key == "fc7":
            flat = g.op("Flatten", [x], "fc7_flat", axis=1)
            norm = g.op("ReduceL2", [flat], "fc7_norm", axes=[1], keepdims=1)  # axes an attribute until opset 18
            norm = g.op("Max", [norm, g.const("fc7_epsilon", np.asarray(1e-12, np.float32))], "fc7_norm_clamped")
            outputs["fc7"], dims["fc7"] = g.op("Div", [flat, norm], "fc7_l2", output="fc7"), channels
        elif key == "fc8":
            outputs["fc8"], dims["fc8"] = g.op("Flatten", [x], "fc8_flat", output="fc8", axis=1), channels
    if set(outputs) != {"fc7", "fc8"}:
        raise ConversionError(network.source or "<network>", f"could not locate descriptor layers, found {sorted(outputs)}")
    infos = [g.onnx.helper.make_tensor_value_info(outputs[k], g.onnx.TensorProto.FLOAT, ["n", dims[k]]) for k in ("fc7", "fc8")]
    return g.model([graph_input], infos, "vgg_face", "VGG-Face (Parkhi et al., 2015), from MatConvNet's vgg_face.mat")


# --------------------------------------------------------------------------- running


def default_threads() -> int:
    """The cores this process may use (its CPU affinity: ``taskset`` or a container's CPU set limits it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


#: ONNX Runtime's execution providers by device (:func:`use`).
DEVICES = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
#: What the sessions this process makes next run on, and with how many threads (:func:`use`).
_SESSIONS: dict[str, Any] = {"providers": DEVICES["cpu"], "threads": None}


def providers(device: str) -> list[str]:
    """ONNX Runtime's providers for ``device``: ``cpu``; ``cuda`` (CUDA first, the CPU for what it
    lacks); ``auto``: ``cuda`` where onnxruntime's CUDA provider is installed (``onnxruntime-gpu``),
    else ``cpu``. Raises :class:`~gender_lib.errors.ConfigError` for ``cuda`` where it is not, or another name."""
    import onnxruntime as ort

    from gender_lib.errors import ConfigError

    available = ort.get_available_providers()
    if device == "auto":
        device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if device not in DEVICES:
        raise ConfigError(f"device must be auto, cpu or cuda, not {device!r}")
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise ConfigError(
            f"device cuda: ONNX Runtime's CUDA provider is not installed here (it has {', '.join(available)}); "
            "install onnxruntime-gpu in place of onnxruntime, or use --device cpu (auto picks what is there)"
        )
    return DEVICES[device]


def use(device: str = "cpu", threads: int | None = None) -> list[str]:
    """Make the sessions this process creates from now on run on ``device`` (:func:`providers`) with
    ``threads`` intra-op threads (None: :func:`default_threads`); returns the providers. Ray's actors
    call it once before they load their networks; sessions already made are not changed."""
    _SESSIONS.update(providers=providers(device), threads=threads)
    return _SESSIONS["providers"]


class Runner:
    """A saved graph on ONNX Runtime (the CPU provider unless :func:`use` chose CUDA): ``runner(x)`` -> the first output,
    ``runner(x, name)`` -> the output ``name``, ``runner.outputs(x)`` -> every output by name. ``threads``: the intra-op threads (default:
    :func:`default_threads`). ``spin``: whether those threads spin while they wait for work, as
    ONNX Runtime's default does: that cuts a lone forward pass's latency (2.98 against 3.51 ms for
    one dlib chip), but takes the cores from other threads of the process, such as extraction's
    threads detecting and aligning faces (extraction with detection: 132 faces/s spinning, 142 not;
    benchmarks/descriptor.py, medians of 3 on 2 cores)."""

    def __init__(self, model: str | os.PathLike[str] | bytes, threads: int | None = None, spin: bool = False):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or _SESSIONS["threads"] or default_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: its warnings are about graph rewrites, not the user's input
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.session = ort.InferenceSession(model if isinstance(model, bytes) else os.fspath(model), options, providers=_SESSIONS["providers"])
        self.input = self.session.get_inputs()[0].name
        self.names = [o.name for o in self.session.get_outputs()]
        self.threads = options.intra_op_num_threads

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.session.run(None, {self.input: x})))

    def __call__(self, x: np.ndarray, output: str | None = None) -> np.ndarray:
        """The output named ``output`` (default: the first) of the batch ``x``."""
        return self.session.run([output or self.names[0]], {self.input: x})[0]


__all__ = ["DEVICES", "OPSET", "Runner", "default_threads", "dlib_graph", "providers", "use", "versions", "vggface_graph"]
