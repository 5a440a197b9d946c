"""The papermill pipeline: config checks, and a failing notebook stops the run with its name and error."""

from __future__ import annotations

import pytest

from gender_lib import pipeline


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no pipeline config"):
        pipeline.load_config(tmp_path / "missing.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("name: x\nnotebooks: [02_extract, 07_magic]\n")
    with pytest.raises(ValueError, match="unknown notebooks \\['07_magic'\\]"):
        pipeline.load_config(bad)
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        pipeline.load_config(bad)


def test_first_failing_notebook_stops_the_run_with_its_name_and_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GENDER_LIB_ROOT", str(pipeline_root := tmp_path / "project"))
    import shutil
    from pathlib import Path

    source = Path(__file__).resolve().parents[1]
    shutil.copytree(source / "notebooks", pipeline_root / "notebooks")
    shutil.copytree(source / ".ipython", pipeline_root / ".ipython")
    config = tmp_path / "run.yml"
    config.write_text(f"name: broken\nnotebooks: [02_extract, 03_train]\nparameters:\n  data_root: {tmp_path / 'no_such_folder'}\n")
    with pytest.raises(pipeline.PipelineError, match="02_extract.ipynb failed.*DatasetError.*no such file or folder"):
        pipeline.run(config)
    assert (pipeline_root / "runs" / "broken" / "02_extract.ipynb").is_file()
    assert not (pipeline_root / "runs" / "broken" / "03_train.ipynb").exists()


def test_pipeline_yml_defaults_are_the_committed_notebooks_defaults():
    import ast
    from pathlib import Path

    import papermill as pm

    root = Path(__file__).resolve().parents[1]
    config = pipeline.load_config(root / "pipeline.yml")
    declared: dict[str, list] = {}
    for name in pipeline.NOTEBOOKS:
        for parameter, info in pm.inspect_notebook(str(root / "notebooks" / f"{name}.ipynb")).items():
            declared.setdefault(parameter, []).append(ast.literal_eval(info["default"]))
    for parameter, value in config["parameters"].items():
        assert parameter in declared, f"pipeline.yml sets {parameter}, which no notebook declares"
        assert all(default == value for default in declared[parameter]), f"{parameter}: pipeline.yml {value!r} vs notebooks {declared[parameter]}"
