"""What public bug reports of face tools found, replayed as a user would (issue 30): nothing lost,
one clear line. Each kind here failed, or was ugly, before; the expectations are the right answers."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gender_lib import cli, config, stages, store, widgets
from gender_lib import predict as pr
from gender_lib.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def face() -> Path:
    """A sample crop in which the detector finds the face."""
    return pr.example_image()


def _cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gender_lib.cli", *args], capture_output=True, cwd=ROOT, **kwargs)


# --------------------------------------------------------------------------- 1. the CSV


@pytest.mark.parametrize("kind", ["folder", "link", "device", "no parent"])
def test_a_csv_path_that_cannot_take_the_csv_is_refused_before_any_work(kind, toy_head, face, tmp_path, capsys, monkeypatch):
    target = {"folder": tmp_path, "link": tmp_path / "link.csv", "device": Path("/dev/null"), "no parent": tmp_path / "gone" / "out.csv"}[kind]
    if kind == "link":
        (tmp_path / "real.csv").write_text("keep me\n")
        target.symlink_to(tmp_path / "real.csv")
    monkeypatch.setattr(pr.Predictor, "rows", lambda *a, **k: pytest.fail("predicted before the CSV path was checked"))
    assert cli.main(["predict", str(face), "--head", str(toy_head), "--csv", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gender-lib predict: error: ") and str(target) in err
    assert Path("/dev/null").is_char_device()  # never replaced by a regular file
    assert kind != "link" or ((tmp_path / "real.csv").read_text() == "keep me\n" and target.is_symlink())


def test_answers_are_shown_and_kept_when_the_csv_fails_mid_run(toy_head, face, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "album"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(face.read_bytes())
    written = pr.CsvRows.write

    def full_disk(self, rows):
        if self.count >= 2:
            raise pr.PredictionError(f"{self.path}: writing the CSV failed after {self.count} rows (No space left on device)")
        written(self, rows)

    monkeypatch.setattr(pr.CsvRows, "write", full_disk)
    assert cli.main(["predict", str(folder), "--head", str(toy_head), "--csv", str(tmp_path / "out.csv")]) == 2
    out, err = capsys.readouterr()
    assert out.count(": face 1: ") == 3  # every answer was printed, the third although its CSV write failed
    assert "No space left on device" in err and err.count("\n") == 1
    assert len(pd.read_csv(tmp_path / "out.csv")) == 2  # what was written stays


def test_csv_fields_with_control_characters_round_trip_and_the_terminal_shows_them_escaped(toy_head, face, tmp_path):
    folder = tmp_path / "names"
    folder.mkdir()
    names = ["plain.jpg", "with\rreturn.jpg", "with\nnewline.jpg", "red\x1b[31m.jpg", 'quote",comma.jpg']
    for name in names:
        (folder / name).write_bytes(face.read_bytes())
    done = _cli(["predict", str(folder), "--head", str(toy_head), "--csv", str(tmp_path / "out.csv")])
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(Path(p).name for p in pd.read_csv(tmp_path / "out.csv")["path"]) == sorted(names)
    with open(tmp_path / "out.csv", newline="") as handle:
        assert len(list(csv.reader(handle))) == len(names) + 1
    assert b"\x1b" not in done.stdout and b"\r" not in done.stdout and done.stdout.count(b"\n") == len(names) + 1
    assert b"with\\x0dreturn.jpg" in done.stdout and b"red\\x1b[31m.jpg" in done.stdout


# --------------------------------------------------------------------------- 2. interrupts


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_folder_run_keeps_every_answer_it_printed(sig, toy_head, face, tmp_path):
    folder = tmp_path / "album"
    folder.mkdir()
    for i in range(60):
        (folder / f"{i:02d}.jpg").write_bytes(face.read_bytes())
    process = subprocess.Popen(
        [sys.executable, "-m", "gender_lib.cli", "predict", str(folder), "--head", str(toy_head), "--csv", str(tmp_path / "out.csv")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    lines = [process.stdout.readline() for _ in range(3)]  # three answers printed: the run is well under way
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    printed = [line for line in lines + out.splitlines(keepends=True) if b": face 1: " in line]
    assert process.returncode == 130 and b"interrupted (every answer printed above is kept, and in the CSV" in err, err[-2000:]
    assert 3 <= len(printed) < 60
    assert len(printed) <= len(pd.read_csv(tmp_path / "out.csv")) <= len(printed) + 1  # every answer shown is in the CSV


# --------------------------------------------------------------------------- 3. one file never ends a run


def test_no_single_file_can_end_a_run(predictor, face, tmp_path, monkeypatch):
    folder = tmp_path / "album"
    folder.mkdir()
    Image.fromarray(np.full((12, 40000, 3), 128, np.uint8)).save(folder / "a_strip.png")  # detection's downscale made it 0 px high
    (folder / "b_face.jpg").write_bytes(face.read_bytes())
    (folder / "c_boom.jpg").write_bytes(face.read_bytes())
    real = predictor.predict

    def predict(image, *args, **kwargs):
        if str(image).endswith("c_boom.jpg"):
            raise RuntimeError("a bug in a library")
        return real(image, *args, **kwargs)

    monkeypatch.setattr(predictor, "predict", predict)
    rows = stages.predict(config.DEFAULT, [folder], predictor=predictor).rows
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["a_strip.png"]["message"].startswith("no face found")
    assert by_name["b_face.jpg"]["label"] in ("F", "M")
    assert by_name["c_boom.jpg"]["message"] == "could not be predicted (RuntimeError: a bug in a library)" and by_name["c_boom.jpg"]["problem"]
    monkeypatch.setattr(predictor, "predict", lambda *a, **k: predict("c_boom.jpg"))  # the widget hands over decoded pixels
    results = widgets.handle_upload([{"name": "c_boom.jpg", "content": memoryview(face.read_bytes())}], predictor)
    assert results[0].message == "could not be predicted (RuntimeError: a bug in a library)"


# --------------------------------------------------------------------------- 5. a store that cannot be written


def test_a_store_that_cannot_be_written_still_gives_answers_with_one_warning_per_network(toy_head, face, tmp_path, monkeypatch, caplog):
    from gender_lib.converters import verified

    def read_only(path, graph, meta):
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(verified, "save", read_only)
    with store.using(tmp_path / "fresh"), caplog.at_level("WARNING"):
        faces = pr.Predictor(toy_head).predict(face)
    assert len(faces) == 1 and faces[0].label in ("F", "M")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    # one line for each network the store would have kept: the face detector and dlib's descriptor
    assert len(warned) == 2 and all("verified in memory" in w and "Read-only file system" in w for w in warned)
    assert "face detector" in warned[0] and "dlib's converted network" in warned[1]


@pytest.mark.parametrize("variable", ["GENDER_LIB_WORKDIR", "GENDER_LIB_CACHE"])
def test_an_environment_variable_naming_a_file_is_one_line(variable, tmp_path, face):
    (tmp_path / "a_file").write_text("x")
    done = _cli(["predict", str(face)], env={**os.environ, variable: str(tmp_path / "a_file")}, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and f"{variable}={tmp_path / 'a_file'}: is a file, not a folder" in done.stderr


# --------------------------------------------------------------------------- 6. notebook parameters


def test_a_parameter_papermill_injected_that_the_notebook_does_not_know_is_an_error():
    ours = '# Parameters (papermill overrides these)\nhead_path = ""\nmin_confidence = -1.0\n'
    with pytest.raises(ConfigError, match="unknown parameter 'min_confidance' \\(did you mean 'min_confidence'\\?\\)"):
        config.from_namespace({"In": ["", ours, "# Parameters\nmin_confidance = 0.5\n"], "min_confidance": 0.5})
    with pytest.raises(ConfigError, match="this notebook does not declare 'epochs'"):
        config.from_namespace({"In": ["", ours, "# Parameters\nepochs = 3\n"], "epochs": 3})
    assert config.from_namespace({"In": ["", ours, "# Parameters\nmin_confidence = 0.5\n"], "min_confidence": 0.5}).evaluation.min_confidence == 0.5


@pytest.mark.notebooks
def test_papermill_with_a_misspelt_parameter_fails_naming_it(tmp_path):
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError, match="vggface_modell.*did you mean 'vggface_model'"):
        pm.execute_notebook(
            str(ROOT / "notebooks" / "01_convert.ipynb"),
            str(tmp_path / "out.ipynb"),
            parameters={"vggface_modell": "x.onnx"},
            kernel_name="python3",
            progress_bar=False,
            cwd=str(ROOT / "notebooks"),
        )


# --------------------------------------------------------------------------- 7. Ray


def test_a_ray_address_where_nothing_listens_fails_in_seconds_naming_it(tmp_path):
    started = time.perf_counter()
    command = ["extract", "--sample-size", "12", "--workdir", str(tmp_path), "--cache-dir", str(tmp_path / "empty"), "--ray-address", "127.0.0.1:9"]
    done = _cli([*command, "--quiet"], text=True, timeout=120)  # (an empty store: else every face is cached and Ray is not needed)
    assert done.returncode == 2 and "ray_address 127.0.0.1:9: cannot connect" in done.stderr and "Traceback" not in done.stderr
    assert time.perf_counter() - started < 60


# --------------------------------------------------------------------------- the ugly ones


def test_every_image_format_pillow_reads_is_walked_not_skipped(predictor, face, tmp_path):
    folder = tmp_path / "formats"
    folder.mkdir()
    image = Image.open(face).convert("RGB")
    for suffix, fmt in {".mpo": "MPO", ".jfif": "JPEG", ".jpe": "JPEG", ".avif": "AVIF", ".apng": "PNG", ".tga": "TGA"}.items():
        image.save(folder / f"face{suffix}", format=fmt)
    rows = stages.predict(config.DEFAULT, [folder], predictor=predictor).rows
    assert len(rows) == 6 and all(r["label"] in ("F", "M") for r in rows), rows


def test_a_face_on_a_later_page_is_named_as_not_read(predictor, face, tmp_path):
    blank = Image.new("RGB", (300, 300), (120, 120, 120))
    blank.save(tmp_path / "two_pages.tif", save_all=True, append_images=[Image.open(face).convert("RGB")])
    (row,) = stages.predict(config.DEFAULT, [tmp_path / "two_pages.tif"], predictor=predictor).rows
    assert row["message"].startswith("no face found") and row["message"].endswith("only page 1 of 2 was read")


def test_the_same_file_given_twice_is_predicted_once_and_a_url_is_refused_by_name(predictor, face):
    url = "https://example.com/face.jpg"
    result = stages.predict(config.DEFAULT, [face, face, url], predictor=predictor)
    assert [r["face"] for r in result.rows if not r["message"]] == [1]
    assert any(r["path"] == url and r["problem"] and "is a URL" in r["message"] for r in result.rows)
    assert result.summary().startswith("2 images: 1 with a face (1 faces), 0 without a face, 1 could not be read; 1 other file skipped")


def test_standard_input_and_a_closed_pipe_work(toy_head, face):
    piped = _cli(["predict", "-", "--head", str(toy_head)], input=face.read_bytes())
    assert piped.returncode == 0 and b"/dev/stdin: face 1: " in piped.stdout, piped.stderr[-2000:]
    folder_run = subprocess.run(
        f"{sys.executable} -m gender_lib.cli predict {face} {face.parent} --head {toy_head} | head -1", shell=True, capture_output=True, cwd=ROOT
    )
    assert folder_run.stdout.count(b"\n") == 1 and b"Traceback" not in folder_run.stderr and b"BrokenPipe" not in folder_run.stderr


def test_values_of_a_float_tiff_and_integer_arrays_are_read_or_explained(predictor, face, tmp_path):
    grey = np.asarray(Image.open(face).convert("L"), np.float32)  # 0-255 floats, as scientific TIFFs hold
    Image.fromarray(grey, mode="F").save(tmp_path / "float.tif")
    assert len(predictor.predict(tmp_path / "float.tif")) == 1
    with pytest.raises(pr.PredictionError, match="must hold 0-255, got 0 to 256: clip it to 0-255") as caught:
        predictor.predict(np.arange(257, dtype=np.int32).reshape(1, -1).repeat(50, axis=0))
    assert "uint16" not in str(caught.value)


def test_no_detect_refuses_a_photo_and_says_what_it_is_for(predictor):
    with pytest.raises(pr.PredictionError, match="5184x3888 is a photo, not a face crop: --no-detect"):
        predictor.predict(np.zeros((3888, 5184, 3), np.uint8), detect=False)


def test_pillows_warnings_name_the_image(predictor, face, monkeypatch, caplog):
    import warnings

    from gender_lib import images

    real = images.load_rgb

    def warn(data):
        warnings.warn("Corrupt EXIF data.  Expecting to read 2 bytes but only got 0. ", UserWarning, stacklevel=1)
        return real(data)

    monkeypatch.setattr(images, "load_rgb", warn)
    with caplog.at_level("WARNING"):
        pr.read_image(face)
    assert [r.getMessage() for r in caplog.records] == [f"{face}: Corrupt EXIF data.  Expecting to read 2 bytes but only got 0. "]


def test_a_folder_run_does_not_spin_threads_but_a_single_photo_does(toy_head, face, monkeypatch, tmp_path):
    made = []
    real = pr.Predictor.__init__

    def record(self, *args, spin=True, **kwargs):
        made.append(spin)
        real(self, *args, spin=spin, **kwargs)

    monkeypatch.setattr(pr.Predictor, "__init__", record)
    stages.predict(config.DEFAULT, [face], head=toy_head)
    album = tmp_path / "album"
    album.mkdir()
    for i, path in enumerate(sorted(face.parent.parent.glob("4?_F/*.jpg"))[:2]):
        shutil.copy(path, album / f"{i}.jpg")
    stages.predict(config.DEFAULT, [album], head=toy_head)
    assert made == [True, False]


@pytest.mark.notebooks
def test_the_test_run_and_its_notebook_chain_write_nothing_into_the_checkout(chain_work, untracked_before):
    from tests.conftest import _untracked

    assert _untracked() == untracked_before  # no checkpoints/vggface_synthetic.*, data/interim/ or .ipython/ files
