"""The papermill pipeline and the one config: checks of pipeline.yml and the notebooks' parameters
against Config, and a failing notebook stops the run with its name and error."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import papermill as pm
import pytest

from gender_lib import config, pipeline
from gender_lib.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_config_file_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="no pipeline config"):
        pipeline.load_config(tmp_path / "missing.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("name: x\nnotebooks: [02_extract, 07_magic]\n")
    with pytest.raises(ConfigError, match="unknown notebooks \\['07_magic'\\]"):
        pipeline.load_config(bad)
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        pipeline.load_config(bad)


def test_a_misspelt_parameter_is_an_error_naming_it(tmp_path):
    bad = tmp_path / "typo.yml"
    bad.write_text("name: x\nparameters:\n  epochs: 3\n  widht: [8]\n")
    with pytest.raises(ConfigError, match="unknown parameter 'widht' \\(did you mean 'widths'\\?\\)"):
        pipeline.load_config(bad)
    bad.write_text("name: x\nparamters:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="unknown top-level key 'paramters'"):
        pipeline.load_config(bad)
    bad.write_text("name: x\nparameters:\n  epochs: many\n")
    with pytest.raises(ConfigError, match="epochs must be int"):
        pipeline.load_config(bad)
    bad.write_text("name: x\nparameters:\n  backbone: resnet\n")
    with pytest.raises(ConfigError, match="backbone must be one of"):
        pipeline.load_config(bad)


def test_a_parameter_no_notebook_declares_is_refused_not_dropped(tmp_path):
    run = tmp_path / "run.yml"
    run.write_text("name: x\nnotebooks: [03_train]\nparameters:\n  vggface_layer: fc8\n")
    with pytest.raises(ConfigError, match="vggface_layer would be ignored"):
        pipeline.run(run, out=tmp_path / "out")


def test_every_config_field_has_one_flat_name_and_retired_names_say_what_replaced_them():
    import dataclasses

    fields = [f.name for section in config.SECTIONS for f in dataclasses.fields(getattr(config.DEFAULT, section))]
    assert len(fields) == len(set(fields))  # a flat name is unique across sections
    assert set(config.Config.field_sections()) == {"seed", *fields}
    assert not set(config.RETIRED) & set(fields)
    for name, why in config.RETIRED.items():
        with pytest.raises(ConfigError, match=f"'{name}' was retired in gender_lib 0.2: {re.escape(why)}"):
            config.DEFAULT.replace({name: "x"})


def _declared(name: str) -> dict:
    return {k: ast.literal_eval(v["default"]) for k, v in pm.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb")).items()}


@pytest.mark.parametrize("name", pipeline.NOTEBOOKS)
def test_notebook_parameters_are_config_fields_with_config_defaults(name):
    defaults = config.DEFAULT.flat()
    for parameter, value in _declared(name).items():
        assert parameter in defaults, f"{name} declares {parameter}, which Config does not have"
        assert value == defaults[parameter], f"{name}: {parameter} = {value!r}, Config default {defaults[parameter]!r}"


def test_pipeline_yml_is_the_config_defaults():
    parameters = pipeline.load_config(ROOT / "pipeline.yml")["parameters"]
    defaults = config.DEFAULT.flat()
    assert parameters and all(parameters[k] == defaults[k] for k in parameters)
    declared = set().union(*(_declared(n) for n in pipeline.NOTEBOOKS))
    assert set(parameters) <= declared, f"pipeline.yml sets parameters no notebook declares: {set(parameters) - declared}"


def test_cli_flags_come_from_config(capsys):
    from gender_lib import cli

    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--widths", "--head-batch-size", "--learning-rate", "--workdir", "--cache-dir", "--seed"):
        assert flag in text
    args = cli.build_parser().parse_args(["train", "--widths", "32", "8", "--epochs", "3"])
    cfg = cli._config(args)
    assert cfg.head.widths == (32, 8) and cfg.head.epochs == 3 and cfg.head.dropout == config.DEFAULT.head.dropout


def test_first_failing_notebook_stops_the_run_with_its_name_and_error(tmp_path):
    run = tmp_path / "run.yml"
    run.write_text(f"name: broken\nnotebooks: [02_extract, 03_train]\nparameters:\n  data_root: {tmp_path / 'no_such_folder'}\n")
    with pytest.raises(pipeline.PipelineError, match="02_extract.ipynb failed.*no such data folder"):
        pipeline.run(run, out=tmp_path / "out")
    assert (tmp_path / "out" / "02_extract.ipynb").is_file()
    assert not (tmp_path / "out" / "03_train.ipynb").exists()


def test_a_retired_flag_on_the_command_line_says_what_replaced_it(capsys):
    from gender_lib import cli

    assert cli.main(["train", "--mode", "finetune"]) == 2
    assert "'mode' was retired in gender_lib 0.2: the frozen head is the one model kind" in capsys.readouterr().err
    assert cli.main(["predict", "x.jpg", "--engine", "keras"]) == 2
    assert "'engine' was retired in gender_lib 0.2: inference always runs on ONNX Runtime" in capsys.readouterr().err
