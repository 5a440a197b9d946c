"""The notebook regression check has teeth: a changed printed number makes `pytest --nbval` fail.

A controlled experiment on a copy of 03_train: executed with papermill on a small synthetic
workdir, nbval passes on it as is; after changing the head's width in its parameters cell
(outputs untouched), nbval fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from gender_lib import dataset as ds
from gender_lib import features as ft
from tests.fakes import ColourBackbone

ROOT = Path(__file__).resolve().parents[1]


def _workdir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for person in range(60):
        gender = "male" if person % 2 else "female"
        for shot in range(3):
            base = 60 if gender == "male" else 190
            pixels = np.clip(rng.normal(base, 40, (16, 16, 3)), 0, 255).astype(np.uint8)
            path = tmp_path / "faces" / gender / f"p{person}" / f"{shot}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    data = ds.build(tmp_path / "faces", progress=False)
    workdir = tmp_path / "work"
    ds.write_manifest(data, workdir)
    ft.extract_dataset(ds.read_manifest(workdir / "manifest.csv"), ColourBackbone(), cache_root=tmp_path / "cache",
                       manifest_dir=workdir, progress=False)
    return workdir


def _set_parameters(notebook: Path, **values: object) -> None:
    nb = json.loads(notebook.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    lines = []
    for line in "".join(cell["source"]).splitlines():
        name = line.split("=")[0].strip()
        lines.append(f"{name} = {values[name]!r}" if name in values else line)
    cell["source"] = "\n".join(lines)
    notebook.write_text(json.dumps(nb))


def _nbval(notebook: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", "--nbval-current-env",
                           "--nbval-sanitize-with", str(ROOT / "notebooks" / "sanitize.cfg"), str(notebook)],
                          capture_output=True, text=True, env=env, cwd=notebook.parent)


def test_changing_the_head_width_makes_nbval_fail(tmp_path, monkeypatch):
    import papermill as pm

    workdir = _workdir(tmp_path)
    env = {**os.environ, "IPYTHONDIR": str(ROOT / ".ipython"), "GENDER_LIB_DATASETS": str(tmp_path),
           "PYTHONPATH": str(ROOT)}
    # The fake backbone's cache lives outside data/processed: point the cache root there.
    env["GENDER_LIB_ROOT"] = str(tmp_path / "root")
    (tmp_path / "root" / "data" / "processed").mkdir(parents=True)
    (tmp_path / "root" / "data" / "processed" / "descriptors").symlink_to(tmp_path / "cache")
    notebook = tmp_path / "03_train.ipynb"
    notebook.write_text((ROOT / "notebooks" / "03_train.ipynb").read_text())
    _set_parameters(notebook, workdir=str(workdir), head_path=str(tmp_path / "head.keras"), reports_dir=str(tmp_path / "reports"), epochs=15)
    for key in ("IPYTHONDIR", "GENDER_LIB_ROOT"):  # the kernel papermill starts inherits these
        monkeypatch.setenv(key, env[key])
    pm.execute_notebook(str(notebook), str(notebook), kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    unchanged = _nbval(notebook, env)
    assert unchanged.returncode == 0, unchanged.stdout[-3000:]
    _set_parameters(notebook, widths=[32, 16])
    changed = _nbval(notebook, env)
    assert changed.returncode != 0
    assert "widths [16, 16]" in changed.stdout, changed.stdout[-3000:]  # nbval shows the old printed line
