"""The manifest: a cleaned, split dataset stored as ``manifest.csv`` + ``manifest.json`` + ``excluded.csv``."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from gender_lib.errors import UserFileNotFoundError
from gender_lib.fileio import atomic_write, sha256_file, write_json
from gender_lib.readers import RECORD_COLUMNS, DatasetError

#: Columns of a cleaned table: the reader's record plus what cleaning learns about each image.
COLUMNS = RECORD_COLUMNS + ["age_group", "sha256", "width", "height", "mode", "note", "group"]
MANIFEST_COLUMNS = COLUMNS + ["split", "fold"]
#: Columns of the exclusion report; ``kind`` is "excluded" (an image read, then dropped),
#: "skipped" (never read as a labelled image) or "note" (about an image that was kept).
EXCLUDED_COLUMNS = ["path", "reason", "detail", "kind"]


@dataclasses.dataclass
class Dataset:
    """A cleaned, split dataset: the manifest table, the exclusion report, and how it was made."""

    table: pd.DataFrame
    excluded: pd.DataFrame
    meta: dict[str, Any]


def write_manifest(dataset: Dataset, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``manifest.csv``, ``manifest.json`` and ``excluded.csv`` to ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    manifest = out_dir / "manifest.csv"
    # A file name that is not valid UTF-8 is written back as its own bytes (surrogateescape), so
    # the manifest still opens the file; every other report shows such names escaped.
    atomic_write(manifest, lambda tmp: dataset.table.to_csv(tmp, index=False, errors="surrogateescape"))
    atomic_write(out_dir / "excluded.csv", lambda tmp: dataset.excluded.to_csv(tmp, index=False))
    write_json(out_dir / "manifest.json", {**dataset.meta, "manifest_sha256": sha256_file(manifest)})
    return manifest


def read_manifest(path: str | os.PathLike[str]) -> Dataset:
    """Read a manifest written by :func:`write_manifest`; clear errors when it is missing or damaged."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise UserFileNotFoundError(f"{path}: no manifest; build one first (notebooks/02_extract.ipynb or `gender-lib extract`)")
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError) as error:
        raise DatasetError(f"{meta_path}: manifest metadata missing or damaged ({error}); rebuild the manifest") from None
    table = pd.read_csv(
        path,
        dtype={"path": object, "age": str, "note": str, "subject": str, "group": str, "ethnicity": str},
        keep_default_na=False,
        encoding_errors="surrogateescape",
    )
    missing = [c for c in MANIFEST_COLUMNS if c not in table]
    if missing:
        raise DatasetError(f"{path}: not a gender_lib manifest (missing columns {missing})")
    excluded_path = path.parent / "excluded.csv"
    excluded = pd.read_csv(excluded_path, keep_default_na=False) if excluded_path.is_file() else pd.DataFrame(columns=EXCLUDED_COLUMNS)
    return Dataset(table, excluded, meta)


def absolute_paths(dataset: Dataset) -> list[Path]:
    """The images' absolute paths (manifest paths are relative to its ``root``)."""
    root = Path(dataset.meta["root"])
    return [root / p for p in dataset.table["path"]]
