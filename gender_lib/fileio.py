"""Small file helpers shared by every stage: atomic writes and content hashes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike[str], writer: Callable[[str], Any]) -> Path:
    """Call ``writer(tmp_path)`` then rename the temp file onto ``path`` (:func:`publish_together` of one file).

    The temp file lives in the same folder (so the rename is atomic on one filesystem) and keeps
    the target's suffix (NumPy and Matplotlib insist on theirs). If ``writer`` fails or the process is
    killed, ``path`` still holds its previous content or does not exist."""
    return publish_together([(path, writer)])[0]


def publish_together(writes: list[tuple[str | os.PathLike[str], Callable[[str], Any]]]) -> list[Path]:
    """Write several files that belong together (a model and its JSON sidecar): every temp file
    first, then the renames, so a failed write leaves every previous file as it was."""
    staged: list[tuple[str, Path]] = []
    try:
        for target, writer in writes:
            target = Path(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix or ".tmp", dir=target.parent)
            os.close(fd)
            staged.append((tmp, target))
            writer(tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give outputs the usual permissions
        for tmp, target in staged:
            os.replace(tmp, target)
    except BaseException:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise
    return [target for _, target in staged]


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Atomically write ``data`` as indented JSON."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks so a 1 GB file never sits in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


_HASHES: dict[tuple[str, int, int, int, int], str] = {}
#: The file in the store (:mod:`gender_lib.store`) where :func:`sha256_file_cached` keeps its hashes for later processes.
HASH_MEMO = "file_hashes.json"
#: A file modified this recently may change again within the same file-system clock tick: never remembered.
RACY_SECONDS = 2.0


def sha256_file_cached(path: str | os.PathLike[str]) -> str:
    """:func:`sha256_file`, computed once for a file that has not changed since (same inode, size,
    modification and change times), in this process and in later ones.

    A cold ``predict`` checks two model files (dlib's 22 MB weights for the backbone id, the
    converted model against its sidecar) at about 15 ms each; the hashes are kept in
    ``<store>/file_hashes.json`` (:data:`HASH_MEMO`), keyed by the real path and that stamp, as
    git's index keeps its file stamps. A file changed in any way gets a new stamp and is hashed again,
    except within one tick of the file system's clock: so, as git does, a file modified in the last
    :data:`RACY_SECONDS` is hashed every time and not remembered. A memo that cannot be read or
    written costs only the time.
    """
    info = os.stat(path)
    real = os.path.realpath(path)
    stamp = [info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]
    key = (real, *stamp)
    if key in _HASHES:
        return _HASHES[key]
    if time.time_ns() - max(info.st_mtime_ns, info.st_ctime_ns) < RACY_SECONDS * 1e9:
        return sha256_file(path)
    from gender_lib import store

    memo = store.root() / HASH_MEMO
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    entry = known.get(real)
    if isinstance(entry, list) and len(entry) == 5 and entry[:4] == stamp:
        _HASHES[key] = str(entry[4])
    else:
        _HASHES[key] = sha256_file(path)
        known = {name: entry for name, entry in known.items() if os.path.exists(name)}  # files since removed (temp folders) go
        known[real] = [*stamp, _HASHES[key]]
        try:
            write_json(memo, known)  # atomic; two processes writing at once lose an entry, never the file
        except OSError:
            pass
    return _HASHES[key]


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a bytes object."""
    return hashlib.sha256(data).hexdigest()


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` as text that any output can carry: bytes of a file name that are not valid UTF-8
    (a Latin-1 name from an old zip file, kept by Python as surrogate escapes) are shown as
    ``\\xe9`` escapes. Use it wherever a path is printed, written to CSV, JSON or Markdown, or
    shown in HTML; keep the real ``Path`` for opening the file."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return os.fsencode(text).decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a lone surrogate that no file name decodes to: escape it as it is
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
