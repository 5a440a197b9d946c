"""The notebooks as a person sees them: committed with the default run's outputs and figures as
images; the chain (run once per test session, :func:`tests.conftest.chain_work`) works on the
embedded sample alone and leaves its figures; papermill runs notebooks headless."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gender_lib import config, pipeline
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
def test_the_chain_runs_on_the_embedded_sample_alone_and_writes_its_figures(chain_work):
    """The default chain reads nothing of the shared data (a fresh machine has none): the manifest is
    the embedded sample's, dlib's network was verified on sample faces, and no file of the chain
    names the shared data's folder; every figure is written."""
    figures = {p.name for p in (chain_work / "reports" / "figures").glob("*.png")}
    assert figures == {"training_curves.png", "confusion.png", "roc.png", "reliability.png", "risk_coverage.png", "age_confusion.png", "face_grid.png"}
    manifest = json.loads((chain_work / "manifest.json").read_text())
    assert Path(manifest["root"]) == config.paths().sample and manifest["n_images"] >= 280
    (sidecar,) = (Path(os.environ["GENDER_LIB_CACHE"]) / "dlib_onnx").glob("*.json")
    assert json.loads(sidecar.read_text())["verification"]["inputs"].endswith("real face chips from sample/")
    shared = str(config.paths().datasets)
    assert not [p for p in chain_work.rglob("*") if p.is_file() and p.suffix in (".json", ".csv", ".md") and shared in p.read_text(errors="replace")]


@pytest.mark.notebooks
def test_papermill_runs_a_notebook_headless_with_a_list_given_as_text(chain_work, tmp_path):
    """`make run`'s path (papermill, parameters from a YAML) on notebook 03 in a copy of the chain's
    work folder; `widths` given as text, as `papermill -p widths '[8, 8]'` passes it."""
    import shutil

    run = tmp_path / "run.yml"
    run.write_text("name: x\nnotebooks: [03_train]\nparameters:\n  widths: '[8, 8]'\n  epochs: 2\n")
    run_dir = pipeline.run(run, out=shutil.copytree(chain_work, tmp_path / "work"))
    executed = run_dir / "03_train.ipynb"
    assert executed.is_file() and problems(executed) == [] and images(executed) >= 1
    assert json.loads((run_dir / "model.json").read_text())["config"]["widths"] == [8, 8]


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
