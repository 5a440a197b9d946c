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

NOTEBOOKS = ("01_convert", "02_extract", "03_train", "04_evaluate", "05_visualize", "06_predict")


class PipelineError(RuntimeError):
    """A notebook of the pipeline failed; the message names it and the error."""


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a pipeline YAML: ``name``, optional ``notebooks`` and ``parameters``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pipeline config (copy pipeline.yml and edit it)")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(config, dict) or not isinstance(config.get("parameters", {}), dict):
        raise ValueError(f"{path}: expected a mapping with 'name' and a 'parameters' mapping")
    unknown = [n for n in config.get("notebooks", NOTEBOOKS) if n not in NOTEBOOKS]
    if unknown:
        raise ValueError(f"{path}: unknown notebooks {unknown}; choose from {list(NOTEBOOKS)}")
    return config


def run(
    config_path: str | os.PathLike[str],
    name: str | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    only: list[str] | None = None,
) -> Path:
    """Execute the notebooks of ``config_path`` into ``runs/<name>/``; returns that folder."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from gender_lib import config as cfg

    paths = cfg.paths(root)
    config = load_config(config_path)
    name = name or str(config.get("name") or "default")
    run_dir = paths.runs / name
    run_dir.mkdir(parents=True, exist_ok=True)
    given = dict(config.get("parameters", {}))
    # Everything a run writes stays inside its folder.
    given.update(workdir=str(run_dir / "processed"), head_path=str(run_dir / "head.keras"), reports_dir=str(run_dir / "reports"))
    env = {"IPYTHONDIR": str(paths.root / ".ipython")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits it: TF's C++ logs stay out of cell outputs
    try:
        for notebook in only or config.get("notebooks", NOTEBOOKS):
            source = paths.root / "notebooks" / f"{notebook}.ipynb"
            declared = pm.inspect_notebook(str(source))
            parameters = {k: v for k, v in given.items() if k in declared}
            start = time.perf_counter()
            print(f"running {notebook} with {parameters}")
            try:
                pm.execute_notebook(str(source), str(run_dir / source.name), parameters=parameters, kernel_name="python3",
                                    cwd=str(paths.root / "notebooks"), progress_bar=False)
            except PapermillExecutionError as error:
                raise PipelineError(f"{notebook}.ipynb failed in cell {error.exec_count}: {error.ename}: {error.evalue} "
                                    f"(executed copy: {run_dir / source.name})") from None
            print(f"  {notebook} done in {time.perf_counter() - start:.0f} s")
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return run_dir
