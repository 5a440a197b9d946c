#!/usr/bin/env python
"""Build ``data/sample/``: a small, seeded, deterministic sample of real aligned faces.

    python scripts/make_sample.py [--source DIR] [--out DIR] [--n 300] [--seed 0]

It reads the original work's ``combined/aligned/<AA>_<M|F>/*.jpg`` folder and picks about ``n``
faces, half female and half male, spread over the age groups of
:func:`gender_lib.dataset.age_group` and over the three sources (Adience, IMDB, Wikipedia).
Within each (gender, age group, source) cell it picks *people* first, then 2-3 photos of those
who have several there (one of those who have one), so person-disjoint splits and same-person
checks have something to work on. A person is picked in one cell only.

Byte-identical files count once (the first path in sorted order); a file whose copies disagree
on gender, age group or person is skipped altogether.

Every image is re-encoded with Pillow (quality 85, 4:2:0, no EXIF, not optimized, not
progressive; deterministic for a given Pillow/libjpeg): the originals are quality-95 JPEGs of
about 8 KB, and 300 of them plus the ~100 ``<AA>_<M|F>`` folders would not fit in 3 MB as
``du -sb`` counts it. The script refuses to write a folder over ``--max-bytes``.

The selection depends only on sorted file lists, file contents and the seed, so running the
script twice gives byte-identical output. It writes into a temporary folder next to ``--out``
and renames it into place; ``--out`` also gets ``SAMPLE.json`` (one entry per image) and a
``README.md`` whose count table is generated here, so it cannot drift from the files.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # running from a checkout without the package installed
    sys.path.insert(0, str(REPO_ROOT))

try:  # the readers may move out of dataset.py
    from gender_lib.readers import age_group, subject_from_combined_name
except ImportError:  # pragma: no cover - depends on the package layout
    from gender_lib.dataset import age_group, subject_from_combined_name

SOURCES = ("adience", "imdb", "wiki")
GENDERS = ("F", "M")
GENDER_WORDS = {"F": "female", "M": "male"}
DEFAULT_MAX_BYTES = 3_000_000  # the whole folder as `du -sb` counts it
FOLDER_BYTES = 4096  # what `du -sb` counts for a folder on ext4/overlayfs: part of the budget
JPEG_OPTIONS = {"quality": 85, "subsampling": 2, "optimize": False, "progressive": False}
_FOLDER = re.compile(r"^(\d{1,3})_([MF])$")
_IMAGE_SUFFIXES = {".jpg", ".jpeg"}
MARKER = "SAMPLE.json"


class SampleError(RuntimeError):
    """A source or output folder the script cannot work with; the message names the path."""


# --------------------------------------------------------------------------- paths


def default_source() -> Path:
    """``$GENDER_LIB_DATASETS/combined/aligned``, else ``<repo>/../shared/datasets/combined/aligned``."""
    datasets = os.environ.get("GENDER_LIB_DATASETS")
    base = Path(datasets).expanduser() if datasets else REPO_ROOT.parent / "shared" / "datasets"
    return (base / "combined" / "aligned").resolve()


def default_out() -> Path:
    return REPO_ROOT / "data" / "sample"


# --------------------------------------------------------------------------- reading


def group_order(group: str) -> int:
    """Sort key of an age group label (``'0-2'`` < ``'3-7'`` < ... < ``'60+'``)."""
    return int(re.match(r"\d+", group).group(0))


def scan(source: Path) -> tuple[list[dict], dict[str, int]]:
    """Every usable image of ``source`` (one per distinct content), in sorted order, and skip counts."""
    if not source.is_dir():
        raise SampleError(f"source folder not found: {source} (set GENDER_LIB_DATASETS or pass --source)")
    folders = sorted(p for p in source.iterdir() if p.is_dir() and _FOLDER.match(p.name))
    if not folders:
        raise SampleError(f"no <AA>_<M|F> folders in {source}")
    skipped: collections.Counter[str] = collections.Counter()
    by_digest: dict[str, list[dict]] = collections.defaultdict(list)
    for folder in folders:
        age, gender = _FOLDER.match(folder.name).groups()
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in _IMAGE_SUFFIXES:
                skipped["not a jpeg"] += 1
                continue
            parsed = subject_from_combined_name(path.name)
            if parsed is None:
                skipped["unparsed name"] += 1
                continue
            subject, src = parsed
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            by_digest[digest].append(
                {
                    "path": path,
                    "rel": f"{folder.name}/{path.name}",
                    "gender": gender,
                    "age": str(int(age)),
                    "age_group": age_group(str(int(age))),
                    "source": src,
                    "subject": subject,
                    "sha256": digest,
                }
            )
    records = []
    for copies in by_digest.values():
        labels = {(c["gender"], c["age_group"], c["subject"]) for c in copies}
        if len(labels) > 1:
            skipped["duplicate with conflicting labels"] += len(copies)
            continue
        skipped["duplicate"] += len(copies) - 1
        records.append(min(copies, key=lambda c: c["rel"]))
    # people labelled with both genders are unusable for a gender sample
    genders: dict[str, set[str]] = collections.defaultdict(set)
    for record in records:
        genders[record["subject"]].add(record["gender"])
    mixed = {s for s, g in genders.items() if len(g) > 1}
    if mixed:
        skipped["person with both genders"] += sum(r["subject"] in mixed for r in records)
        records = [r for r in records if r["subject"] not in mixed]
    records.sort(key=lambda r: r["rel"])
    return records, dict(sorted(skipped.items()))


# --------------------------------------------------------------------------- selecting


def split_evenly(total: int, keys: list, capacity: dict | None = None) -> dict:
    """``total`` spread over ``keys`` as evenly as possible (earlier keys get the remainder),
    never giving a key more than its ``capacity``; what a full key cannot take goes to the others."""
    quota = {k: 0 for k in keys}
    open_keys = [k for k in keys if capacity is None or capacity[k] > 0]
    left = total
    while left > 0 and open_keys:
        share, extra = divmod(left, len(open_keys))
        for i, k in enumerate(list(open_keys)):
            want = share + (1 if i < extra else 0)
            room = want if capacity is None else min(want, capacity[k] - quota[k])
            quota[k] += room
            left -= room
        open_keys = [k for k in open_keys if capacity is None or quota[k] < capacity[k]]
    return quota


def select(records: list[dict], n: int, seed: int) -> list[dict]:
    """About ``n`` records: gender-balanced, spread over age groups and sources, several photos per person."""
    cells: dict[tuple, dict[str, list[dict]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for record in records:
        cells[(record["gender"], record["age_group"], record["source"])][record["subject"]].append(record)
    groups = sorted({r["age_group"] for r in records}, key=group_order)
    chosen: list[dict] = []
    taken_people: set[str] = set()
    for gender, gender_quota in split_evenly(n, list(GENDERS)).items():
        # children first when the quota does not divide evenly: they are the hard case
        for group, group_quota in split_evenly(gender_quota, groups).items():
            capacity = {s: sum(map(len, cells[(gender, group, s)].values())) for s in SOURCES}
            for source, quota in split_evenly(group_quota, list(SOURCES), capacity).items():
                cell = (gender, group, source)
                rng = random.Random(f"{seed}:{gender}:{group}:{source}")
                people = sorted(s for s in cells[cell] if s not in taken_people)
                rng.shuffle(people)
                # people with several photos first (stable: the shuffled order within each kind)
                people.sort(key=lambda s: len(cells[cell][s]) < 2)
                left = quota
                for subject in people:
                    if left <= 0:
                        break
                    photos = sorted(cells[cell][subject], key=lambda r: r["rel"])
                    take = min(len(photos), rng.choice((2, 3)), left)
                    chosen.extend(rng.sample(photos, take))
                    taken_people.add(subject)
                    left -= take
    return sorted(chosen, key=lambda r: r["rel"])


# --------------------------------------------------------------------------- writing


def reencode(path: Path) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", **JPEG_OPTIONS)
    return buffer.getvalue()


def summarize(entries: list[dict]) -> dict:
    """Counts by gender x age group x source, and people counts."""
    photos_per_person = collections.Counter(e["subject"] for e in entries)
    cells: dict[str, dict[str, dict[str, int]]] = {}
    for gender in GENDERS:
        for group in sorted({e["age_group"] for e in entries}, key=group_order):
            row = [e for e in entries if e["gender"] == gender and e["age_group"] == group]
            if not row:
                continue
            cells.setdefault(gender, {})[group] = {
                **{s: sum(e["source"] == s for e in row) for s in SOURCES},
                "images": len(row),
                "people": len({e["subject"] for e in row}),
            }
    return {
        "images": len(entries),
        "people": len(photos_per_person),
        "people_with_2_or_more": sum(c >= 2 for c in photos_per_person.values()),
        "images_of_people_with_2_or_more": sum(c for c in photos_per_person.values() if c >= 2),
        "by_gender": {g: sum(e["gender"] == g for e in entries) for g in GENDERS},
        "by_source": {s: sum(e["source"] == s for e in entries) for s in SOURCES},
        "by_age_group": {grp: sum(e["age_group"] == grp for e in entries) for grp in sorted({e["age_group"] for e in entries}, key=group_order)},
        "cells": cells,
    }


def count_table(summary: dict) -> str:
    """The README's Markdown table: one row per gender x age group, columns per source."""
    lines = [
        "| gender | age group | " + " | ".join(SOURCES) + " | images | people |",
        "|---|---|" + "---:|" * (len(SOURCES) + 2),
    ]
    for gender, groups in summary["cells"].items():
        for group, row in groups.items():
            lines.append(f"| {gender} | {group} | " + " | ".join(str(row[s]) for s in SOURCES) + f" | {row['images']} | {row['people']} |")
    lines.append("| all | all | " + " | ".join(str(summary["by_source"][s]) for s in SOURCES) + f" | {summary['images']} | {summary['people']} |")
    return "\n".join(lines)


def readme_text(summary: dict, n: int, seed: int, total_bytes: int, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    command = "python scripts/make_sample.py" + (f" --n {n}" if n != 300 else "") + (f" --seed {seed}" if seed != 0 else "")
    if max_bytes != DEFAULT_MAX_BYTES:
        command += f" --max-bytes {max_bytes}"
    people, multi = summary["people"], summary["people_with_2_or_more"]
    share = summary["images_of_people_with_2_or_more"] / max(summary["images"], 1)
    by_gender = ", ".join(f"{summary['by_gender'][g]} {GENDER_WORDS[g]}" for g in GENDERS)
    return f"""# data/sample/

{summary["images"]} real aligned faces (128x128 RGB JPEGs, {total_bytes:,} bytes of images), small enough to
commit, so tests, notebooks and demos can run on real faces without the shared data set. Same layout
as the original work's `combined/aligned/`: `<AA>_<M|F>/<original file name>` (AA = age, M/F = gender).

Generated; do not edit by hand. Rebuild with (needs the shared data; byte-identical on every run):

```bash
{command}
```

## How it was chosen

- {by_gender}; within each gender spread over the age groups of `gender_lib.dataset.age_group`
  (children included: they are the hard case) and, within each age group, over the three sources
  as far as they have faces (Adience has none over 60, IMDB and Wikipedia few young children).
- People first, then photos: within each gender x age group x source cell people are drawn at
  random (seed {seed}), taking 2-3 photos of those who have several there, one of the others, and
  each person in one cell only. {people} people, {multi} of them with 2 or more photos
  ({share:.0%} of the images), so person-disjoint splits and same-person checks are meaningful.
  Wikipedia has one photo per person.
- Byte-identical files count once; files whose copies disagree on their labels are left out.
- Images were re-encoded with Pillow (JPEG quality 85, 4:2:0, no EXIF; the originals are quality-95
  JPEGs that would not fit in 3 MB with the folders), decoded to the same 128x128 RGB size.
- `SAMPLE.json` lists every image with its labels, person id, source, sha256 and the sha256 of the
  original file in the shared data (`source_sha256`).

## Counts

{count_table(summary)}

## Licence

These images are **not** covered by the repository's MIT licence. They come from the original
work's `combined/` folder, built from the **Adience** benchmark (Eidinger, Enbar and Hassner, 2014)
and **IMDB-WIKI** (Rothe, Timofte and Van Gool, 2015), whose images are available for
**non-commercial research use only**; the rights to each photo remain with its owners. Use them
under those datasets' terms, and remove this folder from any commercial use or redistribution
that those terms do not allow.
"""


def sample_json(meta: dict) -> str:
    """Indented JSON with one line per image (keeps the file small and its diffs readable)."""
    head = json.dumps({k: v for k, v in meta.items() if k != "images"}, indent=1)
    lines = ",\n".join("  " + json.dumps(entry) for entry in meta["images"])
    return head[:-2] + ',\n "images": [\n' + lines + "\n ]\n}\n"


def build(source: Path, out: Path, n: int = 300, seed: int = 0, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """Select, re-encode and write the sample into ``out`` atomically; return the summary."""
    source, out = Path(source).resolve(), Path(out).resolve()
    records, skipped = scan(source)
    chosen = select(records, n, seed)
    payload = {r["rel"]: reencode(r["path"]) for r in chosen}
    folders_bytes = FOLDER_BYTES * (1 + len({rel.split("/")[0] for rel in payload}))
    total_bytes = sum(map(len, payload.values()))
    entries = [
        {
            "file": r["rel"],
            "gender": r["gender"],
            "age": r["age"],
            "age_group": r["age_group"],
            "source": r["source"],
            "subject": r["subject"],
            "sha256": hashlib.sha256(payload[r["rel"]]).hexdigest(),
            "source_sha256": r["sha256"],
        }
        for r in chosen
    ]
    summary = summarize(entries)
    meta = {
        "command": {"n": n, "seed": seed, "max_bytes": max_bytes},
        "source_images_usable": len(records),
        "source_skipped": skipped,
        "jpeg_options": JPEG_OPTIONS,
        "image_bytes": total_bytes,
        "summary": {k: v for k, v in summary.items() if k != "cells"},
        "images": entries,
    }

    if out.exists() and not (out / MARKER).is_file() and any(out.iterdir()):
        raise SampleError(f"{out} exists and is not a sample made by this script (no {MARKER}); refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for rel, data in payload.items():
            target = tmp / rel
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(data)
        (tmp / MARKER).write_text(sample_json(meta), encoding="utf-8")
        (tmp / "README.md").write_text(readme_text(summary, n, seed, total_bytes, max_bytes), encoding="utf-8")
        folder_size = folders_bytes + sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        if folder_size > max_bytes:
            raise SampleError(f"sample of {len(chosen)} images would take {folder_size} bytes (limit {max_bytes}); lower --n")
        for path in [tmp, *tmp.rglob("*")]:  # mkdtemp makes 0700 folders
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=None, help=f"combined/aligned folder (default: {default_source()})")
    parser.add_argument("--out", type=Path, default=default_out(), help="output folder (default: data/sample)")
    parser.add_argument("--n", type=int, default=300, help="number of images (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="size limit of the folder, as du -sb counts it (default 3,000,000)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        summary = build(args.source or default_source(), args.out, n=args.n, seed=args.seed, max_bytes=args.max_bytes)
    except SampleError as error:
        print(f"make_sample: error: {error}", file=sys.stderr)
        return 2
    print(count_table(summary))
    print(
        f"{summary['images']} images, {summary['people']} people ({summary['people_with_2_or_more']} with 2+ photos, "
        f"{summary['images_of_people_with_2_or_more']} images) -> {args.out} in {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
