"""Cleaning, counting, build (read -> clean -> split), the manifest, and image decoding."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gender_lib import dataset as ds
from gender_lib import images, manifest, splits
from tests.dataset_trees import adience_in_five_folds, combined_tree, fold_file, fold_row, jpeg


@pytest.fixture
def combined(tmp_path: Path) -> Path:
    return combined_tree(tmp_path / "combined")


# --------------------------------------------------------------------------- cleaning


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    root = tmp_path / "messy"
    good = jpeg(root / "male" / "good.jpg", 1)
    (root / "male" / "copy.jpg").write_bytes(good.read_bytes())
    (root / "male" / "zero.jpg").write_bytes(b"")
    data = jpeg(tmp_path / "full.jpg", 2, size=(64, 64)).read_bytes()
    (root / "male" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "male" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (root / "male" / "text.jpg").write_text("not an image at all")
    jpeg(root / "female" / "gray.png", 3, mode="L", format="PNG")
    jpeg(root / "female" / "cmyk.jpg", 4, mode="CMYK")
    jpeg(root / "female" / "palette.png", 5, mode="P", format="PNG")
    jpeg(root / "female" / "alpha.png", 6, mode="RGBA", format="PNG")
    Image.fromarray(np.arange(48 * 48, dtype=np.uint16).reshape(48, 48) * 25).save(root / "female" / "sixteen.png")
    rotated = Image.fromarray(np.zeros((40, 80, 3), np.uint8))  # 80 wide, 40 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    rotated.save(root / "female" / "rotated.jpg", exif=exif)
    (root / "female" / "conflict.jpg").write_bytes(good.read_bytes())  # same bytes as a male image
    jpeg(root / "female" / "other.jpg", 7)
    jpeg(root / "female" / "thumbnail.jpg", 8, size=(39, 60))  # below the smallest face anything here labels
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
        "female/thumbnail.jpg": "too small",
    }
    assert set(dataset.excluded["kind"]) == {"excluded"}
    assert dataset.meta["n_read"] == len(dataset.table) + len(excluded)


def test_odd_colour_modes_are_kept_and_load_as_rgb(messy: Path):
    dataset = ds.build(messy, progress=False)
    notes = dict(zip(dataset.table["path"], dataset.table["note"]))
    assert notes["female/cmyk.jpg"] == "CMYK converted to RGB"
    assert notes["female/gray.png"] == "L converted to RGB"
    assert notes["female/rotated.jpg"] == "EXIF orientation 6 applied"
    for name in ("gray.png", "cmyk.jpg", "palette.png", "alpha.png", "sixteen.png", "rotated.jpg"):
        rgb = images.load_rgb(messy / "female" / name)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert images.load_rgb(messy / "female" / "rotated.jpg").shape == (80, 40, 3)
    assert images.load_rgb(messy / "female" / "sixteen.png").max() > 0
    assert images.load_rgb((messy / "female" / "gray.png").read_bytes()).shape == (48, 48, 3)


def test_duplicates_collapse_to_one_copy_and_merge_their_people(tmp_path: Path):
    root = tmp_path / "faces"
    a = jpeg(root / "male" / "anna_a.jpg", 1)
    (root / "male" / "bob" / "x.jpg").parent.mkdir(parents=True)
    (root / "male" / "bob" / "x.jpg").write_bytes(a.read_bytes())
    jpeg(root / "male" / "bob" / "y.jpg", 2)
    jpeg(root / "female" / "c.jpg", 3)
    dataset = ds.build(root, progress=False)
    assert list(dataset.excluded["reason"]) == ["duplicate"]
    assert "identical to" in dataset.excluded["detail"].iloc[0]
    bob = dataset.table[dataset.table["path"] == "male/bob/y.jpg"]["group"].iloc[0]
    anna = dataset.table[dataset.table["path"] == "male/anna_a.jpg"]["group"].iloc[0]
    assert bob == anna  # linked through the shared image, so they can never be split apart


# --------------------------------------------------------------------------- counting


def _first_line_numbers(summary: str) -> tuple[int, int, int]:
    match = re.fullmatch(r"read (\d+) images; kept (\d+); excluded (\d+)", summary.splitlines()[0])
    assert match, summary
    return tuple(int(g) for g in match.groups())


def test_read_equals_kept_plus_excluded_with_every_kind_of_problem(combined: Path):
    # Regression: reader problems (non-images, unparsed names) used to count as exclusions of
    # images never counted as read, so the summary and meta did not add up.
    folder = combined / "aligned" / "25_M"
    (folder / "zz_empty.jpg").write_bytes(b"")  # unparsed name too: one note + one exclusion
    (folder / "nm0000009_rm1_1980-1-2_2005.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)  # corrupt
    source = folder / "nm0000001_rm111_1980-1-2_2005.jpg"
    (folder / "nm0000001_rm999_1980-1-2_2007.jpg").write_bytes(source.read_bytes())  # duplicate pair
    (combined / "aligned" / "25_F" / "nm0000002_rm998_1981-1-2_2007.jpg").write_bytes(
        (combined / "aligned" / "60_M" / "333_1940-05-06_2000.jpg").read_bytes()
    )  # conflicting duplicate (F copy of an M)
    (folder / "notes.txt").write_text("not an image")  # skipped: not read
    jpeg(folder / "holiday photo.jpg", seed=50)  # unparsed name: read, kept, noted
    (combined / "aligned" / "misc").mkdir()  # skipped: unexpected folder

    dataset = ds.build(combined, progress=False)
    meta = dataset.meta
    assert meta["n_read"] == 10 + 5  # the tree's 10, plus the empty, corrupt, two copies and the holiday photo
    assert meta["n_read"] == meta["n_kept"] + meta["n_excluded"] == len(dataset.table) + meta["n_excluded"]
    assert (meta["n_kept"], meta["n_excluded"], meta["n_skipped"], meta["n_notes"]) == (10, 5, 2, 2)
    reasons = dataset.excluded.groupby("kind")["reason"].agg(sorted).to_dict()
    assert reasons == {
        "excluded": ["corrupt or not an image", "duplicate", "duplicate with conflicting labels", "duplicate with conflicting labels", "empty file"],
        "skipped": ["not an image", "unexpected folder"],
        "note": ["unparsed name (kept)", "unparsed name (kept)"],
    }
    summary = ds.cleaning_summary(meta["n_read"], dataset.table, dataset.excluded)
    read, kept, excluded = _first_line_numbers(summary)
    assert (read, kept, excluded) == (15, 10, 5) and read == kept + excluded
    assert "skipped 2 files, folders or metadata rows" in summary and "  not an image: 1" in summary
    assert "notes on kept images\n  unparsed name (kept): 2" in summary


def test_summary_does_not_count_kept_notes_or_non_images_as_exclusions(combined: Path):
    jpeg(combined / "aligned" / "25_M" / "holiday photo.jpg", seed=50)
    (combined / "aligned" / "25_M" / "notes.txt").write_text("hello")
    dataset = ds.build(combined, progress=False)
    summary = ds.cleaning_summary(dataset.meta["n_read"], dataset.table, dataset.excluded)
    assert summary.splitlines()[0] == "read 11 images; kept 11; excluded 0"
    assert dataset.meta["n_excluded"] == 0 and dataset.meta["n_skipped"] == 1 and dataset.meta["n_notes"] == 1


def test_summary_counts_each_kind_and_the_failures_extraction_adds():
    table = pd.DataFrame({"note": ["", "", "L converted to RGB"]})
    report = pd.DataFrame(
        {
            "path": list("abcd"),
            "reason": ["duplicate", "not an image", "unparsed name (kept)", "failed to decode at extraction"],
            "detail": [""] * 4,
            "kind": ["excluded", "skipped", "note", "extraction"],
        }
    )
    summary = ds.cleaning_summary(4, table, report)
    assert summary.splitlines()[0] == "read 4 images; kept 3; excluded 1"
    assert "  converted to RGB on load (kept): 1" in summary and "descriptor extraction (still in the manifest): 1" in summary
    assert "does not" not in summary and "not the whole" not in summary
    assert "not the whole cleaned dataset" in ds.cleaning_summary(10, table, report)


# --------------------------------------------------------------------------- official folds


def test_build_keeps_official_adience_folds(tmp_path: Path):
    # Regression: the folds read from fold_<k>_data.txt were replaced by computed ones.
    official = adience_in_five_folds(tmp_path / "adience")
    dataset = ds.build(tmp_path / "adience", progress=False)
    assert dict(zip(dataset.table["path"], dataset.table["fold"])) == official
    assert dataset.meta["folds"] == "official" and dataset.meta["k"] == 5 and dataset.meta["folds_moved"] == 0
    assert splits.leaked_groups(dataset.table) == set() and splits.leaked_groups(dataset.table, "fold") == set()
    computed = ds.build(tmp_path / "adience", progress=False, folds="computed")
    assert computed.meta["folds"] == "computed" and "folds_moved" not in computed.meta
    assert dict(zip(computed.table["path"], computed.table["fold"])) != official


def test_official_folds_stay_person_disjoint_when_a_shared_image_links_two_folds(tmp_path: Path):
    root = tmp_path / "adience"
    adience_in_five_folds(root, users_per_fold=2, faces_per_user=1)
    # Person u00:0 (fold 0) gets a second photo; a new person in fold 1 has two photos, one of them
    # byte-identical to u00:0's first. The shared image merges the two people, who span folds 0 and 1.
    shared = next((root / "aligned" / "u00").iterdir())
    jpeg(root / "aligned" / "u00" / "landmark_aligned_face.0.second.jpg", seed=500)
    (root / "aligned" / "new").mkdir()
    (root / "aligned" / "new" / "landmark_aligned_face.999.x.jpg").write_bytes(shared.read_bytes())
    jpeg(root / "aligned" / "new" / "landmark_aligned_face.999.y.jpg", seed=501)
    for fold, rows in (
        (0, [fold_row("u00", "second.jpg", 0, "35", "m")]),
        (1, [fold_row("new", "x.jpg", 999, "35", "m"), fold_row("new", "y.jpg", 999, "35", "m")]),
    ):
        path = root / f"fold_{fold}_data.txt"
        fold_file(path, path.read_text().splitlines()[1:] + rows)
    dataset = ds.build(root, progress=False)
    merged = dataset.table[dataset.table["group"] == dataset.table.set_index("subject").loc["adience:new:999", "group"].iloc[0]]
    assert len(merged) == 3 and set(merged["fold"]) == {1}  # the fold-0 photo moved to the fold with most of them
    assert dataset.meta["folds"] == "official" and dataset.meta["folds_moved"] == 1
    assert splits.leaked_groups(dataset.table, "fold") == set()


def test_computed_folds_for_layouts_without_official_ones(combined: Path):
    dataset = ds.build(combined, progress=False)
    assert dataset.meta["folds"] == "computed" and dataset.meta["k"] == 5


# --------------------------------------------------------------------------- manifest


def test_manifest_round_trips_and_reports_splits(combined: Path, tmp_path: Path):
    dataset = ds.build(combined, progress=False, seed=5)
    path = manifest.write_manifest(dataset, tmp_path / "processed")
    again = manifest.read_manifest(path)
    assert again.table["path"].tolist() == dataset.table["path"].tolist()
    assert again.table["split"].tolist() == dataset.table["split"].tolist()
    assert again.meta["seed"] == 5 and len(again.meta["manifest_sha256"]) == 64
    assert all(p.is_file() for p in manifest.absolute_paths(again))
    report = ds.split_report(dataset.table)
    assert "by gender" in report and "by source" in report and "by age group" in report and "people" in report


def test_missing_manifest_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no manifest"):
        manifest.read_manifest(tmp_path / "manifest.csv")


def test_sample_keeps_proportions_and_is_seeded():
    rng = np.random.default_rng(0)
    rows = [{"gender": "MF"[p % 2], "group": f"p{p}", "source": "s", "age_group": "25-37"} for p in range(300) for _ in range(int(rng.integers(1, 12)))]
    table = splits.assign_splits(pd.DataFrame(rows), seed=0)
    full = manifest.Dataset(table, pd.DataFrame(columns=manifest.EXCLUDED_COLUMNS), {"n_read": len(table), "n_kept": len(table)})
    a, b = ds.sample(full, 200, seed=1), ds.sample(full, 200, seed=1)
    assert abs(len(a.table) - 200) <= 6 and a.table.equals(b.table)
    assert abs((a.table["split"] == "test").mean() - (table["split"] == "test").mean()) < 0.03
    assert ds.sample(full, 0).table is table
    assert a.meta["n_read"] == len(table) and a.meta["n_images"] == len(a.table)  # the counts describe the whole folder


# --------------------------------------------------------------------------- module layout


def test_image_module_does_not_import_pandas():
    code = "import sys, gender_lib.images; assert 'pandas' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_combined_folder_is_read_deduplicated_and_split_by_person(real_combined: Path):
    dataset = ds.build(real_combined, progress=False)
    meta = dataset.meta
    assert meta["n_read"] == 29437 and meta["n_read"] == meta["n_kept"] + meta["n_excluded"]
    reasons = dataset.excluded["reason"].value_counts()
    assert reasons["duplicate"] > 0 and reasons["duplicate with conflicting labels"] > 0
    assert len(dataset.table) + (dataset.excluded["kind"] == "excluded").sum() == 29437
    assert dataset.table["sha256"].is_unique
    assert (dataset.table["subject"].str.len() > 0).all() and not dataset.table["subject"].str.startswith("file:").any()
    assert splits.leaked_groups(dataset.table) == set()
    assert splits.leaked_groups(dataset.table, "fold") == set()
    by_subject = dataset.table.groupby("subject")["split"].nunique()
    assert (by_subject == 1).all()
    assert set(dataset.table["source"]) == {"adience", "imdb", "wiki"}
    assert meta["folds"] == "computed"  # the combined folder's Adience images carry no fold files
