"""The dlib backbone's three engines (onnx and keras: dlib's network converted and verified; dlib:
dlib's own code), its id (shared by all engines, equal to the committed head's), the default
engine, and how it prepares faces.

Uses the embedded sample (data/sample). The onnx and keras engines convert dlib's network once into
the session's descriptor cache (the test run's scratch $GENDER_LIB_CACHE, shared with every other
test that uses the default); with TensorFlow's import that is about half a minute.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from gender_lib import backbones, cli, config
from gender_lib.backbones import DlibBackbone
from gender_lib.converters import dlib_keras
from gender_lib.dataset import load_rgb
from gender_lib.errors import ConfigError
from gender_lib.faces import detect_faces

COMMITTED_ID = "dlib-3c036b295fa0"


@pytest.fixture(scope="module")
def committed_record() -> dict:
    return json.loads(config.paths().frozen_head.with_suffix(".json").read_text())["backbone"]


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    """20 real face crops spread over the sample's age/gender folders."""
    files = sorted(config.paths().sample.glob("*/*.jpg"))
    assert len(files) >= 20, "the embedded sample data/sample is missing"
    return [load_rgb(files[int(i)]) for i in np.linspace(0, len(files) - 1, 20).round()]


@pytest.fixture(scope="module")
def keras_engine() -> DlibBackbone:
    return DlibBackbone(workers=1, engine="keras")


@pytest.fixture(scope="module")
def onnx_engine() -> DlibBackbone:
    return DlibBackbone(workers=1, engine="onnx")


@pytest.fixture(scope="module")
def chips(onnx_engine: DlibBackbone, crops: list[np.ndarray]) -> np.ndarray:
    return np.stack([onnx_engine.prepare(rgb) for rgb in crops])


# --------------------------------------------------------------------------- ids and records


def test_every_engine_has_the_committed_heads_id(committed_record: dict) -> None:
    made = {engine: DlibBackbone(workers=1, engine=engine) for engine in ("onnx", "keras", "dlib")}
    assert {engine: b.engine for engine, b in made.items()} == {"onnx": "onnx", "keras": "keras", "dlib": "dlib"}
    assert {b.id for b in made.values()} == {committed_record["id"]} == {COMMITTED_ID}
    # the engine is recorded, but is no part of the id
    assert [b.describe()["engine"] for b in made.values()] == ["onnx", "keras", "dlib"]
    assert backbones.backbone_id("dlib", {**made["keras"].describe(), "engine": "anything"}) == COMMITTED_ID
    assert backbones.backbone_id("dlib", {**made["keras"].describe(), "align": "resize"}) != COMMITTED_ID
    assert DlibBackbone(align="resize", engine="dlib").id == DlibBackbone(align="resize").id != COMMITTED_ID


def test_auto_is_the_onnx_engine_where_onnx_runtime_is_installed_else_keras(monkeypatch) -> None:
    from gender_lib.converters import onnx_graph

    assert onnx_graph.available(), "make setup installs onnxruntime"
    assert DlibBackbone(workers=1).engine == backbones.resolve_engine("auto") == "onnx"
    assert backbones.resolve_engine("auto", "level2") == backbones.resolve_engine("onnx", "level2") == "keras"  # only Keras exposes inner levels
    monkeypatch.setattr(onnx_graph, "available", lambda: False)
    assert DlibBackbone(workers=1).engine == "keras"
    assert DlibBackbone(workers=1, engine="onnx").engine == "onnx"  # asked for by name: no fallback (loading it says what to install)
    with pytest.raises(ConfigError, match="level2 output needs engine 'keras'"):
        DlibBackbone(engine="onnx", output="level2")


def test_from_description_of_the_committed_head_gives_the_default_engine(committed_record: dict, tmp_path) -> None:
    rebuilt = backbones.from_description(committed_record, workers=1)
    assert (rebuilt.engine, rebuilt.id, rebuilt.align) == ("onnx", COMMITTED_ID, "chip")
    # the record's engine is not followed (the engines are verified equal); the caller chooses
    recorded_dlib = backbones.from_description({**committed_record, "engine": "dlib"}, workers=1, cache_root=tmp_path)
    assert (recorded_dlib.engine, recorded_dlib.id, recorded_dlib.cache_root) == ("onnx", COMMITTED_ID, tmp_path.resolve())
    assert backbones.from_description(committed_record, workers=1, engine="dlib").engine == "dlib"
    assert backbones.from_description(committed_record, workers=1, engine="keras").engine == "keras"
    with pytest.raises(backbones.BackboneError, match="differ in weights_sha256"):
        backbones.from_description({**committed_record, "weights_sha256": "0" * 64, "id": "dlib-000000000000"})


def test_config_chooses_engine_and_cache_root(tmp_path) -> None:
    assert config.DEFAULT.backbone.engine == "auto"
    made = backbones.from_config(config.DEFAULT.replace(cache_dir=str(tmp_path)), workers=1)
    assert (made.engine, made.cache_root, made.id) == ("onnx", tmp_path.resolve(), COMMITTED_ID)
    for engine in ("dlib", "keras", "onnx"):
        assert backbones.from_config(config.DEFAULT.replace(engine=engine), workers=1).engine == engine
    assert backbones.from_config(config.DEFAULT.replace(engine="ray"), workers=1).engine == "onnx"  # the driver's copy: what actors run
    with pytest.raises(ConfigError, match="engine must be one of"):
        config.DEFAULT.replace(engine="tflite")
    with pytest.raises(ConfigError, match="dlib engine must be one of"):
        DlibBackbone(engine="tflite")
    assert cli.build_parser().parse_args(["extract", "--engine", "onnx"]).engine == "onnx"


# --------------------------------------------------------------------------- the engines agree


@pytest.mark.parametrize("engine", ["onnx", "keras"])
def test_converted_engines_agree_with_dlibs_own_code_on_real_chips(engine: str, request, chips: np.ndarray) -> None:
    converted = request.getfixturevalue(f"{engine}_engine")
    dlib_out = DlibBackbone(workers=1, engine="dlib").embed(chips)
    out = converted.embed(chips)
    assert out.dtype == dlib_out.dtype == np.float32 and out.shape == dlib_out.shape == (20, 128)
    figures = dlib_keras.compare(out, dlib_out)
    assert figures["max_abs_diff"] <= 1e-5, figures["max_abs_diff"]
    assert figures["min_cosine"] >= 0.99999
    assert np.linalg.norm(dlib_out, axis=1).min() > 0.5  # real descriptors, not zeros
    # the converted model went where the descriptor cache is (the test run's scratch cache)
    assert converted.model_path == dlib_keras.default_path(config.paths().cache, engine=engine)


@pytest.mark.parametrize("engine", ["onnx", "keras"])
def test_batch_of_one_and_batches_larger_than_a_forward(engine: str, request, chips: np.ndarray, monkeypatch) -> None:
    converted = request.getfixturevalue(f"{engine}_engine")
    whole = converted.embed(chips)
    one = converted.embed(chips[3:4])
    assert one.shape == (1, 128) and one.dtype == np.float32
    np.testing.assert_allclose(one[0], whole[3], atol=1e-5)
    monkeypatch.setattr(backbones, "KERAS_MAX_BATCH", 8)  # 20 chips -> forwards of 8, 8, 4
    np.testing.assert_allclose(converted.embed(chips), whole, atol=1e-5)
    assert converted.embed(chips[:0]).shape == (0, 128)
    with pytest.raises(ValueError, match=r"\(n, 150, 150, 3\)"):
        converted.embed(chips[0])
    converted.close()  # cheap, and the backbone stays usable
    np.testing.assert_allclose(converted.embed(chips[:2]), whole[:2], atol=1e-5)


def test_mirror_output_is_the_descriptors_of_the_face_and_of_its_mirror_image(onnx_engine: DlibBackbone, chips: np.ndarray) -> None:
    mirrored = DlibBackbone(workers=1, output="descriptor+mirror")
    both = mirrored.embed(chips[:5])
    assert both.shape == (5, 256) and mirrored.id != onnx_engine.id
    np.testing.assert_allclose(both[:, :128], onnx_engine.embed(chips[:5]), atol=1e-5)
    np.testing.assert_allclose(both[:, 128:], onnx_engine.embed(np.ascontiguousarray(chips[:5, :, ::-1])), atol=1e-5)


# --------------------------------------------------------------------------- preparing faces


def test_prepare_face_with_a_box_and_without(onnx_engine: DlibBackbone, crops: list[np.ndarray]) -> None:
    rgb = crops[5]
    boxes = detect_faces(rgb)
    assert boxes, "HOG finds the face in this sample crop"
    box = boxes[0]
    chip = onnx_engine.prepare_face(rgb)  # no box: detection inside, as extraction does
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
    np.testing.assert_array_equal(onnx_engine.prepare_face(rgb, box), chip)  # the box it would have found
    whole = (0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)
    assert np.abs(onnx_engine.prepare_face(rgb, whole).astype(int) - chip).mean() > 1  # the box given is the box used
    # the same face in a larger photo, with its box there: the same chip (up to a grey level at the borders)
    photo = np.zeros((rgb.shape[0] + 200, rgb.shape[1] + 300, 3), np.uint8)
    photo[120 : 120 + rgb.shape[0], 170 : 170 + rgb.shape[1]] = rgb
    moved = (box[0] + 170, box[1] + 120, box[2] + 170, box[3] + 120)
    assert np.abs(onnx_engine.prepare_face(photo, moved).astype(int) - chip).mean() < 1.0


def test_resize_heads_get_resized_faces_not_chips(crops: list[np.ndarray]) -> None:
    """Regression: a Predictor used to feed 5-point chips to heads trained with dlib_align='resize'."""
    rgb = np.asarray(Image.fromarray(crops[2]).resize((200, 180)), np.uint8)
    box = (40, 30, 140, 130)  # square: the crop is exactly rows 30..129, columns 40..139
    resized = DlibBackbone(align="resize", workers=1)
    expected = np.asarray(Image.fromarray(rgb[30:130, 40:140]).resize((150, 150), Image.BICUBIC), np.uint8)
    np.testing.assert_array_equal(resized.prepare_face(rgb, box), expected)
    np.testing.assert_array_equal(resized.prepare_face(rgb), np.asarray(Image.fromarray(rgb).resize((150, 150), Image.BICUBIC)))
    assert not np.array_equal(resized.prepare_face(rgb, box), DlibBackbone(workers=1).prepare_face(rgb, box))
    # a head's record with align=resize rebuilds a resizing backbone
    record = resized.describe()
    rebuilt = backbones.from_description({**record, "engine": "dlib"}, workers=1)
    assert (rebuilt.align, rebuilt.id) == ("resize", record["id"])
    np.testing.assert_array_equal(rebuilt.prepare_face(rgb, box), expected)


# --------------------------------------------------------------------------- gender-lib convert --dlib


def test_cli_convert_dlib_reuses_the_verified_conversions(keras_engine: DlibBackbone, onnx_engine: DlibBackbone, chips: np.ndarray, capfd) -> None:
    keras_engine.embed(chips[:1])  # both converted into the default cache by now
    onnx_engine.embed(chips[:1])
    assert cli.main(["convert", "--dlib"]) == 0
    out = capfd.readouterr().out
    assert "dlib ResNet -> ONNX, verified on 64 real chips against dlib" in out and "dlib ResNet -> Keras, verified on 64" in out
    assert "max |diff|" in out and "(target <= 1e-05)" in out and "min cosine" in out
    for engine in ("onnx", "keras"):
        assert f"reused (verified when it was converted; --force converts again): {dlib_keras.default_path(config.paths().cache, engine=engine)}" in out
    assert cli.main(["convert", "--force"]) == 2
    assert "--force goes with --dlib" in capfd.readouterr().err
    assert cli.main(["convert", "--dlib", "--lenient"]) == 2
    assert "--lenient concern the VGG-Face conversion" in capfd.readouterr().err


# --------------------------------------------------------------------------- inference without TensorFlow


def test_extraction_prediction_and_the_widget_on_the_default_engine_never_import_tensorflow(tmp_path) -> None:
    """The onnx engine is the default wherever ONNX Runtime is installed: extracting descriptors,
    predicting photos (detection on) and the upload widget's callback run without TensorFlow."""
    import subprocess
    import sys

    face = sorted(config.paths().sample.glob("4*_F/nm*.jpg"))[0]
    code = f"""
import sys
from gender_lib import config, stages, widgets
from gender_lib.predict import Predictor
cfg = config.DEFAULT.replace(workdir={str(tmp_path / "work")!r}, sample_size=12)
stages.manifest(cfg, progress=False)
extracted = stages.extract(cfg, progress=False)
assert extracted.backbone["engine"] == "onnx" and extracted.n_images == 12, extracted.summary()
rows = stages.predict(cfg, [{str(face)!r}]).rows
results = widgets.handle_upload([{{"name": "a.jpg", "content": memoryview(open({str(face)!r}, "rb").read())}}], Predictor())
assert rows[0]["label"] in ("F", "M", "uncertain") and results[0].faces, (rows, results)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
assert not loaded, loaded[:5]
print("ok", rows[0]["label"], results[0].faces[0].label)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok ")


def test_align_crop_takes_the_whole_crop_as_the_face_box_and_has_its_own_id(crops: list[np.ndarray]) -> None:
    """For pre-cut aligned crops: no detection, the 5-point chip in a box equal to the whole crop.
    Another preparation, so another id (no cache or head is shared with align chip); a photo's face,
    given with its box, is chipped in that box by both."""
    from gender_lib.faces import dlib_chip

    crop, chip = DlibBackbone(workers=1, align="crop"), DlibBackbone(workers=1)
    assert crop.id != chip.id != DlibBackbone(workers=1, align="resize").id
    assert "box=crop" in crop.describe()["preprocessing"]
    rgb = crops[5]
    whole = (0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)
    np.testing.assert_array_equal(crop.prepare(rgb), dlib_chip(rgb, whole)[0])
    assert np.abs(crop.prepare(rgb).astype(int) - chip.prepare(rgb)).mean() > 1  # chip finds a tighter box
    box = detect_faces(rgb)[0]
    np.testing.assert_array_equal(crop.prepare_face(rgb, box), chip.prepare_face(rgb, box))
    assert backbones.from_description(crop.describe(), workers=1).align == "crop"
    assert config.DEFAULT.replace(dlib_align="crop").backbone.dlib_align == "crop"
    with pytest.raises(ConfigError, match="dlib align must be one of"):
        DlibBackbone(align="whole")
