"""The committed sample of real faces (``data/sample/``) and the script that makes it."""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gender_lib.readers import age_group, read_combined, subject_from_combined_name

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
SCRIPT = ROOT / "scripts" / "make_sample.py"
MAX_BYTES = 3_000_000
FOLDER_BYTES = 4096  # what `du -sb` counts per folder on ext4/overlayfs
AGE_GROUPS = ["0-2", "3-7", "8-14", "15-24", "25-37", "38-47", "48-59", "60+"]
SOURCES = ["adience", "imdb", "wiki"]
_FOLDER = re.compile(r"^(\d{2})_([MF])$")


def _load_script():
    spec = importlib.util.spec_from_file_location("make_sample", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_sample", module)
    spec.loader.exec_module(module)
    return module


make_sample = _load_script()


def _images(folder: Path) -> list[dict]:
    """One record per image of a ``<AA>_<M|F>/*.jpg`` folder, labels taken from the path alone."""
    out = []
    for path in sorted(folder.glob("*/*.jpg")):
        match = _FOLDER.match(path.parent.name)
        assert match, f"unexpected folder {path.parent.name}"
        parsed = subject_from_combined_name(path.name)
        assert parsed is not None, f"unparsed name {path.name}"
        out.append(
            {
                "path": path,
                "file": f"{path.parent.name}/{path.name}",
                "gender": match.group(2),
                "age_group": age_group(str(int(match.group(1)))),
                "subject": parsed[0],
                "source": parsed[1],
            }
        )
    return out


def _tree_digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def images() -> list[dict]:
    if not SAMPLE.is_dir():
        pytest.fail(f"{SAMPLE} is missing: run python scripts/make_sample.py")
    return _images(SAMPLE)


# --------------------------------------------------------------------------- the committed sample


def test_sample_is_small(images):
    files = [p for p in SAMPLE.rglob("*") if p.is_file()]
    folders = [p for p in SAMPLE.rglob("*") if p.is_dir()]
    files_bytes = sum(p.stat().st_size for p in files)
    assert files_bytes + FOLDER_BYTES * (len(folders) + 1) <= MAX_BYTES  # what `du -sb` reports on ext4
    assert {p.suffix for p in files} == {".jpg", ".md", ".json"}
    assert not list(SAMPLE.glob(".*")), "leftover temp folder"


def test_sample_is_balanced_and_spread(images):
    assert len(images) >= 280
    genders = collections.Counter(r["gender"] for r in images)
    assert 0.45 <= genders["F"] / len(images) <= 0.55
    groups = collections.Counter(r["age_group"] for r in images)
    assert set(groups) == set(AGE_GROUPS)
    assert min(groups.values()) >= 0.08 * len(images), groups  # every group well represented
    for gender in "FM":
        assert {r["age_group"] for r in images if r["gender"] == gender} == set(AGE_GROUPS)
    sources = collections.Counter(r["source"] for r in images)
    assert set(sources) == set(SOURCES) and min(sources.values()) >= 0.15 * len(images), sources


def test_many_images_belong_to_people_with_several_photos(images):
    per_person = collections.Counter(r["subject"] for r in images)
    several = sum(n for n in per_person.values() if n >= 2)
    assert several >= 0.4 * len(images)
    assert sum(n >= 2 for n in per_person.values()) >= 40
    # a person has one gender, and the sample has no byte-identical duplicates
    genders = collections.defaultdict(set)
    for r in images:
        genders[r["subject"]].add(r["gender"])
    assert all(len(g) == 1 for g in genders.values())
    digests = [hashlib.sha256(r["path"].read_bytes()).hexdigest() for r in images]
    assert len(set(digests)) == len(digests)


def test_every_image_decodes_as_128x128_rgb(images):
    for r in images:
        with Image.open(r["path"]) as image:
            assert image.format == "JPEG" and "exif" not in image.info, r["file"]
            image.load()
            assert (image.size, image.mode) == ((128, 128), "RGB"), r["file"]


def _readme_table(text: str) -> dict[tuple[str, str], dict[str, int]]:
    rows = {}
    header = None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:2] == ["gender", "age group"]:
            header = cells
        elif header and len(cells) == len(header) and not cells[0].startswith("-"):
            rows[(cells[0], cells[1])] = {k: int(v) for k, v in zip(header[2:], cells[2:])}
    return rows


def test_readme_count_table_matches_the_files(images):
    text = (SAMPLE / "README.md").read_text(encoding="utf-8")
    table = _readme_table(text)
    expected = {}
    for gender in "FM":
        for group in AGE_GROUPS:
            row = [r for r in images if r["gender"] == gender and r["age_group"] == group]
            expected[(gender, group)] = {
                **{s: sum(r["source"] == s for r in row) for s in SOURCES},
                "images": len(row),
                "people": len({r["subject"] for r in row}),
            }
    expected[("all", "all")] = {
        **{s: sum(r["source"] == s for r in images) for s in SOURCES},
        "images": len(images),
        "people": len({r["subject"] for r in images}),
    }
    assert table == expected
    assert f"{len(images)} real aligned faces" in text
    assert "non-commercial research use only" in text and "MIT" in text
    assert "python scripts/make_sample.py" in text


def test_sample_json_lists_exactly_the_files(images):
    meta = json.loads((SAMPLE / "SAMPLE.json").read_text(encoding="utf-8"))
    listed = {e["file"]: e for e in meta["images"]}
    assert sorted(listed) == [r["file"] for r in images]
    for r in images:
        entry = listed[r["file"]]
        assert entry["sha256"] == hashlib.sha256(r["path"].read_bytes()).hexdigest()
        assert (entry["gender"], entry["age_group"], entry["subject"], entry["source"]) == (r["gender"], r["age_group"], r["subject"], r["source"])
    assert meta["summary"]["images"] == len(images)


def test_the_package_reads_the_sample(images):
    records, problems = read_combined(SAMPLE)
    assert len(records) == len(images) and problems == []
    assert {r["source"] for r in records} == set(SOURCES)


# --------------------------------------------------------------------------- the script, on a fake tree


def _jpeg(path: Path, seed: int, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, quality=95)


@pytest.fixture
def fake_combined(tmp_path: Path) -> Path:
    """A combined/aligned tree: every gender x age group x source, people with 1-3 photos, duplicates."""
    root = tmp_path / "combined" / "aligned"
    seed = 0
    for g, gender in enumerate("FM"):
        for a, age in enumerate([1, 5, 10, 20, 30, 40, 50, 65]):
            folder = root / f"{age:02d}_{gender}"
            for person in range(3):
                pid = 1000 * g + 10 * a + person
                for photo in range(person + 1):
                    seed += 1
                    _jpeg(folder / f"landmark_aligned_face.{pid}.{photo}_abc_o.jpg", seed)
                    seed += 1
                    _jpeg(folder / f"nm{pid:07d}_rm{photo}_1970-1-1_2000.jpg", seed)
                seed += 1
                _jpeg(folder / f"{pid}_1970-1-1_2000.jpg", seed)
    # a plain duplicate (same person, same labels) and a duplicate with conflicting genders
    (root / "30_F" / "landmark_aligned_face.42.9_abc_o.jpg").write_bytes((root / "30_F" / "landmark_aligned_face.42.1_abc_o.jpg").read_bytes())
    (root / "30_M" / "nm0001042_rm9_1970-1-1_2000.jpg").write_bytes((root / "30_F" / "nm0000042_rm0_1970-1-1_2000.jpg").read_bytes())
    (root / "30_F" / "notes.txt").write_text("not an image")
    return root


def test_script_is_deterministic_balanced_and_atomic(fake_combined: Path, tmp_path: Path):
    out_a, out_b = tmp_path / "a" / "sample", tmp_path / "b" / "sample"
    assert make_sample.main(["--source", str(fake_combined), "--out", str(out_a), "--n", "64", "--seed", "3"]) == 0
    make_sample.build(fake_combined, out_b, n=64, seed=3)
    assert _tree_digests(out_a) == _tree_digests(out_b)
    assert [p.name for p in out_a.parent.iterdir()] == ["sample"]  # no temp folder left behind
    images = _images(out_a)
    assert len(images) == 64
    assert collections.Counter(r["gender"] for r in images) == {"F": 32, "M": 32}
    assert {r["age_group"] for r in images} == set(AGE_GROUPS)
    assert {r["source"] for r in images} == set(SOURCES)
    files = {r["file"] for r in images}
    assert "30_F/nm0000042_rm0_1970-1-1_2000.jpg" not in files and "30_M/nm0001042_rm9_1970-1-1_2000.jpg" not in files
    assert "30_F/landmark_aligned_face.42.9_abc_o.jpg" not in files  # same bytes as .42.1, which counts once
    records, skipped = make_sample.scan(fake_combined)
    assert skipped == {"duplicate": 1, "duplicate with conflicting labels": 2, "not a jpeg": 1}
    assert "30_F/landmark_aligned_face.42.1_abc_o.jpg" in {r["rel"] for r in records}
    # rerunning replaces the folder in place; another seed changes the selection
    make_sample.build(fake_combined, out_a, n=64, seed=4)
    assert _tree_digests(out_a) != _tree_digests(out_b)
    assert [p.name for p in out_a.parent.iterdir()] == ["sample"]


def test_script_refuses_a_missing_source_or_a_foreign_output(tmp_path: Path, fake_combined: Path, capsys):
    missing = tmp_path / "nowhere" / "aligned"
    assert make_sample.main(["--source", str(missing), "--out", str(tmp_path / "out")]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    foreign = tmp_path / "mine"
    (foreign / "keep.txt").parent.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(make_sample.SampleError, match="mine"):
        make_sample.build(fake_combined, foreign, n=16)
    assert (foreign / "keep.txt").read_text() == "precious"
    with pytest.raises(make_sample.SampleError, match="lower --n"):
        make_sample.build(fake_combined, tmp_path / "tiny", n=16, max_bytes=50_000)
    assert not (tmp_path / "tiny").exists() and not list(tmp_path.glob(".tiny*"))


# --------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_script_reproduces_the_committed_sample(real_combined: Path, tmp_path: Path):
    out = tmp_path / "sample"
    assert make_sample.main(["--source", str(real_combined), "--out", str(out)]) == 0
    assert _tree_digests(out) == _tree_digests(SAMPLE)
