"""Train and evaluate from a workdir (what notebooks 03/04 and the CLI run), and cross-dataset evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gender_lib import dataset as ds
from gender_lib import evaluate as ev
from gender_lib import features as ft
from gender_lib import head as hd
from tests.fakes import ColourBackbone

FAST = hd.HeadConfig(epochs=15, patience=4, seed=0)


@pytest.fixture
def workdir(tmp_path: Path) -> tuple[Path, Path]:
    """Synthetic faces whose colour gives away the gender, extracted with the colour backbone."""
    rng = np.random.default_rng(0)
    for person in range(80):
        gender = "male" if person % 2 else "female"
        for shot in range(3):
            pixels = np.clip(rng.normal(70 if gender == "male" else 180, 35, (16, 16, 3)), 0, 255).astype(np.uint8)
            path = tmp_path / "faces" / gender / f"p{person}" / f"{shot}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    work, cache = tmp_path / "work", tmp_path / "cache"
    ds.write_manifest(ds.build(tmp_path / "faces", progress=False), work)
    ft.extract_dataset(ds.read_manifest(work / "manifest.csv"), ColourBackbone(), cache_root=cache, manifest_dir=work, progress=False)
    return work, cache


def test_train_then_evaluate_on_the_test_split_writes_reports(workdir, tmp_path):
    work, cache = workdir
    result = hd.fit_from_workdir(work, tmp_path / "head.keras", FAST, cache_root=cache)
    assert result.meta["backbone"]["id"] == "colour-v1" and result.meta["descriptor_dim"] == 6
    assert result.meta["manifest"]["sha256"] == json.loads((work / "manifest.json").read_text())["manifest_sha256"]
    assert set(result.meta["counts"]) == {"train", "val", "test"} and 0 < result.meta["threshold"] < 1
    results = ev.evaluate_workdir(tmp_path / "head.keras", work, reports_dir=tmp_path / "reports", n_boot=50, cache_root=cache)
    head = results["models"]["mlp head"]
    assert head["n"] == result.meta["counts"]["test"] and head["accuracy"] > 0.9
    assert set(head["by"]) == {"gender", "age_group", "source"}
    assert "logistic regression" in results["models"]
    markdown = (tmp_path / "reports" / "evaluation.md").read_text()
    assert "| mlp head |" in markdown and "## By gender" in markdown


def test_head_refuses_a_workdir_extracted_with_another_backbone(workdir, tmp_path):
    work, cache = workdir
    hd.fit_from_workdir(work, tmp_path / "head.keras", FAST, cache_root=cache)
    other = ColourBackbone(tag="v2")
    ft.extract_dataset(ds.read_manifest(work / "manifest.csv"), other, cache_root=cache, manifest_dir=work, progress=False)
    with pytest.raises(ft.CacheMismatchError, match="trained on colour-v1 descriptors but .* extracted with colour-v2"):
        ev.evaluate_workdir(tmp_path / "head.keras", work, n_boot=10, cache_root=cache)


@pytest.mark.realdata
def test_saved_head_scores_another_labelled_folder(real_combined, tmp_path):
    """Cross-dataset: the committed dlib head on real faces rearranged as male/female class folders."""
    root = Path(__file__).resolve().parents[1]
    folder = tmp_path / "other"
    for gender, source in (("male", "40_M"), ("female", "40_F")):
        (folder / gender).mkdir(parents=True)
        for path in sorted(real_combined.glob(f"{source}/nm*.jpg"))[:6]:
            shutil.copy(path, folder / gender / path.name)
    results = ev.evaluate_folder(root / "checkpoints" / "dlib_gender_head.keras", folder, reports_dir=tmp_path / "reports", n_boot=20)
    report = results["models"]["mlp head"]
    assert report["n"] == 12 and report["accuracy"] >= 10 / 12
    assert (tmp_path / "reports" / "evaluation_other.md").is_file()
