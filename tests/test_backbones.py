"""The dlib backbone: its id (equal to the committed heads'), its descriptors (dlib's, to 1e-5, from
the converted ONNX graph), the store it keeps the graph in, and how it prepares faces.

Uses the embedded sample (data/sample). The first backbone converts dlib's network into the test
run's scratch store ($GENDER_LIB_CACHE), shared with every other test that uses the default.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from gender_lib import backbones, cli, config, store
from gender_lib.backbones import DlibBackbone
from gender_lib.converters import dlib_resnet
from gender_lib.errors import ConfigError
from gender_lib.faces import detect
from gender_lib.images import load_rgb

COMMITTED_ID = "dlib-d88820c779b8"


@pytest.fixture(scope="module")
def committed_record() -> dict:
    return json.loads(config.paths().checkpoints.joinpath("dlib_gender_head.json").read_text())["backbone"]


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    """20 real face crops spread over the sample's age/gender folders."""
    files = sorted(config.paths().sample.glob("*/*.jpg"))
    assert len(files) >= 20, "the embedded sample data/sample is missing"
    return [load_rgb(files[int(i)]) for i in np.linspace(0, len(files) - 1, 20).round()]


@pytest.fixture(scope="module")
def dlib() -> DlibBackbone:
    return DlibBackbone()


@pytest.fixture(scope="module")
def chips(dlib: DlibBackbone, crops: list[np.ndarray]) -> np.ndarray:
    return np.stack([dlib.prepare(rgb) for rgb in crops])


def test_the_backbone_has_the_committed_heads_id_and_another_preparation_another(committed_record: dict, dlib: DlibBackbone) -> None:
    assert dlib.id == committed_record["id"] == COMMITTED_ID
    assert backbones.backbone_id("dlib", {**dlib.describe(), "engine": "keras"}) == COMMITTED_ID  # 0.1's records named an engine
    assert len({COMMITTED_ID, DlibBackbone(align="resize").id, DlibBackbone(align="crop").id, DlibBackbone(output="descriptor+mirror").id}) == 4
    with pytest.raises(ConfigError, match="dlib align must be one of"):
        DlibBackbone(align="whole")
    with pytest.raises(ConfigError, match="output must be one of"):
        DlibBackbone(output="level2")


def test_from_description_rebuilds_the_committed_heads_backbone_or_says_why_not(committed_record: dict) -> None:
    rebuilt = backbones.from_description(committed_record)
    assert (rebuilt.id, rebuilt.align, rebuilt.output) == (COMMITTED_ID, "chip", "descriptor")
    assert backbones.from_description(committed_record, output="descriptor+mirror").dim == 256  # the same network's other output
    with pytest.raises(backbones.BackboneError, match="differ in weights_sha256"):
        backbones.from_description({**committed_record, "weights_sha256": "0" * 64, "id": "dlib-000000000000"})
    with pytest.raises(backbones.BackboneError, match="has no 'align' field"):
        backbones.from_description({k: v for k, v in committed_record.items() if k != "align"})
    with pytest.raises(backbones.BackboneError, match="unknown backbone 'resnet'"):
        backbones.from_description({**committed_record, "name": "resnet"})


def test_the_backbone_reads_the_store_it_was_made_in(tmp_path) -> None:
    with store.using(tmp_path):
        made = backbones.from_config(config.DEFAULT)
    assert made.store == tmp_path.resolve() and made.id == COMMITTED_ID
    assert backbones.from_config(config.DEFAULT.replace(cache_dir=str(tmp_path / "x"))).store == tmp_path / "x"
    with pytest.raises(ConfigError, match="'engine' was retired in gender_lib 0.2: inference always runs on ONNX Runtime"):
        config.DEFAULT.replace(engine="keras")


def test_descriptors_agree_with_dlibs_own_code_on_real_chips(dlib: DlibBackbone, chips: np.ndarray) -> None:
    out = dlib.embed(chips)
    reference = dlib_resnet.dlib_descriptors(chips)
    assert out.dtype == np.float32 and out.shape == (20, 128)
    figures = dlib_resnet.compare(out, reference)
    assert figures["max_abs_diff"] <= 1e-5 and figures["min_cosine"] >= 0.99999, figures
    assert np.linalg.norm(reference, axis=1).min() > 0.5  # real descriptors, not zeros
    assert dlib.model_path == dlib_resnet.default_path(config.paths().cache)  # converted into the store it was made in


def test_batch_of_one_and_batches_larger_than_a_forward(dlib: DlibBackbone, chips: np.ndarray, monkeypatch) -> None:
    whole = dlib.embed(chips)
    one = dlib.embed(chips[3:4])
    assert one.shape == (1, 128) and one.dtype == np.float32
    np.testing.assert_allclose(one[0], whole[3], atol=1e-6)
    monkeypatch.setattr(backbones, "MAX_BATCH", 8)  # 20 chips -> passes of 8, 8, 4
    np.testing.assert_allclose(dlib.embed(chips), whole, atol=1e-6)
    assert dlib.embed(chips[:0]).shape == (0, 128)
    with pytest.raises(ValueError, match=r"\(n, 150, 150, 3\)"):
        dlib.embed(chips[0])


def test_mirror_output_is_the_descriptors_of_the_face_and_of_its_mirror_image(dlib: DlibBackbone, chips: np.ndarray) -> None:
    both = DlibBackbone(output="descriptor+mirror").embed(chips[:5])
    assert both.shape == (5, 256)
    np.testing.assert_allclose(both[:, :128], dlib.embed(chips[:5]), atol=1e-6)
    np.testing.assert_allclose(both[:, 128:], dlib.embed(np.ascontiguousarray(chips[:5, :, ::-1])), atol=1e-6)


def test_pooled_output_is_another_record_of_the_same_network_and_vggface_has_none(dlib: DlibBackbone, chips: np.ndarray) -> None:
    from gender_lib import backbones

    pooled = DlibBackbone(output="pooled+mirror")
    x = pooled.embed(chips[:3])
    assert x.shape == (3, 512) == (3, pooled.dim) and pooled.id != dlib.id and backbones.same_network(pooled.describe(), dlib.describe())
    np.testing.assert_allclose(x[:, :256], DlibBackbone(output="pooled").embed(chips[:3]), atol=1e-6)
    with pytest.raises(ConfigError, match="no pooled output"):
        backbones.VGGFaceBackbone(None, {"input": {"size": [224, 224]}, "descriptor_layers": {"fc7": {"dim": 4096}}}, output="pooled")


def test_prepare_face_with_a_box_and_without(dlib: DlibBackbone, crops: list[np.ndarray]) -> None:
    rgb = crops[5]
    found = detect(rgb, min_face=1)
    assert found, "the detector finds the face in this sample crop"
    box = found[0].box
    chip = dlib.prepare_face(rgb)  # no box: detection inside, as extraction does
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
    np.testing.assert_array_equal(dlib.prepare_face(rgb, box), chip)  # the box it would have found
    other = (box[0] - 20, box[1] + 10, box[2] + 25, box[3] + 30)
    assert np.abs(dlib.prepare_face(rgb, other).astype(int) - chip).mean() > 1  # the box given is the box used
    # the same face in a larger photo, with its box there: the same chip (up to a grey level at the borders)
    photo = np.zeros((rgb.shape[0] + 200, rgb.shape[1] + 300, 3), np.uint8)
    photo[120 : 120 + rgb.shape[0], 170 : 170 + rgb.shape[1]] = rgb
    moved = (box[0] + 170, box[1] + 120, box[2] + 170, box[3] + 120)
    assert np.abs(dlib.prepare_face(photo, moved).astype(int) - chip).mean() < 1.0


def test_resize_heads_get_resized_faces_not_chips(crops: list[np.ndarray]) -> None:
    """Regression: a Predictor used to feed 5-point chips to heads trained with dlib_align='resize'."""
    rgb = np.asarray(Image.fromarray(crops[2]).resize((200, 180)), np.uint8)
    box = (40, 30, 140, 130)  # square: the crop is exactly rows 30..129, columns 40..139
    resized = DlibBackbone(align="resize")
    expected = np.asarray(Image.fromarray(rgb[30:130, 40:140]).resize((150, 150), Image.BICUBIC), np.uint8)
    np.testing.assert_array_equal(resized.prepare_face(rgb, box), expected)
    np.testing.assert_array_equal(resized.prepare_face(rgb), np.asarray(Image.fromarray(rgb).resize((150, 150), Image.BICUBIC)))
    assert not np.array_equal(resized.prepare_face(rgb, box), DlibBackbone().prepare_face(rgb, box))
    rebuilt = backbones.from_description(resized.describe())  # a head's record with align=resize rebuilds a resizing backbone
    assert (rebuilt.align, rebuilt.id) == ("resize", resized.id)


def test_align_crop_takes_the_whole_crop_as_the_face_box(dlib: DlibBackbone, crops: list[np.ndarray]) -> None:
    """For pre-cut aligned crops: no detection, the 5-point chip in a box equal to the whole crop; a
    photo's face, given with its box, is chipped in that box by both."""
    from gender_lib.faces import dlib_chip

    crop = DlibBackbone(align="crop")
    assert "box=crop" in crop.describe()["preprocessing"]
    rgb = crops[5]
    np.testing.assert_array_equal(crop.prepare(rgb), dlib_chip(rgb, detect_face=False)[0])
    assert np.abs(crop.prepare(rgb).astype(int) - dlib.prepare(rgb)).mean() > 1  # chip finds a tighter box
    box = detect(rgb)[0].box
    np.testing.assert_array_equal(crop.prepare_face(rgb, box), dlib.prepare_face(rgb, box))


def test_cli_convert_dlib_reuses_the_verified_conversion(dlib: DlibBackbone, chips: np.ndarray, capfd) -> None:
    dlib.embed(chips[:1])  # converted into the default store by now
    assert cli.main(["convert", "--dlib"]) == 0
    out = capfd.readouterr().out
    assert "dlib's face recognition ResNet -> ONNX (5,607,488 weights), verified against dlib.face_recognition_model_v1" in out
    assert "max |diff|" in out and "(tolerance 1e-05)" in out
    assert f"reused (verified when it was converted; --force converts again): {dlib_resnet.default_path(config.paths().cache)}" in out
    assert cli.main(["convert", "--force"]) == 2
    assert "--force goes with --dlib" in capfd.readouterr().err
    assert cli.main(["convert", "--dlib", "--lenient"]) == 2
    assert "--lenient concern the VGG-Face conversion" in capfd.readouterr().err


def test_extraction_prediction_and_the_widget_never_import_tensorflow(tmp_path) -> None:
    """Inference runs on ONNX Runtime: extracting descriptors, predicting photos (detection on) and the
    upload widget's callback import neither TensorFlow nor Keras (and need none of the shared data)."""
    import os
    import subprocess
    import sys

    face = sorted(config.paths().sample.glob("4*_F/nm*.jpg"))[0]
    code = f"""
import sys
from gender_lib import config, stages, widgets
from gender_lib.predict import Predictor
cfg = config.DEFAULT.replace(workdir={str(tmp_path / "work")!r}, sample_size=12)
stages.manifest(cfg, progress=False)
assert stages.extract(cfg, progress=False).n_images == 12
rows = stages.predict(cfg, [{str(face)!r}]).rows
results = widgets.handle_upload([{{"name": "a.jpg", "content": memoryview(open({str(face)!r}, "rb").read())}}], Predictor())
assert rows[0]["label"] in ("F", "M", "uncertain") and results[0].faces, (rows, results)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
assert not loaded, loaded[:5]
print("ok", rows[0]["label"], results[0].faces[0].label)
"""
    (tmp_path / "no_datasets").mkdir()  # and without the shared data, converting into a fresh store: a fresh machine
    env = {**os.environ, "GENDER_LIB_DATASETS": str(tmp_path / "no_datasets"), "GENDER_LIB_CACHE": str(tmp_path / "store")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok ")
