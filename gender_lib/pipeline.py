"""Run the numbered notebooks in order with papermill, parameters from one YAML file.

Each run writes executed copies to ``runs/<name>/`` along with its own manifest, head and
reports, so runs never overwrite each other or the committed notebooks. The first failing
notebook stops the run with its name and the error.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from gender_lib.errors import ConfigError, GenderLibError

NOTEBOOKS = ("01_convert", "02_extract", "03_train", "04_evaluate", "05_visualize", "06_predict")


class PipelineError(GenderLibError, RuntimeError):
    """A notebook of the pipeline failed; the message names it and the error."""


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a pipeline YAML: ``name``, optional ``notebooks`` and ``parameters`` (checked against Config)."""
    from gender_lib.config import load_yaml_parameters

    config = load_yaml_parameters(path)
    notebooks = config.get("notebooks") or list(NOTEBOOKS)
    unknown = [n for n in notebooks if n not in NOTEBOOKS]
    if unknown:
        raise ConfigError(f"{path}: unknown notebooks {unknown}; choose from {list(NOTEBOOKS)}")
    return {**config, "notebooks": notebooks}


def run(
    config_path: str | os.PathLike[str],
    name: str | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    only: list[str] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> Path:
    """Execute the notebooks of ``config_path`` into ``runs/<name>/`` (or ``out``); returns that folder.

    The run folder is the notebooks' work folder: manifest, extraction record, head and
    reports all land there (the descriptor cache stays shared: it is content-addressed).
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from gender_lib import config as cfg

    paths = cfg.paths(root)
    config = load_config(config_path)
    name = name or str(config.get("name") or "default")
    run_dir = Path(out) if out else paths.runs / name
    run_dir.mkdir(parents=True, exist_ok=True)
    given = {**config["parameters"], "workdir": str(run_dir)}
    selected = only or config["notebooks"]
    declared_any = set().union(*(pm.inspect_notebook(str(paths.root / "notebooks" / f"{n}.ipynb")) for n in selected if n in NOTEBOOKS))
    unused = sorted(set(config["parameters"]) - declared_any)
    if unused:
        raise ConfigError(
            f"{config_path}: {', '.join(unused)} would be ignored: no notebook of this run declares it (set it through the CLI or the stage API instead)"
        )
    # the project's IPython profile keeps TF's C++ log lines out of cell outputs (one given in the environment is used as it is)
    env = {"IPYTHONDIR": os.environ.get("IPYTHONDIR") or str(paths.root / ".ipython"), "GENDER_LIB_ROOT": str(paths.root)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits it: TF's C++ logs stay out of cell outputs
    try:
        for notebook in only or config["notebooks"]:
            if notebook not in NOTEBOOKS:
                raise ConfigError(f"unknown notebook {notebook!r}; choose from {list(NOTEBOOKS)}")
            source = paths.root / "notebooks" / f"{notebook}.ipynb"
            declared = pm.inspect_notebook(str(source))
            parameters = {k: v for k, v in given.items() if k in declared}
            start = time.perf_counter()
            print(f"running {notebook} with {parameters}", flush=True)
            try:
                pm.execute_notebook(
                    str(source), str(run_dir / source.name), parameters=parameters, kernel_name="python3", cwd=str(paths.root / "notebooks"), progress_bar=False
                )
            except PapermillExecutionError as error:
                raise PipelineError(
                    f"{notebook}.ipynb failed in cell {error.exec_count}: {error.ename}: {error.evalue} (executed copy: {run_dir / source.name})"
                ) from None
            print(f"  {notebook} done in {time.perf_counter() - start:.0f} s", flush=True)
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return run_dir
