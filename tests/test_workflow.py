"""The stage API end to end on synthetic faces: manifest -> extract -> train -> evaluate, cross-dataset
evaluation (problems reported, not dropped), and the committed head on people it never saw."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gender_lib import config, features, stages
from tests.fakes import ColourBackbone


def _faces(folder: Path, people: int = 80, seed: int = 0) -> Path:
    """Faces whose colour gives away the gender, three photos a person, in class folders."""
    rng = np.random.default_rng(seed)
    for person in range(people):
        gender = "male" if person % 2 else "female"
        for shot in range(3):
            pixels = np.clip(rng.normal(70 if gender == "male" else 180, 35, (40, 40, 3)), 0, 255).astype(np.uint8)
            path = folder / gender / f"p{seed}_{person}" / f"{shot}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    return folder


@pytest.fixture
def cfg(tmp_path: Path) -> config.Config:
    return config.DEFAULT.replace(
        data_root=str(_faces(tmp_path / "faces")), workdir=str(tmp_path / "work"), cache_dir=str(tmp_path / "cache"), epochs=15, patience=4, n_boot=50
    )


@pytest.fixture
def extracted(cfg: config.Config) -> config.Config:
    stages.manifest(cfg, progress=False)
    stages.extract(cfg, progress=False, backbone=ColourBackbone())
    return cfg


def test_train_then_evaluate_on_the_test_split_writes_reports(extracted):
    work = extracted.workdir()
    trained = stages.train(extracted)
    assert trained.path == work / "model.npz" and trained.meta["backbone"]["id"] == "colour-v1" and trained.model.kind == "frozen"
    assert trained.meta["manifest"]["sha256"] == json.loads((work / "manifest.json").read_text())["manifest_sha256"]
    assert set(trained.meta["counts"]) == {"train", "val", "test"} and 0 < trained.meta["threshold"] == trained.model.threshold_ < 1
    assert "widths [16, 16]" in trained.summary()
    evaluation = stages.evaluate(extracted)  # default head: the one trained in this work folder
    head = evaluation.head_report
    assert head["n"] == trained.meta["counts"]["test"] and head["accuracy"] > 0.9
    assert set(head["by"]) == {"gender", "age_group", "source"} and "logistic regression" in evaluation.results["models"]
    markdown = (work / "reports" / "evaluation.md").read_text()
    assert "| mlp head |" in markdown and "## By gender" in markdown
    assert stages.read_evaluation(extracted)["models"]["mlp head"]["n"] == head["n"]


def _utkface(folder: Path, n: int = 120, seed: int = 5) -> Path:
    """UTKFace-named faces (the colour gives the gender away), ethnicities White and Black in turn."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(n):
        female = i % 2
        pixels = np.clip(rng.normal(180 if female else 70, 35, (40, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{20 + i % 40}_{female}_{(i // 2) % 2}_2017011219{i:07d}.jpg.chip.jpg", format="JPEG")
    return folder


def test_two_data_folders_make_one_dataset_split_per_source_reported_by_ethnicity_and_left_out_in_turn(cfg, tmp_path):
    both = cfg.replace(data_root=f"{cfg.data.data_root}{os.pathsep}{_utkface(tmp_path / 'utk')}")
    made = stages.manifest(both, progress=False)
    table = made.dataset.table
    assert set(made.dataset.meta["layout"].split("+")) == {"folders", "utkface"}
    assert table.groupby("source")["split"].nunique().to_dict() == {"faces": 3, "utkface": 3}  # each source split three ways
    assert set(table.loc[table["source"] == "utkface", "ethnicity"]) == {"White", "Black"} and set(table.loc[table["source"] == "faces", "ethnicity"]) == {""}
    stages.extract(both, progress=False, backbone=ColourBackbone())
    stages.train(both, progress=False)
    evaluation = stages.evaluate(both)
    ethnicity = evaluation.results["ethnicity"]
    assert set(ethnicity["by"]) == {"Black", "White"} and ethnicity["n"] == int((table[table["split"] == "test"]["ethnicity"] != "").sum())
    assert "by ethnicity" in evaluation.summary() and "## By ethnicity and age band" in (both.workdir() / "reports" / "evaluation.md").read_text()
    held = stages.leave_one_source_out(both, progress=False)
    assert set(held.sources) == {"faces", "utkface"} and all(r["n"] > 0 and 0 <= r["coverage"] <= 1 for r in held.sources.values())
    assert held.report.is_file() and "leave one source out" in held.summary()


def test_leaving_out_the_only_source_is_a_stage_error(extracted):
    stages.train(extracted, progress=False)
    with pytest.raises(stages.StageError, match="one source"):
        stages.leave_one_source_out(extracted, progress=False)


def test_same_seed_gives_the_same_metrics(extracted, tmp_path):
    first = stages.train(extracted, output=tmp_path / "a.npz").meta["val_metrics"]
    second = stages.train(extracted, output=tmp_path / "b.npz").meta["val_metrics"]
    assert first == second


def test_evaluate_refuses_a_workdir_extracted_with_another_backbone(extracted):
    stages.train(extracted)
    stages.extract(extracted, progress=False, backbone=ColourBackbone(tag="v2"))
    with pytest.raises(features.CacheMismatchError, match="trained on colour-v1 rows but .* extracted with colour-v2"):
        stages.evaluate(extracted)


def test_evaluating_a_head_trained_on_an_older_split_is_refused(extracted):
    stages.train(extracted)
    stages.manifest(extracted.replace(seed=1), progress=False)  # a new split in the same work folder
    stages.extract(extracted, progress=False, backbone=ColourBackbone())
    with pytest.raises(stages.StageError, match="trained on another manifest"):
        stages.evaluate(extracted)


def test_a_cache_that_misses_descriptors_is_an_error_not_a_smaller_dataset(extracted, tmp_path):
    other_cache = extracted.replace(cache_dir=str(tmp_path / "other_cache"))
    features.cache_for(ColourBackbone(), tmp_path / "other_cache").add(["x" * 64], np.zeros((1, 6)))
    with pytest.raises(stages.StageError, match="holds descriptors for 0 of the"):
        stages.train(other_cache)


def test_train_before_extract_says_what_to_run(cfg):
    stages.manifest(cfg, progress=False)
    with pytest.raises(stages.StageError, match="no descriptor rows were extracted.*gender-lib extract"):
        stages.train(cfg)


def test_cross_evaluation_reports_corrupt_and_missing_images(extracted, tmp_path):
    """A CSV-labelled folder with a corrupt file and a missing one: both counted and listed, report names plain."""
    stages.train(extracted)
    other = _faces(tmp_path / "other", people=20, seed=1)
    rows = ["path,gender"] + [f"{p.relative_to(other)},{'m' if p.parts[-3] == 'male' else 'f'}" for p in sorted(other.rglob("*.png"))]
    (other / "broken.png").write_bytes(b"not a png at all")
    rows += ["broken.png,m", "gone.png,f"]
    (other / "labels.csv").write_text("\n".join(rows) + "\n")
    result = stages.cross_evaluate(extracted, other / "labels.csv", head=extracted.workdir() / "model.npz", progress=False, backbone=ColourBackbone())
    assert result.head_report["n"] == 60 and result.excluded == 2
    assert result.reports[0].name == "evaluation_labels.json"  # not evaluation_labels.csv.json
    listed = result.excluded_list.read_text()
    assert "broken.png" in listed and "gone.png" in listed
    assert "left out: 2 images" in result.summary()


def test_cross_evaluation_without_a_head_uses_the_committed_one(cfg, tmp_path, monkeypatch):
    seen = {}

    def fake_load(path, **_):
        seen["path"] = path
        raise stages.StageError("stop here")

    monkeypatch.setattr("gender_lib.modeling.load", fake_load)
    with pytest.raises(stages.StageError, match="stop here"):
        stages.cross_evaluate(cfg, tmp_path / "faces", progress=False)
    assert seen["path"] == config.paths().default_head and seen["path"].is_file()


@pytest.mark.realdata
def test_committed_head_scores_people_it_never_saw(real_combined, tmp_path):
    """Cross-dataset: the committed head on 20 faces of its own *test* split, rearranged as male/female
    class folders. The split needs UTKFace to rebuild, so the faces are listed in
    tests/data/shipped_test_faces.txt (written from the shipped model's manifest); the model's
    sidecar must count a test split, and each listed face must exist in the shared data."""
    meta = json.loads(config.paths().default_head.with_suffix(".json").read_text())
    assert meta["manifest"]["protocol"] == "person" and meta["counts"]["test"] > 0
    listed = [line for line in (Path(__file__).parent / "data" / "shipped_test_faces.txt").read_text().splitlines() if line and not line.startswith("#")]
    folder = tmp_path / "other"
    for rel in listed:
        word = "male" if Path(rel).parts[0].endswith("_M") else "female"
        (folder / word).mkdir(parents=True, exist_ok=True)
        shutil.copy(real_combined / rel, folder / word / Path(rel).name)
    cfg = config.DEFAULT.replace(workdir=str(tmp_path / "work"), n_boot=20)
    result = stages.cross_evaluate(cfg, folder, progress=False)
    assert result.head_report["n"] == 20 and result.head_report["accuracy"] >= 0.85
    assert (tmp_path / "work" / "reports" / "evaluation_other.md").is_file()


def test_a_work_folder_names_its_current_model_and_never_guesses_by_file_time(extracted, tmp_path, capsys):
    from gender_lib import cli

    work = extracted.workdir()
    first = stages.train(extracted)
    assert first.replaced is None and stages.current_model(work) == first.path
    assert json.loads((work / "current_model.json").read_text()) == {"path": "model.npz", "kind": "frozen"}
    elsewhere = tmp_path / "elsewhere" / "mine.npz"
    assert cli.main(["train", "--workdir", str(work), "--cache-dir", str(extracted.cache_dir()), "-o", str(elsewhere), "--quiet"]) == 0
    assert "replaces model.npz (kind frozen)" in capsys.readouterr().out
    assert stages.current_model(work) == elsewhere.resolve()
    os.utime(work / "model.npz")  # a newer file does not change which model is current: the record says
    assert stages.evaluate(extracted).results["meta"]["head"] == "mine.npz"
    (work / "current_model.json").unlink()  # no record: a question, not a guess
    with pytest.raises(stages.StageError, match="no model was trained here.*name one with --head"):
        stages.evaluate(extracted)
    assert stages.evaluate(extracted, head=elsewhere).results["meta"]["head"] == "mine.npz"
