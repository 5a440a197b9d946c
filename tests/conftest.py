"""Shared fixtures: tiny synthetic inputs built on the fly, and the real shared data when present."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from gender_lib import config as gl_config

_SCRATCH: list[Path] = []
_STARTED: list[float] = []


def pytest_configure(config: pytest.Config) -> None:
    """Everything a test run writes by default goes to one scratch folder, never into the checkout,
    and the scratch folder is removed at the end: the stages' work folder and cache, pytest's own
    ``tmp_path`` folders, and (through ``TMPDIR``) what the notebook kernels, JupyterLab, Chromium
    and Ray put in the temp folder. Subprocesses inherit this environment."""
    scratch = Path(tempfile.mkdtemp(prefix="gender_lib-tests-"))
    _SCRATCH.append(scratch)
    _STARTED.append(time.time())
    (scratch / "tmp").mkdir()
    os.environ["TMPDIR"] = str(scratch / "tmp")
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    os.environ.setdefault("GENDER_LIB_WORKDIR", str(scratch / "work"))
    os.environ.setdefault("GENDER_LIB_CACHE", str(scratch / "cache"))
    # The project's IPython profile (its kernel config keeps C++ log lines out of cell outputs), copied:
    # kernels write their history, logs and connection files into IPYTHONDIR, never into the checkout.
    profile = scratch / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[1] / ".ipython" / "profile_default" / "ipython_kernel_config.py", profile)
    os.environ["IPYTHONDIR"] = str(scratch / "ipython")
    _CHECKOUT.extend(_untracked())


def _untracked() -> list[str]:
    """Files in the checkout that git does not track (ignored ones included): what a test run must not add to."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "--ignored", "-z"], cwd=root, capture_output=True, text=True)
    return sorted(p for p in out.stdout.split("\0") if p and not p.startswith((".venv/", ".pytest_cache/")) and "__pycache__" not in p)


_CHECKOUT: list[str] = []  # the untracked files before this run


def pytest_unconfigure(config: pytest.Config) -> None:
    for scratch in _SCRATCH:
        shutil.rmtree(scratch, ignore_errors=True)


REAL_COMBINED = gl_config.paths().datasets / "combined" / "aligned"
REAL_FOLDS = gl_config.paths().datasets / "adience_folds"


def _real(path: Path, what: str) -> Path:
    """``path`` if the shared real data is there, else a skip.

    ``.ci/run`` sets ``GENDER_LIB_REQUIRE_REAL_DATA=1`` where the shared data exists, which turns
    the skip into a failure, so a misplaced dataset cannot make real-data tests pass silently.
    """
    if not path.is_dir():
        message = f"real {what} not found at {path} (set GENDER_LIB_DATASETS)"
        if os.environ.get("GENDER_LIB_REQUIRE_REAL_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def real_combined() -> Path:
    """The real combined/aligned folder (29,437 faces)."""
    return _real(REAL_COMBINED, "data")


@pytest.fixture
def real_fddb() -> Path:
    """The real fddb_dev folder (133 news photos, 221 marked faces)."""
    return _real(gl_config.paths().datasets / "fddb_dev", "fddb_dev")


@pytest.fixture
def real_folds() -> Path:
    """The real Adience fold files."""
    return _real(REAL_FOLDS, "Adience folds")


@pytest.fixture
def sample_faces() -> Path:
    """The 300 real faces embedded in the repository (data/sample): present on every machine."""
    path = gl_config.paths().sample
    if not path.is_dir():
        pytest.fail(f"{path} is missing: it is part of the repository")
    return path


@pytest.fixture(scope="module")
def toy_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model on dlib descriptors trained on random numbers: tests plumbing, not accuracy."""
    from gender_lib.backbones import DlibBackbone
    from tests.fakes import toy_model

    return toy_model(DlibBackbone().describe(), tmp_path_factory.mktemp("head") / "toy_head.npz")[0]


@pytest.fixture(scope="module")
def predictor(toy_head: Path):
    """The toy model with the real dlib backbone, ready for photos."""
    from gender_lib.backbones import DlibBackbone
    from gender_lib.predict import Predictor

    return Predictor(toy_head, backbone=DlibBackbone())


@pytest.fixture
def untracked_before() -> list[str]:
    """The checkout's untracked files when this test run started (see :func:`_untracked`)."""
    return list(_CHECKOUT)


@pytest.fixture(scope="session")
def chain_work() -> Path:
    """The work folder of this test run's notebook chain (01-06 on the embedded sample, default
    parameters): the one ``pytest --nbval ... notebooks tests`` (``make test``) executed before the
    tests, or, where the notebooks were not collected, a papermill run of the chain made here once.
    Its store is the run's ``$GENDER_LIB_CACHE``. Read it, or copy it before changing anything."""
    from gender_lib import pipeline

    work = Path(os.environ["GENDER_LIB_WORKDIR"])
    grid = work / "reports" / "figures" / "face_grid.png"
    if not (grid.is_file() and grid.stat().st_mtime >= _STARTED[0]):  # nbval did not run 01-05 in this session
        work = pipeline.run(Path(__file__).resolve().parents[1] / "pipeline.yml", out=Path(os.environ["TMPDIR"]).parent / "chain")
    return work
