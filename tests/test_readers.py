"""Layout readers and layout detection (gender_lib.readers) on synthetic trees and the real fold files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gender_lib import readers
from gender_lib.errors import GenderLibError
from tests.dataset_trees import combined_tree, fold_file, fold_row, jpeg


@pytest.fixture
def combined(tmp_path: Path) -> Path:
    return combined_tree(tmp_path / "combined")


def test_combined_layout_reads_person_source_age_and_gender(combined: Path):
    assert readers.detect_layout(combined) == "combined"
    table, problems, layout = readers.read_records(combined)
    assert layout == "combined" and problems == [] and len(table) == 10
    row = table[table["path"].map(lambda p: p.name) == "nm0000001_rm111_1980-1-2_2005.jpg"].iloc[0]
    assert (row.gender, row.age, row.subject, row.source) == ("M", "25", "imdb:nm0000001", "imdb")
    wiki = table[table["source"] == "wiki"]["subject"].tolist()
    assert sorted(wiki) == ["wiki:111", "wiki:222", "wiki:333"]
    assert set(table[table["source"] == "adience"]["subject"]) == {"adience:42", "adience:43"}


def test_combined_reports_non_images_and_unparsed_names(combined: Path):
    (combined / "aligned" / "25_M" / "notes.txt").write_text("hello")
    jpeg(combined / "aligned" / "25_M" / "holiday photo.jpg")
    table, problems, _ = readers.read_records(combined)
    reasons = {Path(p["path"]).name: (p["reason"], p["kind"]) for p in problems}
    assert reasons == {"notes.txt": ("not an image", "skipped"), "holiday photo.jpg": ("unparsed name (kept)", "note")}
    assert "file:holiday photo" in set(table["subject"])


@pytest.fixture
def adience(tmp_path: Path) -> Path:
    root = tmp_path / "adience"
    rows = []
    specs = [
        ("u1", "a.jpg", 1, "(25, 32)", "f"),
        ("u1", "b.jpg", 1, "35", "f"),
        ("u1", "c.jpg", 2, "(38, 48)", "m"),
        ("u2", "d.jpg", 3, "None", "m"),
        ("u2", "e.jpg", 4, "(0, 2)", "u"),
        ("u2", "f.jpg", 5, "(8, 12)", ""),
        ("u2", "g.jpg", 6, "(4, 6)", "m"),
    ]
    for i, spec in enumerate(specs):
        rows.append(fold_row(*spec))
        user, image, face = spec[:3]
        if image != "g.jpg":  # g.jpg is listed but missing on disk
            jpeg(root / "aligned" / user / f"landmark_aligned_face.{face}.{image}", seed=i)
    jpeg(root / "aligned" / "u3" / "landmark_aligned_face.9.z.jpg", seed=99)  # on disk, in no fold
    fold_file(root / "fold_0_data.txt", rows[:4])
    fold_file(root / "fold_1_data.txt", rows[4:] + [fold_row("u3", "z.jpg", 9, "(25, 32)", "f")], cut_last=True)
    return root


def test_adience_layout_parses_folds_ages_and_unknown_genders(adience: Path):
    assert readers.detect_layout(adience) == "adience"
    table, problems, _ = readers.read_records(adience)
    by_name = {p.name: r for p, r in zip(table["path"], table.to_dict("records"))}
    assert sorted(by_name) == [
        "landmark_aligned_face.1.a.jpg",
        "landmark_aligned_face.1.b.jpg",
        "landmark_aligned_face.2.c.jpg",
        "landmark_aligned_face.3.d.jpg",
    ]
    assert by_name["landmark_aligned_face.1.a.jpg"]["age"] == "25-32"
    assert by_name["landmark_aligned_face.1.b.jpg"]["age"] == "35"
    assert by_name["landmark_aligned_face.2.c.jpg"]["age"] == "38-48"
    assert by_name["landmark_aligned_face.3.d.jpg"]["age"] == ""
    assert by_name["landmark_aligned_face.1.a.jpg"]["subject"] == "adience:u1:1"
    assert set(table["fold"]) == {0}  # every record carries its official fold
    reasons = sorted(p["reason"] for p in problems)
    assert reasons == ["gender unknown", "gender unknown", "image missing", "no metadata row", "truncated metadata row"]
    assert {p["kind"] for p in problems} == {"skipped"}


@pytest.mark.realdata
def test_real_adience_fold_files_parse_and_report_truncation(real_folds: Path):
    meta, problems = readers.read_adience_folds(sorted(real_folds.glob("fold_*_data.txt")))
    counts = meta.groupby("fold").size()
    assert counts[0] == 4484 and counts[1] == 3730  # the complete folds (shared README)
    truncated = [p for p in problems if p["reason"] == "truncated metadata row"]
    assert {Path(p["path"].rsplit(":", 1)[0]).name for p in truncated} >= {"fold_2_data.txt"}
    assert set(meta["gender"]) <= {"m", "f", "u", ""}
    assert meta["age"].str.fullmatch(r"(\d+(-\d+)?)?").all()
    assert meta.groupby("face_id")["user_id"].nunique().max() == 1  # a face id names one person


def test_utkface_layout_reads_labels_and_ethnicity_and_reports_malformed_names(tmp_path: Path):
    root = tmp_path / "utk"
    jpeg(root / "26_0_1_20170116174525125.jpg", 1)
    jpeg(root / "3_1_2_20170112190000000.jpg.chip.jpg", 2)  # the first stamp that is read
    jpeg(root / "61_1_20170109142408075.jpg", 3)  # race missing: malformed
    jpeg(root / "39_1_20170116174525125.jpg", 4)
    jpeg(root / "40_0_0_20170116174525126.jpg", 5)
    assert readers.detect_layout(root) == "utkface"
    table, problems, _ = readers.read_records(root)
    assert dict(zip(table["age"], zip(table["gender"], table["ethnicity"]))) == {"26": ("M", "Black"), "3": ("F", "Asian"), "40": ("M", "White")}
    assert sorted(Path(p["path"]).name for p in problems) == ["39_1_20170116174525125.jpg", "61_1_20170109142408075.jpg"]
    assert {p["reason"] for p in problems} == {"malformed UTKFace name"}


def test_utkface_files_reserved_for_independent_checks_are_skipped(tmp_path: Path):
    root = tmp_path / "utk"
    jpeg(root / "26_0_1_20170112185959999.jpg.chip.jpg", 1)  # one millisecond before the cut
    jpeg(root / "27_1_3_20170112190000000.jpg.chip.jpg", 2)
    table, problems, _ = readers.read_records(root)
    assert table["age"].tolist() == ["27"]
    assert [(Path(p["path"]).name, p["reason"], p["kind"]) for p in problems] == [
        ("26_0_1_20170112185959999.jpg.chip.jpg", "reserved for independent checks", "skipped")
    ]


@pytest.mark.parametrize("male, female", [("male", "female"), ("Man", "Woman"), ("M", "F"), ("MEN", "women")])
def test_class_folders_in_any_case_are_read(tmp_path: Path, male: str, female: str):
    root = tmp_path / "faces"
    jpeg(root / male / "a.jpg", 1)
    jpeg(root / female / "alice" / "1.jpg", 2)
    jpeg(root / female / "alice" / "2.png", 3, format="PNG")
    assert readers.detect_layout(root) == "folders"
    table, problems, _ = readers.read_records(root)
    assert problems == []
    assert sorted(table["gender"]) == ["F", "F", "M"]
    assert table[table["gender"] == "F"]["subject"].nunique() == 1  # the person folder groups them


def test_class_folders_beside_other_folders_are_read_and_the_others_reported(tmp_path: Path):
    jpeg(tmp_path / "male" / "a.jpg", 1)
    jpeg(tmp_path / "female" / "b.jpg", 2)
    jpeg(tmp_path / "rejects" / "c.jpg", 3)
    assert readers.detect_layout(tmp_path) == "folders"
    table, problems, _ = readers.read_records(tmp_path)
    assert len(table) == 2 and [(Path(p["path"]).name, p["reason"]) for p in problems] == [("rejects", "unexpected folder")]


@pytest.mark.parametrize(
    "folders, message",
    [
        (["male"], "class folders found for male only (male); add a female/woman/women/f folder"),
        (["Women", "cats"], "class folders found for female only (Women); add a male/man/men/m folder"),
        (["M", "men"], "class folders found for male only (M, men); add a female/woman/women/f folder"),
    ],
)
def test_one_class_folder_tree_names_the_missing_class(tmp_path: Path, folders: list[str], message: str):
    # Regression: used to say "unknown dataset layout" without saying what was wrong.
    for i, name in enumerate(folders):
        jpeg(tmp_path / name / f"{i}.jpg", i)
    with pytest.raises(readers.DatasetError, match=f"^{re.escape(str(tmp_path))}: {re.escape(message)}$"):
        readers.detect_layout(tmp_path)
    with pytest.raises(readers.DatasetError, match=re.escape(message)):
        readers.read_records(tmp_path, layout="folders")


def test_forced_folders_layout_without_class_folders_is_a_clear_error(tmp_path: Path):
    jpeg(tmp_path / "cats" / "tom.jpg")
    with pytest.raises(readers.DatasetError, match=r"no class folders \(male/female.*found folders \['cats'\]"):
        readers.read_records(tmp_path, layout="folders")


def test_csv_labels_are_read_with_problems_reported(tmp_path: Path):
    jpeg(tmp_path / "img" / "a.jpg", 1)
    jpeg(tmp_path / "img" / "b.jpg", 2)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,gender,age,subject\nimg/a.jpg,Female,30,p1\nimg/b.jpg,m,,\nimg/c.jpg,f,,\nimg/a.jpg,x,,\n")
    assert readers.detect_layout(labels) == "csv"
    table, problems, _ = readers.read_records(labels)
    assert list(table["gender"]) == ["F", "M"] and list(table["subject"]) == ["csv:p1", "csv:img/b.jpg"]
    assert sorted(p["reason"] for p in problems) == ["gender unknown", "image missing"]


def test_csv_without_required_columns_is_a_clear_error(tmp_path: Path):
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\na.jpg,m\n")
    with pytest.raises(readers.DatasetError, match="labels.csv.*path,gender"):
        readers.read_records(labels)


def test_unknown_layout_lists_what_was_looked_for(tmp_path: Path):
    (tmp_path / "cats").mkdir()
    jpeg(tmp_path / "cats" / "tom.jpg")
    with pytest.raises(readers.DatasetError, match="unknown dataset layout.*combined.*adience.*utkface.*folders.*csv"):
        readers.detect_layout(tmp_path)
    with pytest.raises(readers.DatasetError, match="no such file"):
        readers.detect_layout(tmp_path / "nowhere")


def test_dataset_error_is_a_user_error_and_a_value_error():
    assert issubclass(readers.DatasetError, GenderLibError) and issubclass(readers.DatasetError, ValueError)


@pytest.mark.parametrize("age, group", [("", "unknown"), ("1", "0-2"), ("25-32", "25-37"), ("35", "25-37"), ("99", "60+"), ("x", "unknown")])
def test_age_groups(age: str, group: str):
    assert readers.age_group(age) == group
