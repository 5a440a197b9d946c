"""dlib's face recognition ResNet: the pure-Python reader, the ONNX graph, and its check against dlib.

One conversion (on 64 real chips); each deliberately wrong rule is one more graph and forward pass
against the same dlib reference (remembered), so the module takes about half a minute.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from gender_lib import config
from gender_lib.converters import dlib_dnn, dlib_resnet, verified
from gender_lib.converters.dlib_dnn import DlibModelError
from gender_lib.errors import GenderLibError

EXPECTED_FILE_PARAMETERS = 5_614_592


def _models() -> dict[str, Path]:
    import face_recognition_models as frm

    return {
        "resnet": Path(frm.face_recognition_model_location()),
        "shape_predictor": Path(frm.pose_predictor_five_point_model_location()),
        "mmod": Path(frm.cnn_face_detector_model_location()),
    }


@pytest.fixture(scope="module")
def network() -> dlib_dnn.Network:
    return dlib_dnn.read_network()


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    """64 real chips: data/sample where present, else the shared combined/aligned folder."""
    p = config.paths()
    try:
        paths = verified.real_face_paths(roots=[p.sample, p.datasets / "combined" / "aligned"])
    except verified.NoRealFacesError as error:
        if os.environ.get("GENDER_LIB_REQUIRE_REAL_DATA") == "1":
            pytest.fail(str(error))
        pytest.skip(str(error))
    return dlib_resnet.face_chips(paths)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, chips: np.ndarray) -> tuple[Path, dict]:
    """The verified conversion, in a store of its own."""
    output = dlib_resnet.default_path(tmp_path_factory.mktemp("store"))
    return output, dlib_resnet.convert(output=output, chips=chips)


# --------------------------------------------------------------------------- (d) structure


def test_layer_list_matches_anet_type(network: dlib_dnn.Network) -> None:
    counts = {kind: network.count(kind) for kind in ("con", "affine", "relu", "max_pool", "avg_pool", "avg_pool_everything", "tag", "skip", "add_prev", "fc")}
    assert counts == {
        "con": 29,
        "affine": 29,
        "relu": 29,
        "max_pool": 1,
        "avg_pool": 4,
        "avg_pool_everything": 1,
        "tag": 18,
        "skip": 4,
        "add_prev": 14,
        "fc": 1,
    }
    assert len(network.layers) == len(dlib_dnn.FACE_RESNET) == 131
    first = network.input
    assert first.size == (150, 150) and first.divisor == 256.0
    assert first.mean_rgb == pytest.approx((122.782, 117.001, 104.298), abs=1e-4)
    assert network.loss["name"] == "loss_metric_2"
    assert network.num_parameters() == EXPECTED_FILE_PARAMETERS
    con = [layer for layer in network.layers if layer.kind == "con"]
    assert (con[0].num_filters, con[0].size, con[0].stride, con[0].padding) == (32, (7, 7), (2, 2), (0, 0))
    assert con[0].filters.shape == (32, 3, 7, 7) and con[0].biases.shape == (32,)
    # dlib's default padding: stride != 1 ? 0 : size/2
    assert all(c.padding == ((0, 0) if c.stride != (1, 1) else (1, 1)) for c in con[1:])
    assert [c.num_filters for c in con if c.stride == (2, 2)] == [32, 64, 128, 256, 256]
    fc = network.layers[-1]
    assert fc.kind == "fc" and fc.weights.shape == (256, 128) and fc.biases is None


def test_add_prev_joins_different_shapes(network: dlib_dnn.Network) -> None:
    """The quirk a port must copy: in the last two down-sampling blocks the strided conv gives a
    smaller map than the 2x2 average pool of the shortcut; add_prev keeps the larger size."""
    shapes = dlib_dnn.output_shapes(network.layers)
    joins = [(shapes[i - 1], shapes[i]) for i, layer in enumerate(network.layers) if layer.kind == "add_prev" and layer.tag == 2]
    assert joins == [((32, 17, 17), (64, 17, 17)), ((64, 8, 8), (128, 8, 8)), ((128, 4, 4), (256, 4, 4)), ((256, 2, 2), (256, 2, 2))]
    assert shapes[-2] == (256, 1, 1) and shapes[-1] == (128, 1, 1)


def test_parameter_count(converted: tuple[Path, dict]) -> None:
    _, meta = converted
    # the affine layers' gamma and beta are folded into the convolutions' weights and biases
    # (every con already has a bias), and the input's means and divisor into the first convolution
    assert meta["num_parameters"] == EXPECTED_FILE_PARAMETERS - 2 * 3_552
    assert meta["file_parameters"] == EXPECTED_FILE_PARAMETERS
    assert meta["layer_counts"]["con"] == 29 and meta["layer_counts"]["affine"] == 29


def test_packed_values() -> None:
    r = dlib_dnn._Reader(bytes([1, 0, 0x81, 5, 2, 0x34, 0x12, 3, 0x62, 0x90, 0xF5, 0x81, 0x11]), Path("x"))
    assert [r.int("a"), r.int("b"), r.int("c")] == [0, -5, 0x1234]
    assert r.float("mean") == pytest.approx(122.782, abs=1e-4)  # 16093282 * 2**-17, as stored in the file
    with pytest.raises(DlibModelError, match="truncated"):
        dlib_dnn._Reader(bytes([2, 1]), Path("x")).int("a")


# --------------------------------------------------------------------------- (a) verified conversion


def test_conversion_reproduces_dlib(converted: tuple[Path, dict]) -> None:
    output, meta = converted
    v = meta["verification"]
    print("\n" + verified.describe(meta))
    assert v["inputs"] == "64 given face chips" and v["tolerance"] == 1e-5
    assert v["errors"]["max |diff|"] <= 1e-5 and v["min_cosine"] >= 0.99999
    assert v["reference"] == "dlib.face_recognition_model_v1.compute_face_descriptor"
    assert meta["descriptor"]["l2_normalised"] is False
    assert meta["source_sha256"] == dlib_dnn.read_network().sha256
    assert output.name == meta["source_sha256"][:12] + ".onnx" and output.parent.name == "dlib_onnx"
    assert json.loads(verified.sidecar_path(output).read_text())["sha256"] == meta["sha256"] == dlib_dnn.sha256_file(output)
    assert "dlib's face recognition ResNet -> ONNX (5,607,488 weights)" in verified.describe(meta) and "max |diff|" in verified.describe(meta)


def test_loaded_graph_matches_dlib(converted: tuple[Path, dict], chips: np.ndarray) -> None:
    output, meta = converted
    runner, loaded_meta = dlib_resnet.load(output)
    assert loaded_meta == meta
    ours = dlib_resnet.embed(runner, chips[:8])  # uint8 straight in: the graph subtracts and divides itself
    ref = dlib_resnet.dlib_descriptors(chips[:8])
    assert ours.shape == (8, 128) and np.abs(ours - ref).max() <= 1e-5


def test_pooled_output_is_what_the_last_projection_maps_to_the_descriptor(converted: tuple[Path, dict], network: dlib_dnn.Network, chips: np.ndarray) -> None:
    runner, _ = dlib_resnet.load(converted[0])
    out = runner.outputs(np.ascontiguousarray(chips[:8]))
    (fc,) = [layer for layer in network.layers if layer.kind == "fc"]
    assert out["pooled"].shape == (8, 256) and (out["pooled"] >= 0).all()  # averaged after a ReLU
    assert np.abs(out["pooled"] @ fc.weights - out["descriptor"]).max() <= 1e-4
    assert np.abs(out["descriptor"] - dlib_resnet.dlib_descriptors(chips[:8])).max() <= 1e-5


def test_ensure_converted_reuses(converted: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    output, _ = converted
    root = output.parent.parent

    def no_convert(*args: object, **kwargs: object) -> None:
        raise AssertionError("ensure_converted converted again")

    monkeypatch.setattr(dlib_resnet, "convert", no_convert)
    assert dlib_resnet.ensure_converted(root) == output
    assert dlib_resnet.cached_conversion(root)["sha256"] == verified.read(output, dlib_resnet.FORMAT, "")["sha256"]
    assert dlib_resnet.cached_conversion(output.parent / "elsewhere") is None


def test_load_rejects_a_missing_mismatched_or_foreign_sidecar(converted: tuple[Path, dict], tmp_path: Path) -> None:
    output, meta = converted
    copy = tmp_path / output.name
    shutil.copy(output, copy)
    with pytest.raises(verified.ConvertedModelError, match=f"{copy.name}: its sidecar .* is missing; `gender-lib convert --dlib --force`"):
        dlib_resnet.load(copy)
    verified.sidecar_path(copy).write_text(json.dumps({**meta, "format": "gender_lib.dlib_onnx/1"}))
    with pytest.raises(verified.ConvertedModelError, match="is not a gender_lib.dlib_onnx/2 sidecar"):
        dlib_resnet.load(copy)
    shutil.copy(verified.sidecar_path(output), verified.sidecar_path(copy))
    with copy.open("ab") as handle:
        handle.write(b"x")
    with pytest.raises(verified.ConvertedModelError, match="does not match its sidecar"):
        dlib_resnet.load(copy)
    with pytest.raises(FileNotFoundError, match="no converted network here"):
        dlib_resnet.load(tmp_path / "absent.onnx")


# --------------------------------------------------------------------------- (b) the check has teeth


@pytest.mark.parametrize(
    "rules",
    [
        {"strided_padding": "same"},  # Keras 'same' on the stride-2 convs (dlib does not pad them)
        {"channel_padding": "front"},  # add_prev's extra channels zero-padded first instead of last
        {"spatial_padding": "start"},  # add_prev's smaller map placed bottom-right instead of top-left
        {"input_divisor": 255.0},  # (x - mean) / 255: cosine still 0.9999994, but |diff| ~5e-4
    ],
    ids=lambda r: next(iter(r)),
)
def test_wrong_rule_fails_and_writes_nothing(rules: dict, chips: np.ndarray, tmp_path: Path) -> None:
    output = tmp_path / "out" / "dlib.onnx"
    with pytest.raises(verified.MismatchError, match="does not reproduce dlib.face_recognition_model_v1.*nothing was saved") as info:
        dlib_resnet.convert(output=output, chips=chips, build_rules=rules)
    assert info.value.figures["errors"]["max |diff|"] > 1e-4
    assert isinstance(info.value, GenderLibError)
    assert not output.exists() and not verified.sidecar_path(output).exists()
    assert not output.parent.exists() or not any(output.parent.iterdir())


def test_folding_the_affine_layers_and_the_input_into_the_convolutions_changes_nothing(network: dlib_dnn.Network, chips: np.ndarray) -> None:
    """The ONNX graph folds each affine layer, and the input's mean and divisor, into a convolution;
    written without either fold it computes the same descriptors (to float32 round-off) and dlib's."""
    from gender_lib.converters import onnx_graph

    outputs = {
        folds: onnx_graph.Runner(onnx_graph.dlib_graph(network, fold_affine=folds[0], fold_input=folds[1]).SerializeToString())(chips[:16])
        for folds in ((True, True), (False, True), (True, False), (False, False))
    }
    for folds, out in outputs.items():
        assert np.abs(out - outputs[(True, True)]).max() <= 1e-6, folds
        assert np.abs(out - dlib_resnet.dlib_descriptors(chips[:16])).max() <= 1e-5, folds
    ops = {folds: [node.op_type for node in onnx_graph.dlib_graph(network, fold_affine=folds[0], fold_input=folds[1]).graph.node] for folds in outputs}
    assert ops[(True, True)].count("Mul") == 0 and ops[(False, False)].count("Mul") == 29  # the affine layers' scales
    assert "Sub" not in ops[(True, True)] and "Sub" in ops[(True, False)]  # the input's mean


def test_too_few_chips(tmp_path: Path) -> None:
    with pytest.raises(verified.NoRealFacesError, match="at least 50"):
        dlib_resnet.convert(output=tmp_path / "m.onnx", chips=np.zeros((3, 150, 150, 3), np.uint8))
    assert not any(tmp_path.iterdir())


def test_no_real_faces(tmp_path: Path) -> None:
    with pytest.raises(verified.NoRealFacesError, match="no real face images"):
        verified.real_face_paths(roots=[tmp_path / "none", tmp_path])


# --------------------------------------------------------------------------- (c) bad files


def _bad_file(kind: str, tmp_path: Path) -> Path:
    models = _models()
    if kind in ("shape_predictor", "mmod"):
        return models[kind]
    path = tmp_path / f"{kind}.dat"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(models["resnet"].read_bytes()[:10_000_000])
    elif kind == "truncated_header":
        path.write_bytes(models["resnet"].read_bytes()[:300])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(100_000))
    elif kind == "trailing":
        path.write_bytes(models["resnet"].read_bytes() + b"\x00")
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty", "is empty"),
        ("truncated", "truncated"),
        ("truncated_header", "truncated"),
        ("random", "not a dlib"),
        ("trailing", "unexpected bytes"),
        ("shape_predictor", "is a shape predictor .5 landmarks., not dlib's face recognition ResNet"),
        ("mmod", "MMOD CNN face detector"),
    ],
)
def test_bad_files(kind: str, message: str, tmp_path: Path) -> None:
    source = _bad_file(kind, tmp_path)
    with pytest.raises(DlibModelError, match=message) as info:
        dlib_dnn.read_network(source)
    assert str(source) in str(info.value)
    assert isinstance(info.value, GenderLibError) and isinstance(info.value, ValueError)
    with pytest.raises(DlibModelError):
        dlib_resnet.convert(source, tmp_path / "out" / "m.onnx", chips=np.zeros((64, 150, 150, 3), np.uint8))
    assert not (tmp_path / "out").exists()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DlibModelError, match="no such file"):
        dlib_dnn.read_network(tmp_path / "absent.dat")
