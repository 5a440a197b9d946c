"""The MatConvNet -> ONNX converter: both layouts, equivalence with a NumPy reference, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gender_lib.converters import matconvnet as mc
from gender_lib.converters import onnx_graph, verified
from gender_lib.converters import vggface as vf
from tests.mat_files import write_mat, write_synthetic_mat


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(7).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)


@pytest.fixture(scope="module", params=["2015", "tidy"])
def mat_file(request, tmp_path_factory) -> Path:
    return write_synthetic_mat(tmp_path_factory.mktemp(request.param) / "vgg_face.mat", layout=request.param, seed=3)


def test_reader_understands_both_published_layouts(mat_file: Path):
    network = mc.read_network(mat_file)
    assert network.layout in ("2015", "tidy")
    assert len(network.convs) == 16
    assert network.image_size == (224, 224, 3)
    np.testing.assert_allclose(network.average_image, mc.VGG_FACE_MEAN_RGB, rtol=1e-6)
    assert network.interpolation == "bicubic" and network.keep_aspect
    assert len(network.class_names) == 2622 and network.class_names[0] == "Synthetic_Person_0000"
    assert [layer.pad for layer in network.convs[:13]] == [(1, 1, 1, 1)] * 13
    assert network.convs[13].kernel.shape[:2] == (7, 7) and network.convs[13].pad == (0, 0, 0, 0)
    assert all(layer.stride == (2, 2) and layer.pool == (2, 2) for layer in network.layers if layer.type == "pool")
    assert network.sha256 and len(network.sha256) == 64


def test_reference_softmax_is_a_distribution(mat_file: Path, images):
    result = vf.reference_forward(mc.read_network(mat_file), images[:1])
    np.testing.assert_allclose(result["prob"].sum(axis=1), 1.0)
    assert result["prob"].argmax() == result["fc8"].argmax()


def _broken(network: mc.Network, how: str) -> mc.Network:
    import copy

    broken = copy.deepcopy(network)
    if how == "padding":  # same output size, but the image is shifted inside the padding
        broken.convs[4].pad = (0, 2, 1, 1)
    elif how == "relu_on_fc8":  # the original work's bug
        broken.layers.insert(len(broken.layers) - 1, mc.Layer(name="relu8", type="relu"))
    elif how == "no_mean_subtraction":
        broken.average_image = np.zeros(3, np.float32)
    return broken


@pytest.mark.parametrize(
    "how, damaged",
    [("padding", {"fc7", "fc8"}), ("relu_on_fc8", {"fc8"}), ("no_mean_subtraction", {"fc7", "fc8"})],
)
def test_equivalence_check_catches_a_wrong_pad_activation_or_mean(mat_file: Path, images, how, damaged):
    network = mc.read_network(mat_file, strict=False)
    runner = onnx_graph.Runner(onnx_graph.vggface_graph(_broken(network, how)).SerializeToString())
    with pytest.raises(verified.MismatchError, match="ONNX graph of VGG-Face does not reproduce") as caught:
        vf.check(runner, network, images)
    for key in damaged:
        assert caught.value.figures["errors"][key] > 100 * vf.EQUIVALENCE_TOLERANCE


def test_onnx_graph_matches_numpy_reference_on_every_descriptor(mat_file: Path, images):
    network = mc.read_network(mat_file)
    runner = onnx_graph.Runner(onnx_graph.vggface_graph(network).SerializeToString())
    errors = vf.check(runner, network, images)["errors"]
    # Tolerance: max|graph - reference| / max|reference| <= 1e-4 (float32 round-off is ~1e-6).
    assert set(errors) == {"fc7", "fc8"} and max(errors.values()) <= vf.EQUIVALENCE_TOLERANCE
    out = runner.outputs(images)
    assert out["fc7"].shape == (2, 16) and out["fc8"].shape == (2, 2622) and out["fc7"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out["fc7"], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(runner(images, "fc8"), out["fc8"])


def test_convert_writes_a_graph_and_sidecar_that_load_back(mat_file: Path, tmp_path: Path, images):
    out = tmp_path / "checkpoints" / "vggface.onnx"
    meta = vf.convert(mat_file, out)
    runner, loaded = vf.load(out)
    assert loaded == json.loads(json.dumps(meta)) and sorted(p.name for p in out.parent.iterdir()) == ["vggface.json", "vggface.onnx"]
    assert loaded["source_sha256"] == mc.sha256_file(mat_file) and loaded["sha256"] == mc.sha256_file(out)
    assert loaded["normalization"]["average_image_rgb"] == [129.1863, 104.7624, 93.594]
    network = mc.read_network(mat_file)
    assert loaded["descriptor_layers"]["fc7"]["dim"] == 16 and loaded["num_parameters"] == sum(c.kernel.size + c.bias.size for c in network.convs)
    assert max(loaded["verification"]["errors"].values()) <= vf.EQUIVALENCE_TOLERANCE  # checked before it was saved
    assert max(vf.check(runner, network, images)["errors"].values()) <= vf.EQUIVALENCE_TOLERANCE
    text = vf.describe(meta)
    assert "VGG-Face -> ONNX (" in text and "verified against a float64 NumPy forward pass of the layer list on 2 random images" in text


def test_a_changed_graph_or_sidecar_is_refused_naming_the_file(mat_file: Path, tmp_path: Path):
    out = tmp_path / "vggface.onnx"
    meta = vf.convert(mat_file, out, check_images=0)
    with out.open("ab") as handle:
        handle.write(b"x")
    with pytest.raises(verified.ConvertedModelError, match=r"vggface\.onnx: does not match its sidecar vggface\.json.*convert vgg_face\.mat again"):
        vf.load(out)
    (tmp_path / "vggface.json").write_text(json.dumps({**meta, "format": "gender_lib.vggface/1"}))  # 0.1's sidecar, with a .keras beside it
    with pytest.raises(verified.ConvertedModelError, match="is not a gender_lib.vggface_onnx/1 sidecar"):
        vf.load(out)
    (tmp_path / "vggface.json").write_text("{not json")
    with pytest.raises(verified.ConvertedModelError, match="cannot be read"):
        vf.load(out)


@pytest.mark.slow
def test_full_size_architecture_has_vgg_face_parameter_count_and_shapes():
    network = mc.synthetic_network(mc.VGG_FACE_CONV_WIDTHS, mc.VGG_FACE_FC_WIDTHS, random_weights=False, with_dropout=True)
    mc.validate(network)
    assert sum(c.kernel.size + c.bias.size for c in network.convs) == 145_002_878
    shapes = mc.output_shapes(network)
    names = [layer.name for layer in network.layers]
    assert shapes[names.index("pool5")] == (7, 7, 512) and shapes[names.index("fc7")][-1] == 4096 and shapes[names.index("fc8")][-1] == 2622


# --------------------------------------------------------------------------- bad input


def _convert_fails(source: Path, tmp_path: Path, match: str) -> None:
    out = tmp_path / "out" / "vggface.onnx"
    with pytest.raises(mc.ConversionError, match=match) as caught:
        vf.convert(source, out)
    assert str(source) in str(caught.value)
    assert not out.parent.exists() or not any(out.parent.iterdir()), "nothing may be written on failure"


def test_missing_file_says_where_to_get_it(tmp_path):
    _convert_fails(tmp_path / "vgg_face.mat", tmp_path, "not found.*VGG-Face page")


def test_folder_instead_of_file_is_rejected(tmp_path):
    folder = tmp_path / "vgg_face.mat"
    folder.mkdir()
    _convert_fails(folder, tmp_path, "is a folder")


def test_empty_file_is_rejected(tmp_path):
    empty = tmp_path / "vgg_face.mat"
    empty.write_bytes(b"")
    _convert_fails(empty, tmp_path, "empty")


def test_truncated_file_is_rejected(mat_file, tmp_path):
    data = mat_file.read_bytes()
    cut = tmp_path / "vgg_face.mat"
    cut.write_bytes(data[: len(data) // 2])
    _convert_fails(cut, tmp_path, "truncated or corrupt")


def test_corrupt_file_is_rejected(mat_file, tmp_path):
    data = bytearray(mat_file.read_bytes())
    data[128:4096] = np.random.default_rng(0).integers(0, 256, 4096 - 128, dtype=np.uint8).tobytes()
    bad = tmp_path / "vgg_face.mat"
    bad.write_bytes(bytes(data))
    _convert_fails(bad, tmp_path, "truncated or corrupt")


def test_non_mat_file_is_rejected(tmp_path):
    bad = tmp_path / "vgg_face.mat"
    bad.write_text("<html>404 Not Found</html>" * 10)
    _convert_fails(bad, tmp_path, "not a MATLAB .mat file")


def test_matlab_v73_hdf5_file_is_rejected(tmp_path):
    import h5py

    path = tmp_path / "vgg_face.mat"
    with h5py.File(path, "w", userblock_size=512) as handle:  # how MATLAB's -v7.3 files are laid out
        handle["net"] = np.zeros(3)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with path.open("r+b") as handle:
        handle.write(header.ljust(116) + b"\x00" * 8 + b"\x00\x02IM")
    _convert_fails(path, tmp_path, "v7.3 \\(HDF5\\)")


def test_mat_of_another_kind_is_rejected(tmp_path):
    import scipy.io

    other = tmp_path / "vgg_face.mat"
    scipy.io.savemat(other, {"weights": np.zeros((3, 3))})
    _convert_fails(other, tmp_path, "not a MatConvNet network.*found \\['weights'\\]")


def test_other_network_architecture_is_rejected(tmp_path):
    network = mc.synthetic_network()
    network.layers = network.layers[5:]  # drop the first block: 14 convs, 4 pools
    network.convs[0].kernel = network.convs[0].kernel[:, :, :3]
    network.image_size = (112, 112, 3)
    path = write_mat(network, tmp_path / "vgg_face.mat")
    _convert_fails(path, tmp_path, "is not the VGG-Face network")


def test_missing_field_is_rejected(tmp_path):
    import scipy.io

    path = write_synthetic_mat(tmp_path / "vgg_face.mat")
    contents = scipy.io.loadmat(path)
    net = contents["net"][0, 0]
    scipy.io.savemat(path, {"net": {"layers": net["layers"], "classes": net["classes"]}})
    _convert_fails(path, tmp_path, "has no field 'normalization'")


def test_wrong_kernel_shape_is_rejected(tmp_path):
    network = mc.synthetic_network()
    network.convs[2].kernel = network.convs[2].kernel[:, :, :2, :]  # expects 2 inputs, receives 4
    path = write_mat(network, tmp_path / "vgg_face.mat")
    _convert_fails(path, tmp_path, "conv2_1.*expects 2 input channels but receives 4")


def test_bias_of_wrong_length_is_rejected(tmp_path):
    network = mc.synthetic_network()
    network.convs[0].bias = network.convs[0].bias[:3]
    path = write_mat(network, tmp_path / "vgg_face.mat")
    _convert_fails(path, tmp_path, "conv1_1.*bias has 3 values")


def test_class_names_must_match_fc8(tmp_path):
    network = mc.synthetic_network()
    network.class_names = network.class_names[:10]
    path = write_mat(network, tmp_path / "vgg_face.mat")
    _convert_fails(path, tmp_path, "10 class names but fc8 outputs 2622")


def test_non_finite_weights_are_rejected_naming_the_layer(tmp_path):
    network = mc.synthetic_network()
    conv3_2 = network.convs[5]
    assert conv3_2.name == "conv3_2"
    conv3_2.kernel.reshape(-1)[:10] = np.nan
    conv3_2.bias[:2] = np.inf
    path = write_mat(network, tmp_path / "vgg_face.mat")
    _convert_fails(path, tmp_path, "vgg_face.mat: layer conv3_2 has 12 NaN/inf values in its weights")


def test_imagenet_vgg16_is_rejected_unless_lenient(tmp_path):
    path = write_synthetic_mat(tmp_path / "imagenet-vgg-verydeep-16.mat", num_classes=1000)
    with pytest.raises(mc.ConversionError, match="fc8 outputs 1000 classes: this is an ImageNet classifier.*not VGG-Face.*strict=False"):
        vf.convert(path, tmp_path / "out" / "vggface.onnx")
    assert not (tmp_path / "out").exists()
    meta = vf.convert(path, tmp_path / "lenient" / "vggface.onnx", strict=False, check_images=0)
    assert meta["num_classes"] == 1000 and meta["descriptor_layers"]["fc8"]["dim"] == 1000


def test_conversion_errors_are_gender_lib_errors(tmp_path):
    from gender_lib.errors import GenderLibError

    with pytest.raises(GenderLibError):
        vf.convert(tmp_path / "missing.mat", tmp_path / "vggface.onnx")
    with pytest.raises(GenderLibError, match="no converted network here"):
        vf.load(tmp_path / "vggface.onnx")
    with pytest.raises(GenderLibError, match="saved as .onnx"):
        vf.convert(tmp_path / "missing.mat", tmp_path / "vggface.keras")


def test_failed_sidecar_write_leaves_the_previous_model_and_sidecar_intact(tmp_path, monkeypatch):
    out = tmp_path / "checkpoints" / "vggface.onnx"
    first = write_synthetic_mat(tmp_path / "first.mat", seed=3)
    vf.convert(first, out, check_images=0)
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    assert sorted(before) == ["vggface.json", "vggface.onnx"]

    second = write_synthetic_mat(tmp_path / "second.mat", seed=4, fc_widths=(12, 12, mc.VGG_FACE_NUM_CLASSES))

    def disk_full(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(verified, "write_json", disk_full)
    with pytest.raises(OSError, match="No space left"):
        vf.convert(second, out, check_images=0)
    monkeypatch.undo()

    after = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    assert after == before, "the old pair must be untouched, with no temp files left behind"
    _, meta = vf.load(out)
    assert meta["source_sha256"] == mc.sha256_file(first) and meta["descriptor_layers"]["fc7"]["dim"] == 16


def test_demo_conversion_writes_to_the_given_output_or_the_store_never_to_the_checkout(tmp_path, monkeypatch):
    from gender_lib import store

    root = tmp_path / "root"
    monkeypatch.setenv("GENDER_LIB_ROOT", str(root))
    monkeypatch.delenv("GENDER_LIB_VGG_FACE_MAT", raising=False)
    out = tmp_path / "elsewhere" / "demo.onnx"
    meta = vf.convert_or_demo(None, out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["demo.json", "demo.onnx"]
    with store.using(tmp_path / "store"):
        vf.convert_or_demo()
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["vggface_synthetic.json", "vggface_synthetic.onnx"]
    assert not root.exists()  # nothing in the checkout: not checkpoints/, not data/interim/
    _, saved = vf.load(out)
    assert saved["synthetic"] is True and "notice" not in saved
    assert saved["source_sha256"] == saved["sha256"]  # a network built in memory is named by its graph's hash
    assert saved["source_sha256"] == meta["source_sha256"]
    text = vf.describe(meta)
    assert text.startswith("The real VGG-Face weights are not at data/external/vgg_face.mat.\n")
    assert "layout: memory (synthetic)" in text
