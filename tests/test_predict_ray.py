"""Predicting a folder into Parquet part files, here and on Ray Data (issue 31): the rows of today's
CSV, each file's exactly once across kills, skipped by content on a rerun, equal on both paths.

The tests without Ray take about 15 s on 2 cores; those marked ``ray`` share one local 2-CPU Ray
instance (start-up about 10 s) and start their prediction actors in each run.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from gender_lib import cli, config, stages
from gender_lib import predict as pr
from gender_lib.converters import onnx_graph
from gender_lib.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# Ray Data's own DataContext sets deprecated fields of its own when it copies itself
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


def _album(sample: Path, folder: Path, n: int) -> Path:
    """``n`` real faces of the sample (every age and gender folder), a copy of the first under another
    name, a file that is no image, a blank image (no face) and a note."""
    faces = sorted(sample.glob("*/*.jpg"))
    folder.mkdir()
    for i in np.linspace(0, len(faces) - 1, n).round().astype(int):
        shutil.copy(faces[i], folder / f"{i:03d}_{faces[i].name}")
    first = sorted(folder.iterdir())[0]
    shutil.copy(first, folder / "zz_copy_of_the_first.jpg")
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    Image.new("RGB", (200, 200), (128, 128, 128)).save(folder / "blank.png")
    (folder / "notes.txt").write_text("not a photo")
    return folder


def _rows(output: Path) -> pd.DataFrame:
    return pd.read_parquet(output, dtype_backend="numpy_nullable").sort_values(["path", "face"], na_position="first").reset_index(drop=True)


def _text(column: pd.Series) -> list[str]:
    """A column as the CSV writes it: '' for a null."""
    return ["" if pd.isna(v) else str(v) for v in column]


def _by_file(frame: pd.DataFrame) -> dict[str, list[int]]:
    """Each path's face numbers (0 for a row with a message), in the order stored."""
    out: dict[str, list[int]] = {}
    for path, face in zip(frame["path"], frame["face"]):
        out.setdefault(path, []).append(0 if pd.isna(face) else int(face))
    return out


@pytest.fixture(scope="module")
def album(tmp_path_factory) -> Path:
    return _album(config.paths().sample, tmp_path_factory.mktemp("album") / "album", 16)


@pytest.fixture(scope="module")
def local_output(album, toy_head, tmp_path_factory) -> dict:
    """The album predicted here into Parquet and a CSV at once."""
    where = tmp_path_factory.mktemp("local")
    result = stages.predict(config.DEFAULT, [album], head=toy_head, output=where / "out.parquet", csv=where / "out.csv")
    return {"result": result, "parquet": where / "out.parquet", "csv": where / "out.csv"}


# --------------------------------------------------------------------------- Parquet, here


def test_importing_the_predict_path_imports_neither_pyarrow_nor_ray():
    code = "import sys, gender_lib.cli, gender_lib.predict, gender_lib.stages, gender_lib.distributed; print(sorted({'pyarrow', 'ray'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_the_parquet_rows_are_the_csvs_with_each_files_content_key(local_output, album):
    parquet, csv = _rows(local_output["parquet"]), pd.read_csv(local_output["csv"], keep_default_na=False)
    assert list(pd.read_parquet(local_output["parquet"]).columns) == pr.PARQUET_COLUMNS == [*pr.CSV_COLUMNS, "key"]
    assert len(parquet) == len(csv) and {Path(p).name for p in parquet["path"]} == {p.name for p in album.iterdir()}
    csv = csv.sort_values(["path", "face"]).reset_index(drop=True)
    for column in pr.CSV_COLUMNS:  # the CSV's '' is Parquet's null
        assert _text(parquet[column]) == csv[column].astype(str).tolist(), column
    by_name = {Path(p).name: r for p, r in zip(parquet["path"], parquet.to_dict("records"))}
    assert by_name["broken.jpg"]["message"] == "not an image (or a format Pillow cannot read)"
    assert by_name["blank.png"]["message"].startswith("no face found")
    assert by_name["notes.txt"]["message"].startswith("skipped: not an image file") and by_name["notes.txt"]["key"].startswith("path:")
    first = sorted(album.glob("0*.jpg"))[0]
    assert by_name["zz_copy_of_the_first.jpg"]["message"] == f"same content as {first}: predicted once, there"
    assert by_name["zz_copy_of_the_first.jpg"]["key"] == by_name[first.name]["key"] == pr.content_key(first)
    assert local_output["result"].rows == [] and local_output["result"].exit_code == 1  # rows not kept; broken.jpg failed
    faces = int(parquet["message"].isna().sum())  # 17: one crop holds a second, partial face
    assert str(local_output["result"]).startswith(f"18 images: 16 with a face ({faces} faces), 1 without a face, 1 could not be read; 2 other files skipped")


def test_a_rerun_skips_every_file_by_content_and_a_changed_file_is_predicted_again(local_output, album, toy_head, tmp_path):
    output = tmp_path / "again.parquet"
    shutil.copytree(local_output["parquet"], output)
    again = stages.predict(config.DEFAULT, [album], head=toy_head, output=output, predictor="never used: nothing to predict")
    assert again.tally.done_before == 20 and again.tally.faces == 0 and "20 files already in" in str(again)
    assert len(list(output.glob("part-*"))) == 1, "nothing new written"
    changed = tmp_path / "album"
    shutil.copytree(album, changed)
    edited = sorted(changed.glob("0*.jpg"))[3]
    Image.open(edited).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(edited)  # same name, other content
    moved = stages.predict(config.DEFAULT, [changed], head=toy_head, output=output)
    # the other files' content is done wherever it lies now (a note is known by its path: the one in the new folder is new)
    assert (moved.tally.faces, moved.tally.others, moved.tally.done_before) == (1, 1, 18)


def test_a_folder_made_with_other_settings_a_file_and_a_folder_in_use_are_refused(local_output, toy_head, album, tmp_path, capsys):
    assert cli.main(["predict", str(album), "--head", str(toy_head), "--output", str(local_output["parquet"]), "--min-face", "40"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds rows made with other settings (min_face differ)" in err and str(local_output["parquet"]) in err
    (tmp_path / "file.parquet").write_text("x")
    assert cli.main(["predict", str(album), "--head", str(toy_head), "--output", str(tmp_path / "file.parquet")]) == 2
    assert "is a file; --output names a folder of Parquet part files" in capsys.readouterr().err
    settings = {"model_sha256": "x"}
    first = pr.ParquetRows(tmp_path / "busy.parquet", settings)
    with pytest.raises(pr.PredictionError, match="another run is writing to it"):
        pr.ParquetRows(tmp_path / "busy.parquet", settings)
    first.close()
    pr.ParquetRows(tmp_path / "busy.parquet", settings).close()  # released


def test_a_half_written_part_is_discarded_and_its_files_redone(toy_head, album, tmp_path):
    settings = {"model_sha256": "x"}
    sink = pr.ParquetRows(tmp_path / "out.parquet", settings, part_files=2)
    sink.write([{**pr._message_row("a.jpg", "no face found", False), "key": "k1"}])
    sink.write([{**pr._message_row("b.jpg", "no face found", False), "key": "k2"}])  # a part: a, b
    sink.write([{**pr._message_row("c.jpg", "no face found", False), "key": "k3"}])  # buffered only: killed here
    sink._lock.close()  # (what the kill does to the lock; the buffered rows are lost)
    (tmp_path / "out.parquet" / ".part-00000000000000000001-1.parquet.x1y2.parquet").write_bytes(b"PAR1 half a part")
    reopened = pr.ParquetRows(tmp_path / "out.parquet", settings)
    assert reopened.done == {"k1", "k2"} and not list((tmp_path / "out.parquet").glob(".part-*"))
    reopened.close()
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 2


def test_killed_three_times_at_random_points_every_file_is_written_once(sample_faces, toy_head, tmp_path):
    """SIGKILL the CLI three times at random points (0-150 ms after its first part file; a part every
    3 files), then let it finish: each file's rows are there exactly once."""
    album = _album(sample_faces, tmp_path / "album", 36)
    output = tmp_path / "out.parquet"
    code = (  # a part every 3 files; each file takes at least 30 ms, so a run of 39 outlasts the kill's random delay
        "import sys, time; import gender_lib.predict as pr; pr.PART_FILES = 3; rows = pr.Predictor.rows; "
        "pr.Predictor.rows = lambda self, *a, **k: (time.sleep(0.03), rows(self, *a, **k))[1]; from gender_lib import cli; "
        f"sys.exit(cli.main(['predict', {str(album)!r}, '--head', {str(toy_head)!r}, '--output', {str(output)!r}, '--quiet']))"
    )
    chance = random.Random(31)
    done_after_kill = []
    for _ in range(3):
        process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        before = len(list(output.glob("part-*.parquet")))
        deadline = time.monotonic() + 60
        while len(list(output.glob("part-*.parquet"))) == before and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(chance.uniform(0.0, 0.15))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL, f"the run ended before it was killed: {process.stderr.read()[-2000:]}"
        done_after_kill.append(len(set(pq.read_table(output, columns=["key"]).column("key").to_pylist())))
    assert 0 < done_after_kill[0] < done_after_kill[-1] < 39, done_after_kill  # of 39 contents: each kill landed mid-run, and runs got further
    finished = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 1 and "already in" in finished.stdout + finished.stderr, finished.stderr[-2000:]  # broken.jpg: 1
    files = _by_file(_rows(output))
    names = {p.name for p in album.iterdir()}
    assert {Path(p).name for p in files} == names, "no file lost"
    assert all(faces in ([0], list(range(1, len(faces) + 1))) for faces in files.values()), f"a file written twice: {files}"


# --------------------------------------------------------------------------- the device setting


def test_the_device_setting_picks_onnx_runtimes_provider_and_cuda_without_it_is_a_clear_error(toy_head, album, monkeypatch, capsys):
    import onnxruntime as ort

    assert onnx_graph.providers("cpu") == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert onnx_graph.providers("auto") == ["CPUExecutionProvider"]
        with pytest.raises(ConfigError, match="device cuda: ONNX Runtime's CUDA provider is not installed here"):
            onnx_graph.providers("cuda")
        assert cli.main(["predict", str(album), "--head", str(toy_head), "--device", "cuda"]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert onnx_graph.providers("auto") == onnx_graph.providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]


# --------------------------------------------------------------------------- on Ray


@pytest.fixture(scope="module")
def local_ray():
    """One local 2-CPU Ray instance for the tests below; predict_ray joins it and leaves it running."""
    ray = pytest.importorskip("ray")
    import logging

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    if started:
        ray.shutdown()


def _actor_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"MapBatches(_Predict)" in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return sorted(pids)


def _assert_same_rows(ray_rows: pd.DataFrame, local_rows: pd.DataFrame) -> None:
    assert len(ray_rows) == len(local_rows)
    for column in pr.PARQUET_COLUMNS:
        if column in ("p_female", "threshold", "p_correct", "age_group_p"):
            ray_values, local_values = (rows[column].to_numpy(float, na_value=np.nan) for rows in (ray_rows, local_rows))
            np.testing.assert_allclose(ray_values, local_values, atol=1e-6, equal_nan=True, err_msg=column)
        else:
            assert _text(ray_rows[column]) == _text(local_rows[column]), column


@pytest.mark.ray
def test_on_ray_the_rows_equal_the_local_ones_and_a_stopped_run_resumes(local_ray, local_output, album, toy_head, tmp_path):
    """The same folder through Ray Data gives the local path's rows (faces, boxes, messages; P(female)
    within 1e-6). A run stopped after 5 files (the driver interrupted) and started again writes the
    rest, each file once."""
    on_ray = config.DEFAULT.replace({"ray_address": "local"})
    output = tmp_path / "ray.parquet"
    seen = []

    def stop_after_five(rows):
        seen.append(rows)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stages.predict(on_ray, [album], head=toy_head, output=output, on_rows=stop_after_five)
    assert len(set(pq.read_table(output, columns=["key"]).column("key").to_pylist())) == 5  # what was shown is kept
    resumed = stages.predict(on_ray, [album], head=toy_head, output=output)
    assert resumed.tally.done_before == 5 + 1  # the 5 files, and the copy of the first whose content is done
    _assert_same_rows(_rows(output), _rows(local_output["parquet"]))
    assert local_ray.is_initialized(), "predict must not shut down an instance it did not start"


@pytest.mark.ray
def test_on_ray_a_killed_actor_is_survived_and_every_file_answered_once(local_ray, local_output, album, toy_head, tmp_path):
    from gender_lib import distributed

    paths = sorted(p for p in album.glob("*.jpg"))
    items = [(p, pr.content_key(p)) for p in paths if not p.name.startswith("zz_")]
    got: dict[str, list] = {}
    killed = []

    def on_file(key, rows):
        if not killed:
            pids = _actor_pids()
            assert pids, "no prediction actor found"
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
        assert key not in got, "a file passed on twice"
        got[key] = rows

    count = distributed.predict_ray(items, on_file, pr.Predictor, head_path=toy_head, batch_size=2, progress=False)
    assert killed and count == len(items) and set(got) == {k for _, k in items}
    local = _rows(local_output["parquet"])
    for path, key in items:
        expected = local[local["path"] == str(path)]
        assert [r["box"] for r in got[key]] == _text(expected["box"])
        assert np.allclose([r["p_female"] or np.nan for r in got[key]], expected["p_female"].to_numpy(float, na_value=np.nan), atol=1e-6, equal_nan=True)
