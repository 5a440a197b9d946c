"""Build a dataset: read a layout -> clean (decode, hash, de-duplicate) -> split by person.

The pieces live in their own modules: :mod:`gender_lib.images` (decoding),
:mod:`gender_lib.readers` (layouts), :mod:`gender_lib.splits` (person-disjoint splits) and
:mod:`gender_lib.manifest` (the stored table). This module cleans and ties them together in
:func:`build`, and writes the reports.

Counting, as :func:`build` records it in ``meta`` and :func:`cleaning_summary` prints it:

* ``n_read``: labelled image files the reader found (one per record);
* ``n_kept``: of those, the images in the cleaned table; ``n_excluded``: the others, each
  with exactly one ``kind == "excluded"`` line in the exclusion report, so
  ``n_read == n_kept + n_excluded``;
* ``n_skipped``: files, folders and metadata rows the reader did not turn into a labelled
  image (non-images, unlabelled files, rows without a file); not part of ``n_read``;
* ``n_notes``: report lines about kept images (``kind == "note"``).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gender_lib.images import inspect_file
from gender_lib.manifest import EXCLUDED_COLUMNS, MANIFEST_COLUMNS, Dataset
from gender_lib.readers import EXCLUDED, NOTE, SKIPPED, DatasetError, age_group, problem, read_records
from gender_lib.splits import SPLITS, assign_splits, has_official_folds

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- cleaning


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, item: str) -> str:
        self.parent.setdefault(item, item)
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _inspect_all(paths: list[Path], workers: int | None, progress: bool) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    bar = dict(total=len(paths), desc="hash+check", unit="img", disable=not progress, mininterval=1.0)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers > 1 and len(paths) >= 2000:
        # Processes, not threads: PIL's open and EXIF parsing hold the GIL (threads measured
        # slower than one thread). "spawn" because forking a process that runs TensorFlow is unsafe;
        # the workers import only gender_lib.images.
        import multiprocessing

        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            return list(tqdm(pool.map(inspect_file, paths, chunksize=256), **bar))
    return [inspect_file(p) for p in tqdm(paths, **bar)]


def clean(table: pd.DataFrame, workers: int | None = None, progress: bool = True) -> tuple[pd.DataFrame, list[dict]]:
    """Decode and hash every image; drop broken files and duplicates, each with a reason.

    Byte-identical files keep one copy (the first path); copies with conflicting genders are
    all dropped. People linked by a shared image are merged into one ``group`` so a split can
    never put the same face on two sides. Every input row is either in the returned table or
    named by exactly one returned problem (``kind`` "excluded").
    """
    if len(table) == 0:
        raise DatasetError("no labelled images found: see the exclusion report for what was skipped and why")
    paths = [Path(p) for p in table["path"]]
    results = _inspect_all(paths, workers, progress)
    problems = []
    keep = np.ones(len(table), bool)
    facts = pd.DataFrame(results, index=table.index)
    for i, result in enumerate(results):
        if "error" in result:
            keep[i] = False
            problems.append(problem(paths[i], result["error"].split(" (")[0], result["error"], EXCLUDED))
    out = table.copy()
    for column in ("sha256", "width", "height", "mode", "note"):
        out[column] = facts[column] if column in facts else None
    out = out[keep].copy()

    groups = _UnionFind()
    drop: set[int] = set()
    duplicated = out[out.duplicated("sha256", keep=False)]
    for digest, same in duplicated.groupby("sha256", sort=False):
        for subject in same["subject"]:
            groups.union(same["subject"].iloc[0], subject)
        ordered = same.sort_values("path", key=lambda s: s.map(lambda p: os.fsencode(str(p))))  # bytes: any file name
        genders = sorted(set(ordered["gender"]))
        if len(genders) > 1:
            for index, path in zip(ordered.index, ordered["path"]):
                drop.add(index)
                problems.append(
                    problem(
                        path,
                        "duplicate with conflicting labels",
                        f"{len(ordered)} identical files labelled {'/'.join(genders)} (sha256 {digest[:12]})",
                        EXCLUDED,
                    )
                )
            continue
        kept = ordered["path"].iloc[0]
        for index, path in zip(ordered.index[1:], ordered["path"].iloc[1:]):
            drop.add(index)
            problems.append(problem(path, "duplicate", f"identical to {kept}", EXCLUDED))
    out = out.drop(index=sorted(drop))
    out["group"] = [groups.find(s) for s in out["subject"]]
    out["age"] = out["age"].fillna("").astype(str)
    out["age_group"] = [age_group(a) for a in out["age"]]
    out["width"] = out["width"].astype(int)
    out["height"] = out["height"].astype(int)
    out["note"] = out["note"].fillna("")
    if "ethnicity" in out:  # labelled by some sources only (UTKFace's race field)
        out["ethnicity"] = out["ethnicity"].fillna("").astype(str)
    return out.reset_index(drop=True), problems


# --------------------------------------------------------------------------- reports


def _kinds(excluded: pd.DataFrame) -> pd.Series:
    """Each report line's ``kind`` (empty where a line has none: a report of an older version, counted under no kind)."""
    return excluded["kind"].fillna("").astype(str) if "kind" in excluded else pd.Series("", index=excluded.index)


def cleaning_counts(excluded: pd.DataFrame) -> dict[str, int]:
    """Report lines by ``kind``: ``excluded``, ``skipped``, ``note`` (and ``extraction``, the failures the extract stage adds)."""
    counts = _kinds(excluded).value_counts() if len(excluded) else pd.Series(dtype=int)
    return {kind: int(counts.get(kind, 0)) for kind in (EXCLUDED, SKIPPED, NOTE, "extraction")}


def cleaning_summary(n_read: int, table: pd.DataFrame, excluded: pd.DataFrame) -> str:
    """How many images were read (``meta["n_read"]``), kept (``table``) and excluded (by reason),
    then what was skipped and noted (``excluded``, the report). The first line's numbers add up:
    read = kept + excluded. Skipped files and notes are listed apart."""
    kinds = _kinds(excluded) if len(excluded) else pd.Series(dtype=str)
    counts = cleaning_counts(excluded)
    lines = [f"read {n_read} images; kept {len(table)}; excluded {counts[EXCLUDED]}"]
    lines += _reason_lines(excluded[kinds == EXCLUDED]) if len(excluded) else []
    if n_read != len(table) + counts[EXCLUDED]:
        lines.append(f"  (read - kept - excluded = {n_read - len(table) - counts[EXCLUDED]}: this table is not the whole cleaned dataset)")
    if counts[SKIPPED]:
        lines.append(f"skipped {counts[SKIPPED]} files, folders or metadata rows that are not labelled images (not counted as read)")
        lines += _reason_lines(excluded[kinds == SKIPPED])
    converted = int((table["note"] != "").sum()) if len(table) and "note" in table else 0
    if counts[NOTE] or converted:
        lines.append("notes on kept images")
        lines += _reason_lines(excluded[kinds == NOTE]) if counts[NOTE] else []
        if converted:
            lines.append(f"  converted to RGB on load (kept): {converted}")
    if counts["extraction"]:
        lines.append(f"failed later at descriptor extraction (still in the manifest): {counts['extraction']}")
    return "\n".join(lines)


def _reason_lines(rows: pd.DataFrame) -> list[str]:
    return [f"  {reason}: {count}" for reason, count in rows["reason"].value_counts().sort_index().items()]


def split_report(table: pd.DataFrame) -> str:
    """Counts per split by gender, source and age group, and the number of people."""
    if len(table) == 0:
        return "empty dataset"
    order = [s for s in SPLITS if s in set(table["split"])]
    blocks = []
    for column, title in (("gender", "gender"), ("source", "source"), ("age_group", "age group")):
        counts = pd.crosstab(table[column], table["split"]).reindex(columns=order, fill_value=0)
        if column == "age_group":
            counts = counts.reindex(sorted(counts.index, key=_age_sort_key))
        counts["total"] = counts.sum(axis=1)
        blocks.append(f"by {title}:\n{counts.to_string()}")
    people = table.groupby("split")["group"].nunique().reindex(order)
    images = table["split"].value_counts().reindex(order)
    head = "  ".join(f"{s}: {images[s]} images, {people[s]} people" for s in order)
    return head + "\n\n" + "\n\n".join(blocks)


def _age_sort_key(label: str) -> float:
    return float(label.split("-")[0].rstrip("+")) if label[0].isdigit() else 1e9


# --------------------------------------------------------------------------- build and sample


def build(
    root: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    layout: str | None = None,
    folds_dir: str | os.PathLike[str] | None = None,
    val: float = 0.15,
    test: float = 0.15,
    k: int = 5,
    seed: int = 0,
    protocol: str = "person",
    folds: str = "auto",
    workers: int | None = None,
    progress: bool = True,
) -> Dataset:
    """Read, clean and split ``root``; nothing is written (see :func:`write_manifest`).

    ``root``: one folder (or label CSV), or several, each read in its own layout: one dataset whose
    split is stratified by source, so each source is split person-disjoint in the same fractions;
    images identical across them are de-duplicated like any others. Paths are stored relative to
    the roots' common folder. ``folds``: see :func:`gender_lib.splits.assign_splits` (official
    Adience folds are kept by default).
    """
    roots = [Path(r).resolve() for r in ([root] if isinstance(root, (str, os.PathLike)) else root)]
    if not roots:
        raise DatasetError("no data folder given")
    parts = [read_records(r, layout, folds_dir) for r in roots]
    records = pd.concat([p[0] for p in parts], ignore_index=True) if len(parts) > 1 else parts[0][0]
    problems = [q for p in parts for q in p[1]]
    layout = "+".join(dict.fromkeys(p[2] for p in parts))
    root = roots[0] if len(roots) == 1 else Path(os.path.commonpath(roots))
    table, cleaning_problems = clean(records, workers=workers, progress=progress)
    excluded = pd.DataFrame(problems + cleaning_problems, columns=EXCLUDED_COLUMNS)
    official = has_official_folds(table) and folds != "computed"
    before = table["fold"].astype(int).to_numpy() if official else None
    table = assign_splits(table, val=val, test=test, k=k, seed=seed, protocol=protocol, folds=folds)
    base = root.parent if root.is_file() else root
    # object dtype: a path whose name is not valid UTF-8 keeps its bytes (pandas' string dtype refuses them)
    table["path"] = pd.Series([_relative(Path(p), base) for p in table["path"]], index=table.index, dtype=object)
    excluded["path"] = [_relative(Path(p), base) for p in excluded["path"]]
    excluded["detail"] = excluded["detail"].str.replace(f"{base}{os.sep}", "", regex=False)
    counts = cleaning_counts(excluded)
    if len(records) != len(table) + counts[EXCLUDED]:  # clean() names every row it drops exactly once
        raise RuntimeError(f"cleaning lost count: read {len(records)}, kept {len(table)}, excluded {counts[EXCLUDED]}")
    meta = {
        "format": "gender_lib.manifest/1",
        "root": str(base),
        "roots": [str(r) for r in roots],
        "layout": layout,
        "protocol": protocol,
        "leaky": protocol == "original",
        "seed": seed,
        "fractions": {"train": round(1 - val - test, 6), "val": val, "test": test},
        "folds": "official" if official else "computed",
        "k": int(table["fold"].nunique()) if official else k,
        "n_read": int(len(records)),
        "n_kept": int(len(table)),
        "n_excluded": counts[EXCLUDED],
        "n_skipped": counts[SKIPPED],
        "n_notes": counts[NOTE],
        "n_images": int(len(table)),
        "n_people": int(table["group"].nunique()) if len(table) else 0,
    }
    if official:
        meta["folds_moved"] = int((table["fold"].to_numpy() != before).sum())
    log.info(
        "%s (%s): read %d images, kept %d, excluded %d; skipped %d; %d people; %s folds",
        base,
        layout,
        meta["n_read"],
        meta["n_kept"],
        meta["n_excluded"],
        meta["n_skipped"],
        meta["n_people"],
        meta["folds"],
    )
    return Dataset(table[[c for c in MANIFEST_COLUMNS if c in table] + [c for c in table if c not in MANIFEST_COLUMNS]], excluded, meta)


def _relative(path: Path, base: Path) -> str:
    # Readers build paths under the resolved root, so a prefix test suffices (resolve() per
    # file cost seconds on 30k files).
    text, prefix = str(path), f"{base}{os.sep}"
    return Path(text[len(prefix) :]).as_posix() if text.startswith(prefix) else text


def sample(dataset: Dataset, n: int, seed: int = 0) -> Dataset:
    """A seeded subset of about ``n`` images in the same proportions per split and gender.

    ``n <= 0`` (or >= the dataset) returns the dataset unchanged. Subsetting keeps every
    split person-disjoint. ``meta["n_images"]`` becomes the subset's size; the cleaning counts
    (``n_read``, ``n_kept``, ``n_excluded``) still describe the whole folder.
    """
    table = dataset.table
    if n <= 0 or n >= len(table):
        return dataset
    fraction = n / len(table)
    parts = [group.sample(n=max(1, round(len(group) * fraction)), random_state=seed) for _, group in table.groupby(["split", "gender"], sort=True)]
    picked = pd.concat(parts).sort_index().reset_index(drop=True)
    meta = {**dataset.meta, "sample_size": int(n), "n_images": int(len(picked)), "n_people": int(picked["group"].nunique())}
    return Dataset(picked, dataset.excluded, meta)
