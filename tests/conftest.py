"""Shared fixtures: tiny synthetic inputs built on the fly, and the real shared data when present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from gender_lib import config

REAL_COMBINED = config.paths().datasets / "combined" / "aligned"
REAL_FOLDS = config.paths().datasets / "adience_folds"


@pytest.fixture
def real_combined() -> Path:
    """The real combined/aligned folder, or a skip.

    ``.ci/run`` sets ``GENDER_LIB_REQUIRE_REAL_DATA=1`` where the shared data exists, which turns
    that skip into a failure, so a misplaced dataset cannot make real-data tests pass silently.
    """
    if not REAL_COMBINED.is_dir():
        message = f"real data not found at {REAL_COMBINED} (set GENDER_LIB_DATASETS)"
        if os.environ.get("GENDER_LIB_REQUIRE_REAL_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return REAL_COMBINED


@pytest.fixture
def real_folds() -> Path:
    if not REAL_FOLDS.is_dir():
        message = f"real Adience folds not found at {REAL_FOLDS} (set GENDER_LIB_DATASETS)"
        if os.environ.get("GENDER_LIB_REQUIRE_REAL_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return REAL_FOLDS


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
