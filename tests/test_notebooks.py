"""The notebooks as a person sees them: committed with the default run's outputs and figures as images,
and the whole chain runs on a machine without the shared data (the embedded sample is the default)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gender_lib import pipeline
from tests.notebook_checks import images, problems

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {"03_train": 1, "04_evaluate": 5, "05_visualize": 1, "06_predict": 1}


@pytest.mark.parametrize("name", pipeline.NOTEBOOKS)
def test_committed_notebook_holds_its_outputs_and_figures(name):
    path = ROOT / "notebooks" / f"{name}.ipynb"
    assert problems(path) == []
    assert images(path) >= FIGURES.get(name, 0)


def test_the_check_catches_a_cell_without_output_or_image(tmp_path):
    nb = json.loads((ROOT / "notebooks" / "03_train.ipynb").read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "plots." in "".join(cell["source"]):
            cell["outputs"] = [o for o in cell["outputs"] if "image/png" not in o.get("data", {})]
    (tmp_path / "03_train.ipynb").write_text(json.dumps(nb))
    assert any("no image/png" in p for p in problems(tmp_path / "03_train.ipynb"))
    for cell in nb["cells"]:
        cell["outputs"] = [] if cell["cell_type"] == "code" else cell.get("outputs")
    (tmp_path / "03_train.ipynb").write_text(json.dumps(nb))
    assert any("has no stored output" in p for p in problems(tmp_path / "03_train.ipynb"))


@pytest.mark.notebooks
def test_the_chain_runs_on_a_fresh_machine_without_the_shared_data(tmp_path, monkeypatch):
    """`make run`'s chain with the shared data unreachable: every notebook runs on the embedded
    sample, every plotting cell stores an image, and the figures are written."""
    empty = tmp_path / "no_datasets"
    empty.mkdir()
    monkeypatch.setenv("GENDER_LIB_DATASETS", str(empty))
    monkeypatch.setenv("GENDER_LIB_VGG_FACE_MAT", str(empty / "vgg_face.mat"))
    run_dir = pipeline.run(ROOT / "pipeline.yml", out=tmp_path / "run")
    for name in pipeline.NOTEBOOKS:
        executed = run_dir / f"{name}.ipynb"
        assert executed.is_file() and problems(executed) == [], name
        assert images(executed) >= FIGURES.get(name, 0), name
    figures = {p.name for p in (run_dir / "reports" / "figures").glob("*.png")}
    assert figures == {"training_curves.png", "confusion.png", "roc.png", "reliability.png", "risk_coverage.png", "age_confusion.png", "face_grid.png"}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert Path(manifest["root"]).name == "sample" and manifest["n_images"] >= 280
    assert os.environ["GENDER_LIB_DATASETS"] == str(empty)


@pytest.mark.notebooks
def test_notebook_02_and_the_cli_write_identical_artefacts(tmp_path):
    """One stage API: the notebook and `gender-lib extract` produce the same manifest and extraction record."""
    import papermill as pm

    from gender_lib import cli

    notebook_dir, cli_dir = tmp_path / "notebook", tmp_path / "cli"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "02_extract.ipynb"),
        str(tmp_path / "02.ipynb"),
        kernel_name="python3",
        parameters={"sample_size": 60, "workdir": str(notebook_dir)},
        progress_bar=False,
        cwd=str(ROOT / "notebooks"),
    )
    assert cli.main(["extract", "--sample-size", "60", "--workdir", str(cli_dir), "--quiet"]) == 0
    for name in ("manifest.csv", "manifest.json", "excluded.csv", "extractions/descriptor.json"):
        assert (notebook_dir / name).read_bytes() == (cli_dir / name).read_bytes(), name
    record = json.loads((cli_dir / "extractions" / "descriptor.json").read_text())
    assert record["manifest_sha256"] and record["images"] == json.loads((cli_dir / "manifest.json").read_text())["n_images"]


@pytest.mark.notebooks
def test_notebook_03_fine_tunes_headless_with_papermill(tmp_path):
    """Notebook 03 with mode finetune, as papermill runs it: level-2 maps extracted, the head then
    the top level trained, model.npz saved, its curves drawn (a minute on the sample)."""
    import papermill as pm

    from gender_lib import cli

    assert cli.main(["extract", "--sample-size", "120", "--workdir", str(tmp_path), "--quiet"]) == 0
    out = tmp_path / "03_finetune.ipynb"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "03_train.ipynb"),
        str(out),
        kernel_name="python3",
        parameters={"mode": "finetune", "flip_tta": True, "epochs": 10, "finetune_epochs": 1, "workdir": str(tmp_path)},
        progress_bar=False,
        cwd=str(ROOT / "notebooks"),
    )
    assert problems(out) == [] and images(out) >= 1
    text = "".join("".join(o.get("text", "")) for c in json.loads(out.read_text())["cells"] for o in c.get("outputs", []))
    assert "flip averaging on" in text and ("model: finetune (FinetunedNetwork)" in text or "fine-tuned, no epoch kept" in text)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["config"]["mode"] == "finetune" and meta["history"]["finetune_from"] >= 1


def test_notebook_06_names_the_model_it_really_uses():
    from gender_lib.config import DEFAULT_HEAD_NAME

    cells = json.loads((ROOT / "notebooks" / "06_predict.ipynb").read_text())["cells"]
    narration = "".join(cells[0]["source"])
    parameters = "".join(next(c for c in cells if "parameters" in c["metadata"].get("tags", []))["source"])
    printed = "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", []))
    for text in (narration, parameters, printed):
        assert DEFAULT_HEAD_NAME in text
        assert "dlib_gender_head.npz" not in text


def test_the_upload_cell_shows_a_text_fallback_in_a_static_render():
    import nbformat
    from nbconvert import HTMLExporter

    from gender_lib.widgets import STATIC_FALLBACK

    notebook = nbformat.read(ROOT / "notebooks" / "06_predict.ipynb", as_version=4)
    upload = next(c for c in notebook.cells if "upload_and_predict" in "".join(c.source))
    assert [o["data"].get("text/plain") for o in upload.outputs] == [STATIC_FALLBACK]
    body, _ = HTMLExporter().from_notebook_node(notebook)
    assert STATIC_FALLBACK.split("(")[0].strip() in body.replace("\n", " ")
