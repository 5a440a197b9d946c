"""The dlib backbone's two engines (keras: dlib's network converted and verified; dlib: dlib's own
code), its id (shared by both engines, equal to the committed head's), and how it prepares faces.

Uses the embedded sample (data/sample). The keras engine converts dlib's network once into the
session's descriptor cache (the test run's scratch $GENDER_LIB_CACHE, shared with every other
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
    return DlibBackbone(workers=1)


@pytest.fixture(scope="module")
def chips(keras_engine: DlibBackbone, crops: list[np.ndarray]) -> np.ndarray:
    return np.stack([keras_engine.prepare(rgb) for rgb in crops])


# --------------------------------------------------------------------------- ids and records


def test_both_engines_have_the_committed_heads_id(committed_record: dict) -> None:
    keras_engine, dlib_engine = DlibBackbone(workers=1), DlibBackbone(workers=1, engine="dlib")
    assert keras_engine.engine == "keras" and dlib_engine.engine == "dlib"
    assert keras_engine.id == dlib_engine.id == committed_record["id"] == COMMITTED_ID
    # the engine is recorded, but is no part of the id
    assert keras_engine.describe()["engine"] == "keras" and dlib_engine.describe()["engine"] == "dlib"
    assert backbones.backbone_id("dlib", {**keras_engine.describe(), "engine": "anything"}) == COMMITTED_ID
    assert backbones.backbone_id("dlib", {**keras_engine.describe(), "align": "resize"}) != COMMITTED_ID
    assert DlibBackbone(align="resize", engine="dlib").id == DlibBackbone(align="resize").id != COMMITTED_ID


def test_from_description_of_the_committed_head_gives_the_keras_engine(committed_record: dict, tmp_path) -> None:
    rebuilt = backbones.from_description(committed_record, workers=1)
    assert (rebuilt.engine, rebuilt.id, rebuilt.align) == ("keras", COMMITTED_ID, "chip")
    # the record's engine is not followed (the engines are verified equal); the caller chooses
    recorded_dlib = backbones.from_description({**committed_record, "engine": "dlib"}, workers=1, cache_root=tmp_path)
    assert (recorded_dlib.engine, recorded_dlib.id, recorded_dlib.cache_root) == ("keras", COMMITTED_ID, tmp_path.resolve())
    assert backbones.from_description(committed_record, workers=1, engine="dlib").engine == "dlib"
    with pytest.raises(backbones.BackboneError, match="differ in weights_sha256"):
        backbones.from_description({**committed_record, "weights_sha256": "0" * 64, "id": "dlib-000000000000"})


def test_config_chooses_engine_and_cache_root(tmp_path) -> None:
    made = backbones.from_config(config.DEFAULT.replace(cache_dir=str(tmp_path)), workers=1)
    assert (made.engine, made.cache_root, made.id) == ("keras", tmp_path.resolve(), COMMITTED_ID)
    assert backbones.from_config(config.DEFAULT.replace(engine="dlib"), workers=1).engine == "dlib"
    with pytest.raises(ConfigError, match="engine must be one of"):
        config.DEFAULT.replace(engine="tflite")
    with pytest.raises(ConfigError, match="dlib engine must be one of"):
        DlibBackbone(engine="tflite")
    assert cli.build_parser().parse_args(["extract", "--engine", "dlib"]).engine == "dlib"


# --------------------------------------------------------------------------- the engines agree


def test_keras_and_dlib_engines_agree_on_real_chips(keras_engine: DlibBackbone, chips: np.ndarray) -> None:
    dlib_engine = DlibBackbone(workers=1, engine="dlib")
    keras_out, dlib_out = keras_engine.embed(chips), dlib_engine.embed(chips)
    assert keras_out.dtype == dlib_out.dtype == np.float32 and keras_out.shape == dlib_out.shape == (20, 128)
    figures = dlib_keras.compare(keras_out, dlib_out)
    assert figures["max_abs_diff"] <= 1e-4, figures["max_abs_diff"]
    assert figures["min_cosine"] >= 0.99999
    assert np.linalg.norm(dlib_out, axis=1).min() > 0.5  # real descriptors, not zeros
    # the converted model went where the descriptor cache is (the test run's scratch cache)
    assert keras_engine.keras_model_path == dlib_keras.default_path(config.paths().cache)


def test_batch_of_one_and_batches_larger_than_a_forward(keras_engine: DlibBackbone, chips: np.ndarray, monkeypatch) -> None:
    whole = keras_engine.embed(chips)
    one = keras_engine.embed(chips[3:4])
    assert one.shape == (1, 128) and one.dtype == np.float32
    np.testing.assert_allclose(one[0], whole[3], atol=1e-5)
    monkeypatch.setattr(backbones, "KERAS_MAX_BATCH", 8)  # 20 chips -> forwards of 8, 8, 4
    np.testing.assert_allclose(keras_engine.embed(chips), whole, atol=1e-5)
    assert keras_engine.embed(chips[:0]).shape == (0, 128)
    with pytest.raises(ValueError, match=r"\(n, 150, 150, 3\)"):
        keras_engine.embed(chips[0])
    keras_engine.close()  # cheap, and the backbone stays usable
    np.testing.assert_allclose(keras_engine.embed(chips[:2]), whole[:2], atol=1e-5)


# --------------------------------------------------------------------------- preparing faces


def test_prepare_face_with_a_box_and_without(keras_engine: DlibBackbone, crops: list[np.ndarray]) -> None:
    rgb = crops[5]
    boxes = detect_faces(rgb)
    assert boxes, "HOG finds the face in this sample crop"
    box = boxes[0]
    chip = keras_engine.prepare_face(rgb)  # no box: detection inside, as extraction does
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
    np.testing.assert_array_equal(keras_engine.prepare_face(rgb, box), chip)  # the box it would have found
    whole = (0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)
    assert np.abs(keras_engine.prepare_face(rgb, whole).astype(int) - chip).mean() > 1  # the box given is the box used
    # the same face in a larger photo, with its box there: the same chip (up to a grey level at the borders)
    photo = np.zeros((rgb.shape[0] + 200, rgb.shape[1] + 300, 3), np.uint8)
    photo[120 : 120 + rgb.shape[0], 170 : 170 + rgb.shape[1]] = rgb
    moved = (box[0] + 170, box[1] + 120, box[2] + 170, box[3] + 120)
    assert np.abs(keras_engine.prepare_face(photo, moved).astype(int) - chip).mean() < 1.0


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


def test_cli_convert_dlib_reuses_the_verified_conversion(keras_engine: DlibBackbone, chips: np.ndarray, capfd) -> None:
    keras_engine.embed(chips[:1])  # converted into the default cache by now
    assert cli.main(["convert", "--dlib"]) == 0
    out = capfd.readouterr().out
    assert "verified on 64 real chips against dlib" in out and "max |diff|" in out and "min cosine" in out
    assert f"reused (verified when it was converted; --force converts again): {dlib_keras.default_path(config.paths().cache)}" in out
    assert cli.main(["convert", "--force"]) == 2
    assert "--force goes with --dlib" in capfd.readouterr().err
    assert cli.main(["convert", "--dlib", "--lenient"]) == 2
    assert "--lenient concern the VGG-Face conversion" in capfd.readouterr().err
