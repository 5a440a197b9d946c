"""Dataset layouts -> one table of labelled image files, plus a problem list for everything else.

Every reader returns ``(records, problems)``. A record is an image file it found with a label
(the :data:`RECORD_COLUMNS`, and ``fold`` where the layout has official folds); these are the
images "read". A problem is a dict ``path, reason, detail, kind`` where ``kind`` is
``"skipped"`` (a file, folder or metadata row that did not become a record) or ``"note"``
(something worth knowing about a record that was read and is kept).

Supported layouts (detected by :func:`detect_layout`, or forced with ``layout=``):

* ``combined``: the original work's ``combined/{aligned,valid}/<AA>_<M|F>/*.jpg``;
* ``adience``: ``aligned/<user_id>/landmark_aligned_face.<face_id>.<image>`` + ``fold_{0..4}_data.txt``;
* ``utkface``: ``<age>_<gender>_<race>_<datetime>.jpg[.chip.jpg]`` (gender 0 male, 1 female; race
  0-4 as :data:`UTKFACE_ETHNICITIES`); files stamped before :data:`UTKFACE_FROM` are skipped;
* ``folders``: class folders ``male/female``, ``man/woman``, ``men/women`` or ``m/f`` (any case);
* ``csv``: a CSV file with ``path,gender[,age,subject]`` (paths relative to the CSV).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gender_lib.errors import GenderLibError
from gender_lib.fileio import display_path
from gender_lib.images import is_image_name

if TYPE_CHECKING:  # pandas costs 0.4 s to import; prediction needs only AGE_BINS from here
    import pandas as pd

RECORD_COLUMNS = ["path", "gender", "age", "subject", "source"]
LAYOUTS = ("combined", "adience", "utkface", "folders", "csv")
#: Age groups close to Adience's bins, extended to cover every age.
AGE_BINS = ((0, 2), (3, 7), (8, 14), (15, 24), (25, 37), (38, 47), (48, 59), (60, 200))
#: Problem kinds: a reader's ``skipped`` (not read) and ``note`` (read and kept); cleaning adds ``excluded``.
SKIPPED, NOTE, EXCLUDED = "skipped", "note", "excluded"

_COMBINED_DIR = re.compile(r"^(\d{1,3})_([MFmf])$")
_ADIENCE_NAME = re.compile(r"^landmark_aligned_face\.(\d+)\.(.+)$")
_IMDB_NAME = re.compile(r"^(nm\d+)_rm\d+_[\d-]+_\d+(?:-\d+)?\.\w+$")
_WIKI_NAME = re.compile(r"^(\d+)_\d{1,4}-\d{1,2}-\d{1,2}_\d{4}(?:-\d+)?\.\w+$")
_UTK_NAME = re.compile(r"^(\d{1,3})_([01])_(\d)_(\d{17})\.jpg(\.chip\.jpg)?$", re.IGNORECASE)
#: UTKFace's race field (Zhang, Song & Qi, CVPR 2017), as the ``ethnicity`` column gives it.
UTKFACE_ETHNICITIES = ("White", "Black", "Asian", "Indian", "Other")
#: The first datetime stamp of the UTKFace files this project trains, tunes and chooses on (13,926
#: of the 23,707 aligned faces); earlier files are reserved for independent checks, so the reader
#: skips them (reported as "reserved for independent checks").
UTKFACE_FROM = "20170112190000000"
_CLASS_FOLDERS = {"male": "M", "female": "F", "man": "M", "woman": "F", "men": "M", "women": "F", "m": "M", "f": "F"}
_GENDER_WORDS = {"m": "M", "male": "M", "man": "M", "f": "F", "female": "F", "woman": "F"}
_CLASS_WORDS = {"M": "male/man/men/m", "F": "female/woman/women/f"}
_GENDER_NAMES = {"M": "male", "F": "female"}


class DatasetError(GenderLibError, ValueError):
    """A dataset that cannot be read; the message names the path and what was expected."""


# --------------------------------------------------------------------------- helpers


def problem(path: Path | str, reason: str, detail: str = "", kind: str = SKIPPED) -> dict[str, str]:
    """One line of the exclusion report."""
    return {"path": display_path(path), "reason": reason, "detail": display_path(detail), "kind": kind}


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
                problems.append(problem(folder, "unexpected folder", "not <AA>_<M|F>; skipped with its contents"))
                continue
            age, gender = str(int(match.group(1))), match.group(2).upper()
            for path in _walk_files(folder):
                if not is_image_name(path):
                    problems.append(problem(path, "not an image", f"extension '{path.suffix}'"))
                    continue
                parsed = subject_from_combined_name(path.name)
                if parsed is None:
                    # Unknown naming: the file becomes its own person, which can only under-group.
                    problems.append(problem(path, "unparsed name (kept)", "no person id in the name; treated as its own person", NOTE))
                    parsed = (f"file:{path.stem}", "unknown")
                records.append({"path": path, "gender": gender, "age": age, "subject": parsed[0], "source": parsed[1]})
    return records, problems


def _has_combined_dirs(folder: Path) -> bool:
    return folder.is_dir() and any(_COMBINED_DIR.match(p.name) and p.is_dir() for p in folder.iterdir())


def read_adience_folds(paths: Sequence[Path]) -> tuple[pd.DataFrame, list[dict]]:
    """Parse Adience ``fold_<k>_data.txt`` files, tolerating truncated copies.

    Returns one row per face (user_id, original_image, face_id, age, gender, fold, line) and a
    problem for every row that is cut short.
    """
    import pandas as pd

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
                problems.append(problem(f"{path}:{number}", "truncated metadata row", f"{len(fields)} of {len(header)} fields"))
                continue
            row = dict(zip(header, fields))
            rows.append(
                {
                    "user_id": row["user_id"],
                    "original_image": row["original_image"],
                    "face_id": row["face_id"],
                    "age": parse_adience_age(row["age"]),
                    "gender": row["gender"].strip().lower(),
                    "fold": fold,
                    "line": f"{path}:{number}",
                }
            )
    return pd.DataFrame(rows, columns=["user_id", "original_image", "face_id", "age", "gender", "fold", "line"]), problems


def read_adience(root: Path, folds_dir: Path | None = None) -> tuple[list[dict], list[dict]]:
    """Adience: ``<root>/aligned/<user_id>/landmark_aligned_face.<face_id>.<original_image>`` + fold files.

    Records carry the official ``fold`` (the ``<k>`` of the fold file that lists them).
    """
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
            problems.append(problem(path, "gender unknown", f"fold file says '{row.gender or 'blank'}' ({row.line})"))
            continue
        if not path.is_file():
            problems.append(problem(path, "image missing", f"listed at {row.line}"))
            continue
        records.append(
            {
                "path": path,
                "gender": row.gender.upper(),
                "age": row.age,
                "subject": f"adience:{row.user_id}:{row.face_id}",
                "source": "adience",
                "fold": row.fold,
            }
        )
    if images.is_dir():
        for path in _walk_files(images):
            if path not in listed:
                problems.append(problem(path, "no metadata row", "not listed in any fold file (folds may be truncated)"))
    return records, problems


def read_utkface(root: Path) -> tuple[list[dict], list[dict]]:
    """UTKFace: labels in the name ``<age>_<gender>_<race>_<datetime>.jpg``; gender 0 male, 1 female;
    ``ethnicity`` from the race field. Files stamped before :data:`UTKFACE_FROM` are skipped."""
    records, problems = [], []
    for path in _walk_files(root):
        match = _UTK_NAME.match(path.name)
        if not match:
            reason = "not an image" if not is_image_name(path) else "malformed UTKFace name"
            problems.append(problem(path, reason, "expected <age>_<gender 0|1>_<race 0-4>_<17-digit datetime>.jpg"))
            continue
        if match.group(4) < UTKFACE_FROM:
            problems.append(problem(path, "reserved for independent checks", f"UTKFace files stamped before {UTKFACE_FROM} are not trained or tuned on"))
            continue
        race = int(match.group(3))
        # UTKFace has no identity labels: each image is its own person (duplicates merge by hash).
        records.append(
            {
                "path": path,
                "gender": "M" if match.group(2) == "0" else "F",
                "age": str(int(match.group(1))),
                "subject": f"utkface:{path.name.split('.')[0]}",
                "source": "utkface",
                "ethnicity": UTKFACE_ETHNICITIES[race] if race < len(UTKFACE_ETHNICITIES) else "",
            }
        )
    return records, problems


def _class_folders(root: Path) -> tuple[list[Path], dict[str, list[str]]]:
    """(visible subfolders of ``root``, gender -> names of the class folders for it)."""
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    found: dict[str, list[str]] = {}
    for folder in subfolders:
        if (gender := _CLASS_FOLDERS.get(folder.name.lower())) is not None:
            found.setdefault(gender, []).append(folder.name)
    return subfolders, found


def _one_class_error(root: Path, found: dict[str, list[str]]) -> DatasetError:
    ((gender, names),) = found.items()
    missing = "F" if gender == "M" else "M"
    return DatasetError(f"{root}: class folders found for {_GENDER_NAMES[gender]} only ({', '.join(names)}); add a {_CLASS_WORDS[missing]} folder")


def read_folders(root: Path) -> tuple[list[dict], list[dict]]:
    """Class folders (``male/female``, ``man/woman``, ``m/f``, any case), optionally with person subfolders.

    Other folders are reported and skipped; a tree with one class only is an error naming the missing one.
    """
    subfolders, found = _class_folders(root)
    if not found:
        raise DatasetError(f"{root}: no class folders (male/female, man/woman, men/women or m/f, any case); found folders {[p.name for p in subfolders][:10]}")
    if len(found) == 1:
        raise _one_class_error(root, found)
    records, problems = [], []
    for folder in subfolders:
        gender = _CLASS_FOLDERS.get(folder.name.lower())
        if gender is None:
            problems.append(problem(folder, "unexpected folder", "not a gender class folder; skipped"))
            continue
        for path in _walk_files(folder):
            if not is_image_name(path):
                problems.append(problem(path, "not an image", f"extension '{path.suffix}'"))
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
                problems.append(problem(f"{csv_path}:{number}", "missing path", "empty path column"))
            elif gender is None:
                problems.append(problem(path, "gender unknown", f"'{row.get('gender', '')}' at {csv_path}:{number} (use m/f/male/female)"))
            elif not path.is_file():
                problems.append(problem(path, "image missing", f"listed at {csv_path}:{number}"))
            else:
                records.append(
                    {
                        "path": path,
                        "gender": gender,
                        "age": row.get("age", ""),
                        "subject": f"csv:{row['subject']}" if row.get("subject") else f"csv:{row['path']}",
                        "source": csv_path.stem,
                    }
                )
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
    subfolders, found = _class_folders(root)
    if len(found) == 2:
        return "folders"  # folders other than the class folders are reported and skipped
    names = [p.name for p in _walk_files(root)[:200]]
    if names and sum(bool(_UTK_NAME.match(n)) for n in names) >= max(1, len(names) // 2):
        return "utkface"
    if len(found) == 1:
        raise _one_class_error(root, found)
    raise DatasetError(
        f"{root}: unknown dataset layout. Looked for: <AA>_<M|F> folders (combined, also under aligned/ or valid/); "
        "fold_<k>_data.txt beside aligned/ (adience); <age>_<0|1>_<race>_<datetime>.jpg files (utkface); "
        "male/female, man/woman, men/women or m/f folders (folders); or pass a .csv with path,gender columns. "
        f"Found folders {[p.name for p in subfolders][:10]}. Pass layout=... to force one."
    )


def read_records(
    root: str | os.PathLike[str], layout: str | None = None, folds_dir: str | os.PathLike[str] | None = None
) -> tuple[pd.DataFrame, list[dict], str]:
    """Read ``root`` in its layout: (records table, problems, layout).

    The table has one row per labelled image file found (:data:`RECORD_COLUMNS`, plus ``fold``
    for layouts with official folds); every problem has ``kind`` ``"skipped"`` or ``"note"``.
    """
    import pandas as pd

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
    # File names that are not valid UTF-8 reach here as surrogate escapes, which pandas' string
    # columns refuse: labels derived from names are shown escaped, paths stay Path objects.
    for record in records:
        for key, value in record.items():
            if isinstance(value, str):
                record[key] = display_path(value)
    table = pd.DataFrame(records)
    for column in RECORD_COLUMNS:
        if column not in table:
            table[column] = pd.Series(dtype=object)
    return table, problems, layout


def read_fddb(root: str | os.PathLike[str]) -> dict[Path, list[tuple[float, float, float, float]]]:
    """A face-detection set in FDDB's layout (Jain & Learned-Miller, 2010): each photo
    (``<root>/originalPics/<key>.jpg``) -> its faces as the bounding boxes (left, top, right,
    bottom, px) of their hand-drawn ellipses, from ``<root>/FDDB-folds/FDDB-fold-NN-ellipseList.txt``
    (per photo: its key, the number of faces, then ``major minor angle centre_x centre_y 1`` per face).
    Raises :class:`DatasetError` where there are no ellipse lists or one cannot be parsed."""
    import math

    root = Path(root)
    folds = sorted((root / "FDDB-folds").glob("FDDB-fold-*-ellipseList.txt"))
    if not folds:
        raise DatasetError(f"{display_path(root)}: no FDDB-folds/FDDB-fold-NN-ellipseList.txt here")
    out: dict[Path, list[tuple[float, float, float, float]]] = {}
    for fold in folds:
        lines = [line.strip() for line in fold.read_text(encoding="utf-8").splitlines() if line.strip()]
        i = 0
        try:
            while i < len(lines):
                key, n = lines[i], int(lines[i + 1])
                boxes = []
                for line in lines[i + 2 : i + 2 + n]:
                    a, b, angle, cx, cy = (float(v) for v in line.split()[:5])
                    ex, ey = math.hypot(a * math.sin(angle), b * math.cos(angle)), math.hypot(a * math.cos(angle), b * math.sin(angle))
                    boxes.append((cx - ex, cy - ey, cx + ex, cy + ey))
                out[root / "originalPics" / f"{key}.jpg"] = boxes
                i += 2 + n
        except (ValueError, IndexError):
            raise DatasetError(f"{display_path(fold)}: line {i + 1} is not FDDB's ellipse format (key, count, then one ellipse a line)") from None
    return out
