"""Predictor on photos and crops, bad inputs, the folder CSV, the upload widget's callback, and the CLI."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gender_lib import cli, config, stages, widgets
from gender_lib import predict as pr
from gender_lib.backbones import DlibBackbone
from tests.fakes import toy_model


@pytest.fixture
def face_photo(sample_faces, tmp_path) -> Path:
    """A 'photo': a real face crop pasted into a larger grey scene, off-centre."""
    face = Image.open(sorted(sample_faces.glob("3*_M/nm*.jpg"))[0]).convert("RGB").resize((160, 160))
    scene = Image.new("RGB", (640, 420), (120, 130, 125))
    scene.paste(face, (400, 120))
    path = tmp_path / "photo.jpg"
    scene.save(path, quality=95)
    return path


def test_face_in_a_photo_is_found_boxed_and_labelled(predictor, face_photo):
    faces = predictor.predict(face_photo)
    assert len(faces) == 1
    left, top, right, bottom = faces[0].box
    assert 390 <= left and right <= 570 and 110 <= top and bottom <= 290  # inside the pasted face
    assert faces[0].label == ("F" if faces[0].p_female >= predictor.threshold else "M") and 0 <= faces[0].p_female <= 1


def test_every_input_type_gives_the_same_answer(predictor, face_photo):
    by_path = predictor.predict(face_photo)[0].p_female
    data = face_photo.read_bytes()
    pil = Image.open(io.BytesIO(data))
    array = np.asarray(pil.convert("RGB"))
    for image in (data, pil, array):
        assert predictor.predict(image)[0].p_female == pytest.approx(by_path, abs=1e-6)


def test_grayscale_and_cmyk_photos_are_handled(predictor, face_photo, tmp_path):
    for mode in ("L", "CMYK"):
        path = tmp_path / f"photo_{mode}.jpg"
        Image.open(face_photo).convert(mode).save(path)
        assert len(predictor.predict(path)) == 1


def test_pre_cut_face_can_skip_detection(predictor, sample_faces):
    crop = sorted(sample_faces.glob("3*_F/nm*.jpg"))[0]
    faces = predictor.predict(crop, detect=False)
    assert len(faces) == 1 and faces[0].box == (0, 0, 127, 127) and not faces[0].detected


def test_no_face_gives_an_empty_result(predictor):
    assert predictor.predict(np.full((200, 300, 3), 127, np.uint8)) == []


def _truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()[:600]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"%PDF-1.4 not an image", "not an image"),
        (_truncated_jpeg(), "damaged"),
    ],
)
def test_bad_files_give_a_clear_message(predictor, tmp_path, content, message):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(pr.PredictionError, match=f"bad.jpg: .*{message}"):
        predictor.predict(path)


def test_huge_image_is_refused_with_a_message(predictor, tmp_path, monkeypatch):
    monkeypatch.setattr(pr, "MAX_PIXELS", 10_000)
    path = tmp_path / "big.png"
    Image.new("RGB", (200, 100)).save(path)
    with pytest.raises(pr.PredictionError, match="too large .*200x100"):
        predictor.predict(path)


def test_folder_prediction_writes_one_row_per_face_and_reports_problems(predictor, face_photo, tmp_path):
    folder = tmp_path / "album"
    folder.mkdir()
    (folder / "photo.jpg").write_bytes(face_photo.read_bytes())
    (folder / "broken.jpg").write_bytes(b"nope")
    Image.new("RGB", (50, 50), (0, 0, 0)).save(folder / "blank.png")
    out = stages.predict(config.DEFAULT, [folder], csv=tmp_path / "out.csv", predictor=predictor).csv  # the one folder path: stages.predict
    rows = pd.read_csv(out, keep_default_na=False)
    by_name = {Path(p).name: r for p, r in zip(rows["path"], rows.to_dict("records"))}
    assert by_name["photo.jpg"]["label"] in ("M", "F")
    assert "not an image" in by_name["broken.jpg"]["message"]
    assert by_name["blank.png"]["message"].startswith("no face found") and "--no-detect" in by_name["blank.png"]["message"]


def test_upload_callback_labels_each_file_as_ipywidgets_8_delivers_them(predictor, face_photo):
    import datetime

    box = widgets.upload_and_predict(predictor)
    content = face_photo.read_bytes()
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    box.upload.value = (
        {"name": "photo.jpg", "type": "image/jpeg", "size": len(content), "content": memoryview(content), "last_modified": now},
        {"name": "notes.txt", "type": "text/plain", "size": 5, "content": memoryview(b"hello"), "last_modified": now},
    )
    texts = [child.children[0].value if hasattr(child, "children") else child.value for child in box.output.children]
    assert len(texts) == 2
    assert "photo.jpg: face 1: " in texts[0] and ("male" in texts[0] or "female" in texts[0])
    assert "notes.txt: not an image" in texts[1]
    assert box.output.children[0].children[1].value[:8] == b"\x89PNG\r\n\x1a\n"  # the drawn image


def test_cli_predict_prints_label_and_probability(toy_head, face_photo, capsys, tmp_path):
    assert cli.main(["predict", str(face_photo), "--head", str(toy_head), "--csv", str(tmp_path / "p.csv")]) == 0
    out = capsys.readouterr().out
    assert "photo.jpg: face 1: " in out and "P(female) " in out and "(threshold 0.500)" in out and "confidence" not in out
    assert pd.read_csv(tmp_path / "p.csv")["label"].iloc[0] in ("M", "F")


def test_cli_predict_takes_several_folders_and_fails_when_a_file_fails(toy_head, face_photo, tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    (one / "a.jpg").write_bytes(face_photo.read_bytes())
    (two / "b.jpg").write_bytes(face_photo.read_bytes())
    assert cli.main(["predict", str(one), str(two), "--head", str(toy_head)]) == 0
    captured = capsys.readouterr()
    assert "a.jpg: face 1" in captured.out and "b.jpg: face 1" in captured.out and "no such file" not in captured.err
    (two / "c.jpg").write_bytes(b"nope")
    assert cli.main(["predict", str(one), str(two), "--head", str(toy_head)]) == 1
    captured = capsys.readouterr()
    assert "c.jpg: not an image" in captured.err and "c.jpg" not in captured.out  # problems go to stderr


def test_cli_predict_on_a_folder_without_images_is_an_error(toy_head, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    assert cli.main(["predict", str(tmp_path / "empty"), "--head", str(toy_head)]) == 2
    assert "no images found" in capsys.readouterr().err


def test_no_face_on_a_crop_suggests_no_detect(toy_head, tmp_path, capsys):
    Image.new("RGB", (128, 128), (90, 90, 90)).save(tmp_path / "crop.jpg")
    assert cli.main(["predict", str(tmp_path / "crop.jpg"), "--head", str(toy_head)]) == 0
    assert "no face found" in (err := capsys.readouterr().err) and "--no-detect" in err


def test_one_formatter_renders_an_answer_for_the_cli_the_csv_the_widget_and_the_figures(predictor, face_photo, tmp_path, capsys):
    face = pr.Face((0, 0, 9, 9), "F", 0.4512, threshold=0.4)
    assert face.text() == "female, P(female) 0.451 (threshold 0.400), box 0 0 9 9"  # the label agrees with the printed numbers
    unsure = pr.Face((1, 2, 30, 40), "uncertain", 0.583, 0.468, True, 0.502, "F", "looks under 15", "3-7", 0.749)
    assert unsure.text() == "uncertain (looks under 15; would be female), P(female) 0.583 (threshold 0.468), P(correct) 0.502, age 3-7 (P 0.749), box 1 2 30 40"
    assert (face.caption(), unsure.caption()) == ("F P(F)=0.45", "? P(F)=0.58 3-7")
    found = predictor.predict(face_photo)[0]
    result = stages.predict(config.DEFAULT, [face_photo], predictor=predictor, csv=tmp_path / "p.csv")
    assert result.lines() == [(f"{face_photo}: face 1: {found.text()}", False)]  # the CLI's line is the widget's text
    row = pd.read_csv(tmp_path / "p.csv", keep_default_na=False).iloc[0]
    assert (row["label"], row["p_female"], row["box"]) == (found.label, round(found.p_female, 4), " ".join(map(str, found.box)))


def test_unreadable_file_and_cmyk_pil_image_give_answers_not_tracebacks(predictor, face_photo, tmp_path):
    locked = tmp_path / "locked.jpg"
    locked.mkdir()  # a path that exists but cannot be read as a file
    with pytest.raises(pr.PredictionError, match="locked.jpg: is a folder"):
        predictor.predict(locked)
    assert len(predictor.predict(Image.open(face_photo).convert("CMYK"))) == 1


def test_a_head_trained_on_resized_faces_gets_resized_faces(tmp_path, face_photo):
    """Regression: the predictor used to feed 5-point chips to every dlib head, even one trained with align=resize."""
    resize = DlibBackbone(align="resize")
    head, model = toy_model(resize.describe(), tmp_path / "resize_head.npz", epochs=1)
    predictor = pr.Predictor(head)
    assert predictor.backbone.align == "resize" and predictor.backbone.id == resize.id
    calls = []
    original = predictor.backbone.prepare_face
    predictor.backbone.prepare_face = lambda rgb, box=None: calls.append(box) or original(rgb, box)
    faces = predictor.predict(face_photo)
    rgb = pr.read_image(face_photo)
    expected = model.p_female(resize.embed(np.stack([resize.prepare_face(rgb, calls[0])])))[0]
    assert len(calls) == 1 and tuple(int(round(v)) for v in calls[0]) == faces[0].box  # the detected box, whole pixels in the answer
    assert faces[0].p_female == pytest.approx(expected, abs=1e-6)


def test_cli_errors_are_one_line_not_a_traceback(tmp_path, capsys):
    (tmp_path / "x.jpg").write_bytes(b"x")
    assert cli.main(["predict", str(tmp_path / "x.jpg"), "--head", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gender-lib predict: error:") and "no trained model" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["convert", "manifest", "extract", "train", "evaluate", "predict", "run"])
def test_every_cli_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0 and "usage: gender-lib" in capsys.readouterr().out


def test_cli_help_states_each_default_once(capsys):
    for command in ("extract", "train", "evaluate", "predict"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split()).split("options:")[1]  # argparse wraps lines
        assert "see above" not in text
        for flag in ("--workdir", "--cache-dir", "--head"):
            start = text.find(f"{flag} ")
            if start < 0:
                continue
            entry = text[start : text.find(" --", start + len(flag))]
            assert entry.count("default") == 1, entry


def test_csv_and_text_number_faces_the_same_way_and_the_summary_adds_up(predictor, face_photo, tmp_path):
    from gender_lib import config, stages

    scene = Image.open(face_photo)
    two = Image.new("RGB", (scene.width * 2, scene.height), (120, 130, 125))
    two.paste(scene, (0, 0)), two.paste(scene, (scene.width, 0))
    two.save(tmp_path / "two.jpg", quality=95)
    Image.new("RGB", (128, 128), (90, 90, 90)).save(tmp_path / "blank.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"nope")
    inputs = [tmp_path / "two.jpg", face_photo, tmp_path / "blank.jpg", tmp_path / "broken.jpg"]
    result = stages.predict(config.DEFAULT, inputs, predictor=predictor, csv=tmp_path / "out.csv")
    table = pd.read_csv(tmp_path / "out.csv")
    faces = table[table["message"].isna()]
    assert faces[faces["path"].str.endswith("two.jpg")]["face"].astype(int).tolist() == [1, 2]
    texts = [text for text, problem in result.lines() if not problem]
    assert [t.split(": ")[1] for t in texts] == [f"face {n}" for n in faces["face"].astype(int)]
    assert result.summary() == "4 images: 2 with a face (3 faces), 1 without a face, 1 could not be read; wrote " + str(tmp_path / "out.csv")


def test_the_readme_example_prints_what_the_readme_shows(capsys, monkeypatch):
    """The committed default model on the README's three example faces: the README's text, to the printed digit."""
    import shlex

    root = Path(__file__).resolve().parents[1]
    block = (root / "README.md").read_text().split("$ .venv/bin/gender-lib ", 1)[1].split("```", 1)[0].strip().splitlines()
    monkeypatch.chdir(root)
    assert cli.main(shlex.split(block[0])) == 0
    assert capsys.readouterr().out.strip().splitlines() == block[1:]


def test_cache_dir_moves_everything_the_package_writes_outside_the_work_folder(toy_head, face_photo, tmp_path, capsys):
    """--cache-dir governs the whole store: the converted network, the detector copy and the file hashes."""
    import os
    import subprocess
    import sys

    store, default = tmp_path / "store", tmp_path / "default"
    default.mkdir()
    command = [sys.executable, "-m", "gender_lib.cli", "predict", str(face_photo), "--head", str(toy_head), "--cache-dir", str(store)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "GENDER_LIB_CACHE": str(default)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in store.iterdir()) == ["centerface", "dlib_onnx", "file_hashes.json"] and not any(default.iterdir())
    (graph,) = (store / "dlib_onnx").glob("*.onnx")
    stamp = graph.stat().st_mtime_ns
    assert cli.main(["convert", "--dlib", "--cache-dir", str(store)]) == 0 and graph.stat().st_mtime_ns == stamp  # reused
    assert cli.main(["convert", "--dlib", "--force", "--cache-dir", str(store)]) == 0 and graph.stat().st_mtime_ns != stamp  # converted again
    assert "saved: " in capsys.readouterr().out


def test_train_refuses_a_wrong_suffix_before_training(tmp_path):
    with pytest.raises(stages.StageError, match=r"model\.keras: a model is saved as \.npz"):
        stages.train(config.DEFAULT.replace(workdir=str(tmp_path)), output=tmp_path / "model.keras")
