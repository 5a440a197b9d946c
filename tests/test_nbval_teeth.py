"""The notebook regression check has teeth, on the committed 03_train itself: a copy whose head width
is changed (outputs untouched) fails `pytest --nbval`, because the printed summary differs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.notebook_checks import nbval
from tests.test_machine_independence import copy_chain

ROOT = Path(__file__).resolve().parents[1]


def _set_parameters(notebook: Path, **values: object) -> None:
    nb = json.loads(notebook.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    lines = []
    for line in "".join(cell["source"]).splitlines():
        name = line.split("=")[0].strip()
        lines.append(f"{name} = {values[name]!r}" if name in values else line)
    cell["source"] = "\n".join(lines)
    notebook.write_text(json.dumps(nb))


@pytest.mark.notebooks
def test_changing_the_head_width_of_the_committed_03_makes_nbval_fail(chain_work, tmp_path):
    work, cache = copy_chain(chain_work, tmp_path)  # the default run's manifest and descriptors, as notebook 02 makes them
    notebook = tmp_path / "03_train.ipynb"
    notebook.write_text((ROOT / "notebooks" / "03_train.ipynb").read_text())
    _set_parameters(notebook, widths=[64, 64, 64])
    env = {**os.environ, "GENDER_LIB_WORKDIR": str(work), "GENDER_LIB_CACHE": str(cache), "IPYTHONDIR": os.environ["IPYTHONDIR"]}
    changed = nbval([notebook], env, tmp_path)
    assert changed.returncode != 0, changed.stdout[-3000:]
    assert "widths [16, 16]" in changed.stdout and "widths [64, 64, 64]" in changed.stdout, changed.stdout[-3000:]
