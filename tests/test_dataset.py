"""Dataset readers, cleaning, splits and the manifest, on synthetic trees and the real shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gender_lib import dataset as ds


def _jpeg(path: Path, seed: int = 0, size=(24, 24), mode="RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    image.save(path, **save)
    return path


@pytest.fixture
def combined(tmp_path: Path) -> Path:
    root = tmp_path / "combined"
    names = {
        "25_M": ["nm0000001_rm111_1980-1-2_2005.jpg", "nm0000001_rm112_1980-1-2_2006.jpg", "111_1970-05-06_2000.jpg"],
        "25_F": ["nm0000002_rm113_1981-1-2_2006.jpg", "landmark_aligned_face.42.123_ab_o.jpg", "222_1971-05-06_2001.jpg"],
        "03_F": ["landmark_aligned_face.42.124_ab_o.jpg", "landmark_aligned_face.43.125_ab_o.jpg"],
        "60_M": ["nm0000003_rm114_1940-1-2_2000.jpg", "333_1940-05-06_2000.jpg"],
    }
    seed = 0
    for folder, files in names.items():
        for name in files:
            _jpeg(root / "aligned" / folder / name, seed=seed)
            seed += 1
    return root


def test_combined_layout_reads_person_source_age_and_gender(combined: Path):
    assert ds.detect_layout(combined) == "combined"
    table, problems, layout = ds.read_records(combined)
    assert layout == "combined" and problems == [] and len(table) == 10
    row = table[table["path"].map(lambda p: p.name) == "nm0000001_rm111_1980-1-2_2005.jpg"].iloc[0]
    assert (row.gender, row.age, row.subject, row.source) == ("M", "25", "imdb:nm0000001", "imdb")
    wiki = table[table["source"] == "wiki"]["subject"].tolist()
    assert sorted(wiki) == ["wiki:111", "wiki:222", "wiki:333"]
    assert set(table[table["source"] == "adience"]["subject"]) == {"adience:42", "adience:43"}


def test_combined_reports_non_images_and_unparsed_names(combined: Path):
    (combined / "aligned" / "25_M" / "notes.txt").write_text("hello")
    _jpeg(combined / "aligned" / "25_M" / "holiday photo.jpg")
    table, problems, _ = ds.read_records(combined)
    reasons = {Path(p["path"]).name: p["reason"] for p in problems}
    assert reasons == {"notes.txt": "not an image", "holiday photo.jpg": "unparsed name (kept)"}
    assert "file:holiday photo" in set(table["subject"])


def _fold_file(path: Path, rows: list[str], cut_last: bool = False) -> None:
    header = "user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\tfiducial_yaw_angle\tfiducial_score"
    text = "\r\n".join([header] + rows) + "\r\n"
    if cut_last:
        text = text[: len(text) - 12]
    path.write_text(text)


@pytest.fixture
def adience(tmp_path: Path) -> Path:
    root = tmp_path / "adience"
    rows = []
    specs = [("u1", "a.jpg", 1, "(25, 32)", "f"), ("u1", "b.jpg", 1, "35", "f"), ("u1", "c.jpg", 2, "(38, 48)", "m"),
             ("u2", "d.jpg", 3, "None", "m"), ("u2", "e.jpg", 4, "(0, 2)", "u"), ("u2", "f.jpg", 5, "(8, 12)", ""),
             ("u2", "g.jpg", 6, "(4, 6)", "m")]
    for i, (user, image, face, age, gender) in enumerate(specs):
        rows.append(f"{user}\t{image}\t{face}\t{age}\t{gender}\t0\t0\t10\t10\t0\t0\t50")
        if image != "g.jpg":  # g.jpg is listed but missing on disk
            _jpeg(root / "aligned" / user / f"landmark_aligned_face.{face}.{image}", seed=i)
    _jpeg(root / "aligned" / "u3" / "landmark_aligned_face.9.z.jpg", seed=99)  # on disk, in no fold
    _fold_file(root / "fold_0_data.txt", rows[:4])
    _fold_file(root / "fold_1_data.txt", rows[4:] + ["u3\tz.jpg\t9\t(25, 32)\tf\t0\t0\t10\t10\t0\t0\t50"], cut_last=True)
    return root


def test_adience_layout_parses_folds_ages_and_unknown_genders(adience: Path):
    assert ds.detect_layout(adience) == "adience"
    table, problems, _ = ds.read_records(adience)
    by_name = {p.name: r for p, r in zip(table["path"], table.to_dict("records"))}
    assert sorted(by_name) == ["landmark_aligned_face.1.a.jpg", "landmark_aligned_face.1.b.jpg",
                               "landmark_aligned_face.2.c.jpg", "landmark_aligned_face.3.d.jpg"]
    assert by_name["landmark_aligned_face.1.a.jpg"]["age"] == "25-32"
    assert by_name["landmark_aligned_face.1.b.jpg"]["age"] == "35"
    assert by_name["landmark_aligned_face.2.c.jpg"]["age"] == "38-48"
    assert by_name["landmark_aligned_face.3.d.jpg"]["age"] == ""
    assert by_name["landmark_aligned_face.1.a.jpg"]["subject"] == "adience:u1:1"
    reasons = sorted(p["reason"] for p in problems)
    assert reasons == ["gender unknown", "gender unknown", "image missing", "no metadata row", "truncated metadata row"]


def test_real_adience_fold_files_parse_and_report_truncation(real_folds: Path):
    meta, problems = ds.read_adience_folds(sorted(real_folds.glob("fold_*_data.txt")))
    counts = meta.groupby("fold").size()
    assert counts[0] == 4484 and counts[1] == 3730  # the complete folds (shared README)
    truncated = [p for p in problems if p["reason"] == "truncated metadata row"]
    assert {Path(p["path"].rsplit(":", 1)[0]).name for p in truncated} >= {"fold_2_data.txt"}
    assert set(meta["gender"]) <= {"m", "f", "u", ""}
    assert meta["age"].str.fullmatch(r"(\d+(-\d+)?)?").all()
    assert meta.groupby("face_id")["user_id"].nunique().max() == 1  # a face id names one person


def test_utkface_layout_reads_labels_and_reports_malformed_names(tmp_path: Path):
    root = tmp_path / "utk"
    _jpeg(root / "26_0_1_20170116174525125.jpg", 1)
    _jpeg(root / "3_1_2_20161219140530307.jpg.chip.jpg", 2)
    _jpeg(root / "61_1_20170109142408075.jpg", 3)  # race missing: malformed
    _jpeg(root / "39_1_20170116174525125.jpg", 4)
    _jpeg(root / "40_0_0_20170116174525126.jpg", 5)
    assert ds.detect_layout(root) == "utkface"
    table, problems, _ = ds.read_records(root)
    genders = dict(zip(table["age"], table["gender"]))
    assert genders == {"26": "M", "3": "F", "40": "M"}
    assert sorted(Path(p["path"]).name for p in problems) == ["39_1_20170116174525125.jpg", "61_1_20170109142408075.jpg"]
    assert {p["reason"] for p in problems} == {"malformed UTKFace name"}


@pytest.mark.parametrize("male, female", [("male", "female"), ("Man", "Woman"), ("M", "F"), ("MEN", "women")])
def test_class_folders_in_any_case_are_read(tmp_path: Path, male: str, female: str):
    root = tmp_path / "faces"
    _jpeg(root / male / "a.jpg", 1)
    _jpeg(root / female / "alice" / "1.jpg", 2)
    _jpeg(root / female / "alice" / "2.png", 3, format="PNG")
    assert ds.detect_layout(root) == "folders"
    table, problems, _ = ds.read_records(root)
    assert problems == []
    assert sorted(table["gender"]) == ["F", "F", "M"]
    assert table[table["gender"] == "F"]["subject"].nunique() == 1  # the person folder groups them


def test_csv_labels_are_read_with_problems_reported(tmp_path: Path):
    _jpeg(tmp_path / "img" / "a.jpg", 1)
    _jpeg(tmp_path / "img" / "b.jpg", 2)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,gender,age,subject\nimg/a.jpg,Female,30,p1\nimg/b.jpg,m,,\nimg/c.jpg,f,,\nimg/a.jpg,x,,\n")
    assert ds.detect_layout(labels) == "csv"
    table, problems, _ = ds.read_records(labels)
    assert list(table["gender"]) == ["F", "M"] and list(table["subject"]) == ["csv:p1", "csv:img/b.jpg"]
    assert sorted(p["reason"] for p in problems) == ["gender unknown", "image missing"]


def test_csv_without_required_columns_is_a_clear_error(tmp_path: Path):
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\na.jpg,m\n")
    with pytest.raises(ds.DatasetError, match="labels.csv.*path,gender"):
        ds.read_records(labels)


def test_unknown_layout_lists_what_was_looked_for(tmp_path: Path):
    (tmp_path / "cats").mkdir()
    _jpeg(tmp_path / "cats" / "tom.jpg")
    with pytest.raises(ds.DatasetError, match="unknown dataset layout.*combined.*adience.*utkface.*folders.*csv"):
        ds.detect_layout(tmp_path)
    with pytest.raises(ds.DatasetError, match="no such file"):
        ds.detect_layout(tmp_path / "nowhere")


# --------------------------------------------------------------------------- cleaning


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    root = tmp_path / "messy"
    good = _jpeg(root / "male" / "good.jpg", 1)
    (root / "male" / "copy.jpg").write_bytes(good.read_bytes())
    (root / "male" / "zero.jpg").write_bytes(b"")
    data = _jpeg(tmp_path / "full.jpg", 2, size=(64, 64)).read_bytes()
    (root / "male" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "male" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (root / "male" / "text.jpg").write_text("not an image at all")
    _jpeg(root / "female" / "gray.png", 3, mode="L", format="PNG")
    _jpeg(root / "female" / "cmyk.jpg", 4, mode="CMYK")
    _jpeg(root / "female" / "palette.png", 5, mode="P", format="PNG")
    _jpeg(root / "female" / "alpha.png", 6, mode="RGBA", format="PNG")
    Image.fromarray((np.arange(24 * 24, dtype=np.uint16).reshape(24, 24) * 100)).save(root / "female" / "sixteen.png")
    rotated = Image.fromarray(np.zeros((10, 20, 3), np.uint8))  # 20 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    rotated.save(root / "female" / "rotated.jpg", exif=exif)
    (root / "female" / "conflict.jpg").write_bytes(good.read_bytes())  # same bytes as a male image
    _jpeg(root / "female" / "other.jpg", 7)
    return root


def test_cleaning_excludes_broken_files_and_reports_each_one(messy: Path):
    dataset = ds.build(messy, progress=False)
    excluded = dict(zip(dataset.excluded["path"], dataset.excluded["reason"]))
    assert excluded == {
        "male/zero.jpg": "empty file",
        "male/truncated.jpg": "truncated image",
        "male/corrupt.jpg": "corrupt or not an image",
        "male/text.jpg": "corrupt or not an image",
        "female/conflict.jpg": "duplicate with conflicting labels",
        "male/copy.jpg": "duplicate with conflicting labels",
        "male/good.jpg": "duplicate with conflicting labels",
    }
    assert dataset.meta["n_read"] == len(dataset.table) + len(excluded)


def test_odd_colour_modes_are_kept_and_load_as_rgb(messy: Path):
    dataset = ds.build(messy, progress=False)
    notes = dict(zip(dataset.table["path"], dataset.table["note"]))
    assert notes["female/cmyk.jpg"] == "CMYK converted to RGB"
    assert notes["female/gray.png"] == "L converted to RGB"
    assert notes["female/rotated.jpg"] == "EXIF orientation 6 applied"
    for name in ("gray.png", "cmyk.jpg", "palette.png", "alpha.png", "sixteen.png", "rotated.jpg"):
        rgb = ds.load_rgb(messy / "female" / name)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert ds.load_rgb(messy / "female" / "rotated.jpg").shape == (20, 10, 3)
    assert ds.load_rgb(messy / "female" / "sixteen.png").max() > 0


def test_duplicates_collapse_to_one_copy_and_merge_their_people(tmp_path: Path):
    root = tmp_path / "faces"
    a = _jpeg(root / "male" / "anna_a.jpg", 1)
    (root / "male" / "bob" / "x.jpg").parent.mkdir(parents=True)
    (root / "male" / "bob" / "x.jpg").write_bytes(a.read_bytes())
    _jpeg(root / "male" / "bob" / "y.jpg", 2)
    _jpeg(root / "female" / "c.jpg", 3)
    dataset = ds.build(root, progress=False)
    assert list(dataset.excluded["reason"]) == ["duplicate"]
    assert "identical to" in dataset.excluded["detail"].iloc[0]
    bob = dataset.table[dataset.table["path"] == "male/bob/y.jpg"]["group"].iloc[0]
    anna = dataset.table[dataset.table["path"] == "male/anna_a.jpg"]["group"].iloc[0]
    assert bob == anna  # linked through the shared image, so they can never be split apart


# --------------------------------------------------------------------------- splits


@pytest.fixture
def people_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for person in range(300):
        gender = "MF"[person % 2]
        for _ in range(int(rng.integers(1, 12))):
            rows.append({"gender": gender, "group": f"p{person}", "source": "s", "age_group": "25-37"})
    return pd.DataFrame(rows)


def test_person_split_keeps_every_person_on_one_side_with_balanced_sizes(people_table):
    table = ds.assign_splits(people_table, seed=3)
    assert ds.leaked_groups(table) == set() and ds.leaked_groups(table, "fold") == set()
    fractions = table["split"].value_counts(normalize=True)
    assert abs(fractions["train"] - 0.70) < 0.02 and abs(fractions["test"] - 0.15) < 0.02
    for split, part in table.groupby("split"):
        assert abs((part["gender"] == "F").mean() - (table["gender"] == "F").mean()) < 0.03, split
    assert sorted(table["fold"].unique()) == [0, 1, 2, 3, 4]


def test_same_seed_gives_same_split_and_another_seed_a_different_one(people_table):
    a, b, c = (ds.assign_splits(people_table, seed=s) for s in (1, 1, 2))
    assert a["split"].tolist() == b["split"].tolist() and a["fold"].tolist() == b["fold"].tolist()
    assert a["split"].tolist() != c["split"].tolist()


def test_original_protocol_is_image_level_and_leaks_people(people_table):
    table = ds.assign_splits(people_table, protocol="original", seed=0)
    assert len(ds.leaked_groups(table)) > 50
    assert round(len(table) * 0.15) == (table["split"] == "test").sum()


def test_bad_split_parameters_are_clear_errors(people_table):
    with pytest.raises(ValueError, match="sum to less than 1"):
        ds.assign_splits(people_table, val=0.5, test=0.5)
    with pytest.raises(ValueError, match="protocol"):
        ds.assign_splits(people_table, protocol="random")
    with pytest.raises(ValueError, match="k >= 2"):
        ds.assign_splits(people_table, k=1)


def test_manifest_round_trips_and_reports_splits(combined: Path, tmp_path: Path):
    dataset = ds.build(combined, progress=False, seed=5)
    manifest = ds.write_manifest(dataset, tmp_path / "processed")
    again = ds.read_manifest(manifest)
    assert again.table["path"].tolist() == dataset.table["path"].tolist()
    assert again.table["split"].tolist() == dataset.table["split"].tolist()
    assert again.meta["seed"] == 5 and len(again.meta["manifest_sha256"]) == 64
    assert all(p.is_file() for p in ds.absolute_paths(again))
    report = ds.split_report(dataset.table)
    assert "by gender" in report and "by source" in report and "by age group" in report and "people" in report


def test_missing_manifest_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no manifest"):
        ds.read_manifest(tmp_path / "manifest.csv")


# --------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_combined_folder_is_read_deduplicated_and_split_by_person(real_combined: Path):
    dataset = ds.build(real_combined, progress=False)
    assert dataset.meta["n_read"] == 29437
    reasons = dataset.excluded["reason"].value_counts()
    assert reasons["duplicate"] > 0 and reasons["duplicate with conflicting labels"] > 0
    assert len(dataset.table) + len(dataset.excluded) == 29437
    assert dataset.table["sha256"].is_unique
    assert (dataset.table["subject"].str.len() > 0).all() and not dataset.table["subject"].str.startswith("file:").any()
    assert ds.leaked_groups(dataset.table) == set()
    assert ds.leaked_groups(dataset.table, "fold") == set()
    by_subject = dataset.table.groupby("subject")["split"].nunique()
    assert (by_subject == 1).all()
    assert set(dataset.table["source"]) == {"adience", "imdb", "wiki"}


def test_sample_keeps_proportions_and_is_seeded(people_table):
    table = ds.assign_splits(people_table, seed=0)
    full = ds.Dataset(table, pd.DataFrame(columns=["path", "reason", "detail"]), {})
    a, b = ds.sample(full, 200, seed=1), ds.sample(full, 200, seed=1)
    assert abs(len(a.table) - 200) <= 6 and a.table.equals(b.table)
    assert abs((a.table["split"] == "test").mean() - (table["split"] == "test").mean()) < 0.03
    assert ds.sample(full, 0).table is table


def test_summary_does_not_count_kept_notes_as_exclusions(combined: Path):
    _jpeg(combined / "aligned" / "25_M" / "holiday photo.jpg", seed=50)
    (combined / "aligned" / "25_M" / "notes.txt").write_text("hello")
    dataset = ds.build(combined, progress=False)
    summary = ds.cleaning_summary(dataset.meta["n_read"], dataset.table, dataset.excluded)
    assert summary.splitlines()[0] == "read 11 images; kept 11; excluded 1"
    assert dataset.meta["n_excluded"] == 1
