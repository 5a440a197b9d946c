"""Face datasets: layout readers -> one table; cleaning with a report; person-disjoint splits; manifest.

Every reader returns records with one schema (:data:`COLUMNS` before cleaning adds image
facts) plus a list of problems; :func:`clean` decodes and hashes every file, collapses
byte-identical duplicates and excludes broken files, each with a line in the exclusion
report; :func:`assign_splits` gives every image a split (grouped by person, stratified by
gender) and a k-fold index; :func:`write_manifest` stores it for later stages.

Supported layouts (detected by :func:`detect_layout`, or forced with ``layout=``):

* ``combined``: the original work's ``combined/{aligned,valid}/<AA>_<M|F>/*.jpg``;
* ``adience``: ``aligned/<user_id>/landmark_aligned_face.<face_id>.<image>`` + ``fold_{0..4}_data.txt``;
* ``utkface``: ``<age>_<gender>_<race>_<datetime>.jpg[.chip.jpg]`` (gender 0 male, 1 female);
* ``folders``: class folders ``male/female``, ``man/woman``, ``men/women`` or ``m/f`` (any case);
* ``csv``: a CSV file with ``path,gender[,age,subject]`` (paths relative to the CSV).
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import datetime as _dt
import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from gender_lib.fileio import atomic_write, sha256_file, write_json

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
RECORD_COLUMNS = ["path", "gender", "age", "subject", "source"]
COLUMNS = RECORD_COLUMNS + ["age_group", "sha256", "width", "height", "mode", "note", "group"]
MANIFEST_COLUMNS = COLUMNS + ["split", "fold"]
LAYOUTS = ("combined", "adience", "utkface", "folders", "csv")
SPLITS = ("train", "val", "test")
#: Age groups close to Adience's bins, extended to cover every age.
AGE_BINS = ((0, 2), (3, 7), (8, 14), (15, 24), (25, 37), (38, 47), (48, 59), (60, 200))

_COMBINED_DIR = re.compile(r"^(\d{1,3})_([MFmf])$")
_ADIENCE_NAME = re.compile(r"^landmark_aligned_face\.(\d+)\.(.+)$")
_IMDB_NAME = re.compile(r"^(nm\d+)_rm\d+_[\d-]+_\d+(?:-\d+)?\.\w+$")
_WIKI_NAME = re.compile(r"^(\d+)_\d{1,4}-\d{1,2}-\d{1,2}_\d{4}(?:-\d+)?\.\w+$")
_UTK_NAME = re.compile(r"^(\d{1,3})_([01])_(\d)_(\d{17})\.jpg(\.chip\.jpg)?$", re.IGNORECASE)
_CLASS_FOLDERS = {"male": "M", "female": "F", "man": "M", "woman": "F", "men": "M", "women": "F", "m": "M", "f": "F"}
_GENDER_WORDS = {"m": "M", "male": "M", "man": "M", "f": "F", "female": "F", "woman": "F"}


class DatasetError(ValueError):
    """A dataset that cannot be read; the message names the path and what was expected."""


@dataclasses.dataclass
class Dataset:
    """A cleaned, split dataset: the manifest table, the exclusions, and how it was made."""

    table: pd.DataFrame
    excluded: pd.DataFrame
    meta: dict[str, Any]


# --------------------------------------------------------------------------- helpers


def _problem(path: Path | str, reason: str, detail: str = "") -> dict[str, str]:
    return {"path": str(path), "reason": reason, "detail": detail}


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _walk_files(folder: Path) -> list[Path]:
    """Every regular file below ``folder`` (sorted; hidden files skipped)."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / name for name in sorted(filenames) if not name.startswith("."))
    return out


def age_group(age: str) -> str:
    """Map an age (``'35'``) or a range (``'25-32'``) to one of :data:`AGE_BINS` (``'unknown'`` if empty)."""
    if not age:
        return "unknown"
    low, _, high = str(age).partition("-")
    try:
        middle = (float(low) + float(high or low)) / 2
    except ValueError:
        return "unknown"
    for lo, hi in AGE_BINS:
        if middle <= hi + 0.5:
            return f"{lo}-{hi}" if hi < 200 else f"{lo}+"
    return f"{AGE_BINS[-1][0]}+"


def parse_adience_age(text: str) -> str:
    """``'(25, 32)'`` -> ``'25-32'``; ``'35'`` -> ``'35'``; ``'None'``/blank -> ``''``."""
    text = (text or "").strip()
    numbers = re.findall(r"\d+", text)
    if not numbers:
        return ""
    if len(numbers) >= 2:
        return f"{int(numbers[0])}-{int(numbers[1])}"
    return str(int(numbers[0]))


def subject_from_combined_name(name: str) -> tuple[str, str] | None:
    """(subject id, source) from a file name of the original work's ``combined/`` folder."""
    if match := _ADIENCE_NAME.match(name):
        # Adience face ids are unique per person across users (checked on the fold files).
        return f"adience:{match.group(1)}", "adience"
    if match := _IMDB_NAME.match(name):
        return f"imdb:{match.group(1)}", "imdb"
    if match := _WIKI_NAME.match(name):
        return f"wiki:{match.group(1)}", "wiki"
    return None


# --------------------------------------------------------------------------- readers


def read_combined(root: Path) -> tuple[list[dict], list[dict]]:
    """The original work's layout: ``<root>/<AA>_<M|F>/*.jpg`` (or ``<root>/{aligned,valid}/...``)."""
    bases = [root / sub for sub in ("aligned", "valid") if _has_combined_dirs(root / sub)] or [root]
    records, problems = [], []
    for base in bases:
        for folder in sorted(p for p in base.iterdir() if p.is_dir()):
            match = _COMBINED_DIR.match(folder.name)
            if not match:
                problems.append(_problem(folder, "unexpected folder", "not <AA>_<M|F>; skipped with its contents"))
                continue
            age, gender = str(int(match.group(1))), match.group(2).upper()
            for path in _walk_files(folder):
                if not _is_image_name(path):
                    problems.append(_problem(path, "not an image", f"extension '{path.suffix}'"))
                    continue
                parsed = subject_from_combined_name(path.name)
                if parsed is None:
                    # Unknown naming: the file becomes its own person, which can only under-group.
                    problems.append(_problem(path, "unparsed name (kept)", "no person id in the name; treated as its own person"))
                    parsed = (f"file:{path.stem}", "unknown")
                records.append({"path": path, "gender": gender, "age": age, "subject": parsed[0], "source": parsed[1]})
    return records, problems


def _has_combined_dirs(folder: Path) -> bool:
    return folder.is_dir() and any(_COMBINED_DIR.match(p.name) and p.is_dir() for p in folder.iterdir())


def read_adience_folds(paths: Sequence[Path]) -> tuple[pd.DataFrame, list[dict]]:
    """Parse Adience ``fold_<k>_data.txt`` files, tolerating truncated copies.

    Returns one row per face (user_id, original_image, face_id, age, gender, fold, line) and a
    problem for every row that is cut short or has an unknown gender.
    """
    rows, problems = [], []
    for path in paths:
        match = re.search(r"fold_(\d+)", path.name)
        fold = int(match.group(1)) if match else -1
        text = path.read_text(encoding="utf-8", errors="replace")
        lines = text.splitlines()
        if not lines or not lines[0].startswith("user_id"):
            raise DatasetError(f"{path}: not an Adience fold file (expected a header starting with 'user_id')")
        header = lines[0].rstrip("\r").split("\t")
        for number, line in enumerate(lines[1:], start=2):
            fields = line.rstrip("\r").split("\t")
            if not line.strip():
                continue
            if len(fields) < len(header):
                problems.append(_problem(f"{path}:{number}", "truncated metadata row", f"{len(fields)} of {len(header)} fields"))
                continue
            row = dict(zip(header, fields))
            rows.append({
                "user_id": row["user_id"], "original_image": row["original_image"], "face_id": row["face_id"],
                "age": parse_adience_age(row["age"]), "gender": row["gender"].strip().lower(), "fold": fold, "line": f"{path}:{number}",
            })
    return pd.DataFrame(rows, columns=["user_id", "original_image", "face_id", "age", "gender", "fold", "line"]), problems


def read_adience(root: Path, folds_dir: Path | None = None) -> tuple[list[dict], list[dict]]:
    """Adience: ``<root>/aligned/<user_id>/landmark_aligned_face.<face_id>.<original_image>`` + fold files."""
    fold_paths = sorted((folds_dir or root).glob("fold_*_data.txt"))
    if not fold_paths:
        raise DatasetError(f"{folds_dir or root}: no Adience fold_<k>_data.txt files found")
    meta, problems = read_adience_folds(fold_paths)
    images = root / "aligned"
    records, listed = [], set()
    for row in meta.itertuples(index=False):
        path = images / row.user_id / f"landmark_aligned_face.{row.face_id}.{row.original_image}"
        listed.add(path)
        if row.gender not in ("m", "f"):
            problems.append(_problem(path, "gender unknown", f"fold file says '{row.gender or 'blank'}' ({row.line})"))
            continue
        if not path.is_file():
            problems.append(_problem(path, "image missing", f"listed at {row.line}"))
            continue
        records.append({"path": path, "gender": row.gender.upper(), "age": row.age, "subject": f"adience:{row.user_id}:{row.face_id}", "source": "adience", "fold": row.fold})
    if images.is_dir():
        for path in _walk_files(images):
            if path not in listed:
                problems.append(_problem(path, "no metadata row", "not listed in any fold file (folds may be truncated)"))
    return records, problems


def read_utkface(root: Path) -> tuple[list[dict], list[dict]]:
    """UTKFace: labels in the name ``<age>_<gender>_<race>_<datetime>.jpg``; gender 0 male, 1 female."""
    records, problems = [], []
    for path in _walk_files(root):
        match = _UTK_NAME.match(path.name)
        if not match:
            reason = "not an image" if not _is_image_name(path) else "malformed UTKFace name"
            problems.append(_problem(path, reason, "expected <age>_<gender 0|1>_<race 0-4>_<17-digit datetime>.jpg"))
            continue
        # UTKFace has no identity labels: each image is its own person (duplicates merge by hash).
        records.append({"path": path, "gender": "M" if match.group(2) == "0" else "F", "age": str(int(match.group(1))),
                        "subject": f"utkface:{path.name.split('.')[0]}", "source": "utkface"})
    return records, problems


def read_folders(root: Path) -> tuple[list[dict], list[dict]]:
    """Class folders (``male/female``, ``man/woman``, ``m/f``, any case), optionally with person subfolders."""
    records, problems = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        gender = _CLASS_FOLDERS.get(folder.name.lower())
        if gender is None:
            problems.append(_problem(folder, "unexpected folder", "not a gender class folder; skipped"))
            continue
        for path in _walk_files(folder):
            if not _is_image_name(path):
                problems.append(_problem(path, "not an image", f"extension '{path.suffix}'"))
                continue
            relative = path.relative_to(folder)
            # male/<person>/x.jpg groups by person folder; a flat folder makes each file its own person.
            subject = f"folders:{relative.parts[0]}" if len(relative.parts) > 1 else f"folders:{folder.name}/{path.stem}"
            records.append({"path": path, "gender": gender, "age": "", "subject": subject, "source": root.name or "folders"})
    return records, problems


def read_csv_labels(csv_path: Path) -> tuple[list[dict], list[dict]]:
    """A CSV ``path,gender[,age,subject]``; gender m/f/male/female/man/woman (any case)."""
    records, problems = [], []
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        if "path" not in fields or "gender" not in fields:
            raise DatasetError(f"{csv_path}: a label CSV needs the columns path,gender[,age,subject]; found {fields}")
        for number, raw in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
            path = (csv_path.parent / row["path"]).resolve() if row.get("path") else None
            gender = _GENDER_WORDS.get(row.get("gender", "").lower())
            if path is None:
                problems.append(_problem(f"{csv_path}:{number}", "missing path", "empty path column"))
            elif gender is None:
                problems.append(_problem(path, "gender unknown", f"'{row.get('gender', '')}' at {csv_path}:{number} (use m/f/male/female)"))
            elif not path.is_file():
                problems.append(_problem(path, "image missing", f"listed at {csv_path}:{number}"))
            else:
                records.append({"path": path, "gender": gender, "age": row.get("age", ""),
                                "subject": f"csv:{row['subject']}" if row.get("subject") else f"csv:{row['path']}", "source": csv_path.stem})
    return records, problems


def detect_layout(root: str | os.PathLike[str]) -> str:
    """Which of :data:`LAYOUTS` ``root`` is in; a clear error listing what was looked for otherwise."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: no such file or folder")
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "csv"
        raise DatasetError(f"{root}: a dataset is a folder or a label .csv file")
    if any(root.glob("fold_*_data.txt")) and (root / "aligned").is_dir():
        return "adience"
    if _has_combined_dirs(root) or _has_combined_dirs(root / "aligned") or _has_combined_dirs(root / "valid"):
        return "combined"
    subfolders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    genders = {_CLASS_FOLDERS.get(p.name.lower()) for p in subfolders}
    if subfolders and None not in genders and genders == {"M", "F"}:
        return "folders"
    names = [p.name for p in _walk_files(root)[:200]]
    if names and sum(bool(_UTK_NAME.match(n)) for n in names) >= max(1, len(names) // 2):
        return "utkface"
    raise DatasetError(
        f"{root}: unknown dataset layout. Looked for: <AA>_<M|F> folders (combined, also under aligned/ or valid/); "
        "fold_<k>_data.txt beside aligned/ (adience); <age>_<0|1>_<race>_<datetime>.jpg files (utkface); "
        "male/female, man/woman, men/women or m/f folders (folders); or pass a .csv with path,gender columns. "
        f"Found folders {sorted(p.name for p in subfolders)[:10]}. Pass layout=... to force one."
    )


def read_records(root: str | os.PathLike[str], layout: str | None = None, folds_dir: str | os.PathLike[str] | None = None) -> tuple[pd.DataFrame, list[dict], str]:
    """Read ``root`` in its layout: (records table, problems, layout)."""
    root = Path(root)
    layout = layout or detect_layout(root)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    if layout != "csv" and not root.is_dir():
        raise DatasetError(f"{root}: the {layout} layout needs a folder")
    reader = {
        "combined": read_combined,
        "adience": lambda r: read_adience(r, Path(folds_dir) if folds_dir else None),
        "utkface": read_utkface,
        "folders": read_folders,
        "csv": read_csv_labels,
    }[layout]
    records, problems = reader(root)
    table = pd.DataFrame(records)
    for column in RECORD_COLUMNS:
        if column not in table:
            table[column] = pd.Series(dtype=object)
    return table, problems, layout


# --------------------------------------------------------------------------- cleaning


def inspect_image(data: bytes) -> dict[str, Any]:
    """Decode ``data`` fully; return width, height, mode and what loading to RGB will change.

    Raises ``ValueError`` with the reason ("empty file", "truncated image", "corrupt or not
    an image") when it cannot be used.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ValueError("empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode, (width, height) = image.mode, image.size
            orientation = image.getexif().get(0x0112, 1)
    except UnidentifiedImageError:
        raise ValueError("corrupt or not an image") from None
    except OSError as error:
        raise ValueError("truncated image" if "truncated" in str(error).lower() else f"corrupt image ({error})") from None
    except Exception as error:  # noqa: BLE001 - decoders raise assorted errors on bad data
        raise ValueError(f"corrupt image ({type(error).__name__}: {error})") from None
    notes = []
    if mode != "RGB":
        notes.append(f"{mode} converted to RGB")
    if orientation not in (1, None):
        notes.append(f"EXIF orientation {orientation} applied")
    if width < 8 or height < 8:
        raise ValueError(f"too small ({width}x{height})")
    return {"width": width, "height": height, "mode": mode, "note": "; ".join(notes)}


def load_rgb(source: str | os.PathLike[str] | bytes) -> np.ndarray:
    """Any supported image -> uint8 (h, w, 3) RGB, EXIF rotation applied, alpha on white.

    Grayscale, palette, CMYK, 16-bit and alpha images all become 8-bit RGB.
    """
    from PIL import Image, ImageOps

    data = source if isinstance(source, (bytes, bytearray, memoryview)) else Path(source).read_bytes()
    with Image.open(io.BytesIO(bytes(data))) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(image, dtype=np.float64)
            top = 65535.0 if array.max() > 255 else 255.0
            image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
        if image.mode == "P":
            image = image.convert("RGBA")
        if image.mode in ("RGBA", "LA", "PA"):
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image.convert("RGBA"))
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _hash_and_inspect(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as error:
        return {"error": f"unreadable ({error.strerror or error})"}
    digest = hashlib.sha256(data).hexdigest()
    try:
        facts = inspect_image(data)
    except ValueError as error:
        return {"error": str(error), "sha256": digest}
    return {"sha256": digest, **facts}


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


def clean(table: pd.DataFrame, workers: int | None = None, progress: bool = True) -> tuple[pd.DataFrame, list[dict]]:
    """Decode and hash every image; drop broken files and duplicates, each with a reason.

    Byte-identical files keep one copy (the first path); copies with conflicting genders are
    all dropped. People linked by a shared image are merged into one ``group`` so a split can
    never put the same face on two sides.
    """
    from tqdm.auto import tqdm

    if len(table) == 0:
        raise DatasetError("no labelled images found: see the exclusion report for what was skipped and why")
    paths = [Path(p) for p in table["path"]]
    bar = dict(total=len(paths), desc="hash+check", unit="img", disable=not progress, mininterval=1.0)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers > 1 and len(paths) >= 2000:
        # Processes, not threads: PIL's open and EXIF parsing hold the GIL (threads measured
        # slower than one thread). "spawn" because forking a process that runs TensorFlow is unsafe.
        import multiprocessing

        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(tqdm(pool.map(_hash_and_inspect, paths, chunksize=256), **bar))
    else:
        results = [_hash_and_inspect(p) for p in tqdm(paths, **bar)]
    problems = []
    keep = np.ones(len(table), bool)
    facts = pd.DataFrame(results, index=table.index)
    for i, result in enumerate(results):
        if "error" in result:
            keep[i] = False
            problems.append(_problem(paths[i], result["error"].split(" (")[0], result["error"]))
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
        ordered = same.sort_values("path", key=lambda s: s.astype(str))
        genders = sorted(set(ordered["gender"]))
        if len(genders) > 1:
            for index, path in zip(ordered.index, ordered["path"]):
                drop.add(index)
                problems.append(_problem(path, "duplicate with conflicting labels", f"{len(ordered)} identical files labelled {'/'.join(genders)} (sha256 {digest[:12]})"))
            continue
        kept = ordered["path"].iloc[0]
        for index, path in zip(ordered.index[1:], ordered["path"].iloc[1:]):
            drop.add(index)
            problems.append(_problem(path, "duplicate", f"identical to {kept}"))
    out = out.drop(index=sorted(drop))
    out["group"] = [groups.find(s) for s in out["subject"]]
    out["age"] = out["age"].fillna("").astype(str)
    out["age_group"] = [age_group(a) for a in out["age"]]
    out["width"] = out["width"].astype(int)
    out["height"] = out["height"].astype(int)
    out["note"] = out["note"].fillna("")
    return out.reset_index(drop=True), problems


# --------------------------------------------------------------------------- splits


def grouped_stratified_assign(labels: Sequence[str], groups: Sequence[str], fractions: Sequence[float], seed: int) -> np.ndarray:
    """Assign every item to one of ``len(fractions)`` parts so no group spans two parts.

    Greedy and seeded: groups are shuffled, then taken largest first, each into the part
    where it most reduces the squared distance between the per-label counts and their
    targets. Gives parts close to ``fractions`` and to the overall label balance.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    fractions = np.asarray(fractions, float) / np.sum(fractions)
    classes, label_idx = np.unique(labels, return_inverse=True)
    group_ids, group_idx = np.unique(groups, return_inverse=True)
    counts = np.zeros((len(group_ids), len(classes)))
    np.add.at(counts, (group_idx, label_idx), 1)
    targets = fractions[:, None] * counts.sum(axis=0)[None, :]
    order = np.random.default_rng(seed).permutation(len(group_ids))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    filled = np.zeros_like(targets)
    part_of_group = np.empty(len(group_ids), int)
    for g in order:
        cost = ((filled + counts[g] - targets) ** 2 - (filled - targets) ** 2).sum(axis=1)
        part = int(np.argmin(cost))
        part_of_group[g] = part
        filled[part] += counts[g]
    return part_of_group[group_idx]


def assign_splits(
    table: pd.DataFrame,
    *,
    val: float = 0.15,
    test: float = 0.15,
    k: int = 5,
    seed: int = 0,
    protocol: str = "person",
) -> pd.DataFrame:
    """Add ``split`` (train/val/test) and ``fold`` (0..k-1) columns.

    ``protocol="person"`` (default): grouped by person (``group``), stratified by gender and
    also by source and age group, so that val and test look like train (large Adience
    albums of children would otherwise pile up on one side).
    ``protocol="original"``: the original work's image-level random split, which puts the
    same people on both sides; it is leaky and exists only to measure that inflation.
    """
    if not 0 < val < 1 or not 0 < test < 1 or val + test >= 1:
        raise ValueError(f"val ({val}) and test ({test}) must be in (0, 1) and sum to less than 1")
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    out = table.copy()
    if len(out) == 0:
        out["split"], out["fold"] = [], []
        return out
    if protocol == "person":
        strata = out["gender"].astype(str) + "|" + out["source"].astype(str) + "|" + out["age_group"].astype(str)
        parts = grouped_stratified_assign(strata, out["group"], [1 - val - test, val, test], seed)
        folds = grouped_stratified_assign(strata, out["group"], [1.0] * k, seed + 1)
    elif protocol == "original":
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(out))
        n_test, n_val = round(test * len(out)), round(val * len(out))
        parts = np.zeros(len(out), int)
        parts[order[:n_test]] = 2
        parts[order[n_test : n_test + n_val]] = 1
        folds = rng.permutation(np.arange(len(out)) % k)
    else:
        raise ValueError(f"protocol must be 'person' or 'original' (leaky, image-level), got {protocol!r}")
    out["split"] = np.asarray(SPLITS)[parts]
    out["fold"] = folds.astype(int)
    return out


def leaked_groups(table: pd.DataFrame, column: str = "split") -> set[str]:
    """People (groups) that appear in more than one value of ``column``: empty for a sound split."""
    spans = table.groupby("group")[column].nunique()
    return set(spans[spans > 1].index)


# --------------------------------------------------------------------------- reports and manifest


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


def cleaning_summary(n_read: int, table: pd.DataFrame, excluded: pd.DataFrame) -> str:
    """One paragraph: how many files were read, kept, converted and excluded (by reason).

    Report lines whose reason ends in "(kept)" are notes about files that were kept.
    """
    kept_notes = excluded["reason"].str.endswith("(kept)") if len(excluded) else pd.Series(dtype=bool)
    lines = [f"read {n_read} images; kept {len(table)}; excluded {int((~kept_notes).sum())}"]
    if len(excluded):
        for reason, count in excluded["reason"].value_counts().sort_index().items():
            lines.append(f"  {reason}: {count}")
    converted = (table["note"] != "").sum() if len(table) else 0
    if converted:
        lines.append(f"  converted to RGB on load (kept): {converted}")
    return "\n".join(lines)


def build(
    root: str | os.PathLike[str],
    *,
    layout: str | None = None,
    folds_dir: str | os.PathLike[str] | None = None,
    val: float = 0.15,
    test: float = 0.15,
    k: int = 5,
    seed: int = 0,
    protocol: str = "person",
    workers: int | None = None,
    progress: bool = True,
) -> Dataset:
    """Read, clean and split ``root``; nothing is written (see :func:`write_manifest`)."""
    root = Path(root).resolve()
    records, problems, layout = read_records(root, layout, folds_dir)
    table, cleaning_problems = clean(records, workers=workers, progress=progress)
    excluded = pd.DataFrame(problems + cleaning_problems, columns=["path", "reason", "detail"])
    table = assign_splits(table, val=val, test=test, k=k, seed=seed, protocol=protocol)
    base = root.parent if root.is_file() else root
    table["path"] = [_relative(Path(p), base) for p in table["path"]]
    excluded["path"] = [_relative(Path(p), base) for p in excluded["path"]]
    excluded["detail"] = excluded["detail"].str.replace(f"{base}{os.sep}", "", regex=False)
    meta = {
        "format": "gender_lib.manifest/1",
        "root": str(base),
        "layout": layout,
        "protocol": protocol,
        "leaky": protocol == "original",
        "seed": seed,
        "fractions": {"train": round(1 - val - test, 6), "val": val, "test": test},
        "k": k,
        "n_read": int(len(records)),
        "n_images": int(len(table)),
        "n_people": int(table["group"].nunique()) if len(table) else 0,
        "n_excluded": int((~excluded["reason"].str.endswith("(kept)")).sum()) if len(excluded) else 0,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return Dataset(table[[c for c in MANIFEST_COLUMNS if c in table] + [c for c in table if c not in MANIFEST_COLUMNS]], excluded, meta)


def _relative(path: Path, base: Path) -> str:
    # Readers build paths under the resolved root, so a prefix test suffices (resolve() per
    # file cost seconds on 30k files).
    text, prefix = str(path), f"{base}{os.sep}"
    return Path(text[len(prefix):]).as_posix() if text.startswith(prefix) else text


def write_manifest(dataset: Dataset, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``manifest.csv``, ``manifest.json`` and ``excluded.csv`` to ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    manifest = out_dir / "manifest.csv"
    atomic_write(manifest, lambda tmp: dataset.table.to_csv(tmp, index=False))
    atomic_write(out_dir / "excluded.csv", lambda tmp: dataset.excluded.to_csv(tmp, index=False))
    write_json(out_dir / "manifest.json", {**dataset.meta, "manifest_sha256": sha256_file(manifest)})
    return manifest


def read_manifest(path: str | os.PathLike[str]) -> Dataset:
    """Read a manifest written by :func:`write_manifest`; clear errors when it is missing or damaged."""
    import json

    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; build one first (notebooks/02_extract.ipynb or `gender-lib extract`)")
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError) as error:
        raise DatasetError(f"{meta_path}: manifest metadata missing or damaged ({error}); rebuild the manifest") from None
    table = pd.read_csv(path, dtype={"age": str, "note": str, "subject": str, "group": str}, keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS if c not in table]
    if missing:
        raise DatasetError(f"{path}: not a gender_lib manifest (missing columns {missing})")
    excluded_path = path.parent / "excluded.csv"
    excluded = pd.read_csv(excluded_path, keep_default_na=False) if excluded_path.is_file() else pd.DataFrame(columns=["path", "reason", "detail"])
    return Dataset(table, excluded, meta)


def absolute_paths(dataset: Dataset) -> list[Path]:
    """The images' absolute paths (manifest paths are relative to its ``root``)."""
    root = Path(dataset.meta["root"])
    return [root / p for p in dataset.table["path"]]


def sample(dataset: Dataset, n: int, seed: int = 0) -> Dataset:
    """A seeded subset of about ``n`` images in the same proportions per split and gender.

    ``n <= 0`` (or >= the dataset) returns the dataset unchanged. Subsetting keeps every
    split person-disjoint.
    """
    table = dataset.table
    if n <= 0 or n >= len(table):
        return dataset
    fraction = n / len(table)
    parts = [group.sample(n=max(1, round(len(group) * fraction)), random_state=seed)
             for _, group in table.groupby(["split", "gender"], sort=True)]
    picked = pd.concat(parts).sort_index().reset_index(drop=True)
    meta = {**dataset.meta, "sample_size": int(n), "n_images": int(len(picked)), "n_people": int(picked["group"].nunique())}
    return Dataset(picked, dataset.excluded, meta)
