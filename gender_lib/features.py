"""Streaming descriptor extraction with an on-disk cache that survives kills and concurrent use.

Cache layout in the store (:mod:`gender_lib.store`; default ``data/cache/descriptors``), one
folder per backbone id (which includes its weights hash and preprocessing)::

    <store>/<backbone id>/
        backbone.json                       what produced these descriptors
        chunk-<time>-<hash>.npz             keys (image sha256, str) + x (float32 n x dim)
        .chunk-<...>.npz.<host>.<pid>.tmp   a chunk being written by process <pid> on <host>

The chunks are the source of truth: on open, every chunk's ``keys`` array is read (lazily,
not the vectors) to rebuild the key -> (chunk, row) index; a chunk that cannot be read is
moved aside as ``*.corrupt`` and its images are embedded again. A chunk is written to a temp
file, fsynced, and renamed into place, so a run killed at any moment leaves complete chunks or
none, and a rerun embeds exactly the images that are not yet in a chunk.

Several processes may write and read one cache at once: chunk names are unique per writer,
readers pick up chunks added after they opened (:meth:`DescriptorCache.refresh`, which
:meth:`~DescriptorCache.get` calls once before reporting keys as missing), and opening a cache
removes only temp files that are provably abandoned (see :func:`_stale_temp`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gender_lib.errors import GenderLibError
from gender_lib.fileio import display_path, sha256_bytes, write_json

log = logging.getLogger(__name__)

#: A temp file untouched for this long is abandoned whoever wrote it: writing one chunk takes seconds.
STALE_TEMP_SECONDS = 3600.0

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "localhost"
_TEMP_NAME = re.compile(r"^\.chunk-.+\.npz\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.tmp$")


class CacheMismatchError(GenderLibError, ValueError):
    """Descriptors from one backbone offered to a consumer built for another."""


class MissingDescriptorsError(GenderLibError, KeyError):
    """Images asked for that the cache does not hold; prints as a plain sentence."""

    def __str__(self) -> str:
        return str(self.args[0])


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host; when in doubt, yes."""
    if os.name != "posix":  # os.kill(pid, 0) is not a probe elsewhere
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def _stale_temp(path: Path, now: float | None = None) -> bool:
    """Whether the chunk temp file ``path`` is provably abandoned, so removing it cannot hurt a writer.

    Either its writer (host and pid are in the name) is this host's and that pid is no longer
    running, or nobody has written to it for :data:`STALE_TEMP_SECONDS` (temp files of other
    hosts on a shared disk, and those of older versions, which carry no pid). A live pid is
    trusted, so a reused pid only delays the clean-up until the file is an hour old.
    """
    try:
        age = (now or time.time()) - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > STALE_TEMP_SECONDS:
        return True
    match = _TEMP_NAME.match(path.name)
    return bool(match and match["host"] == _HOST and not _pid_alive(int(match["pid"])))


class DescriptorCache:
    """Content-addressed descriptor store for one backbone id."""

    def __init__(self, root: str | Path, backbone_id: str, dim: int, info: dict[str, Any] | None = None):
        self.dir = Path(root) / backbone_id
        self.backbone_id, self.dim = backbone_id, int(dim)
        self.info = info or {}
        self._chunks: list[Path] = []
        self._known: set[str] = set()
        self._index: dict[str, tuple[int, int]] = {}
        self._checked = False
        self.quarantined: list[Path] = []
        if self.dir.is_dir():
            self._remove_stale_temps()
        self.refresh()

    def _remove_stale_temps(self) -> None:
        now = time.time()
        for temp in self.dir.glob(".chunk-*"):
            if _stale_temp(temp, now):
                temp.unlink(missing_ok=True)
                log.info("removed %s, left by a writer that is gone", temp)

    def _check_backbone(self) -> None:
        stored = self.dir / "backbone.json"
        if not stored.is_file():
            return  # a writer that has not stored anything yet; look again next time
        saved = json.loads(stored.read_text())
        if saved.get("id") != self.backbone_id or int(saved.get("dim", self.dim)) != self.dim:
            raise CacheMismatchError(f"{self.dir}: holds descriptors of {saved.get('id')} ({saved.get('dim')}-d), not {self.backbone_id} ({self.dim}-d)")
        self._checked = True

    def _read_keys(self, path: Path) -> np.ndarray | None:
        """The keys of chunk ``path``; None (after moving it aside) when it is unreadable or gone."""
        try:
            with np.load(path, allow_pickle=False) as data:
                keys = data["keys"]
                shape = data["x"].shape
            if shape != (len(keys), self.dim):
                raise ValueError(f"x has shape {shape}, expected ({len(keys)}, {self.dim})")
            return keys
        except FileNotFoundError:
            return None  # moved aside by another process since the listing
        except Exception as error:  # noqa: BLE001 - any unreadable chunk is set aside, never trusted
            corrupt = path.with_suffix(".corrupt")
            try:
                path.rename(corrupt)
            except FileNotFoundError:
                return None  # another process set it aside first
            self.quarantined.append(corrupt)
            log.warning("%s is unreadable (%s: %s); moved to %s, its images will be re-embedded", path, type(error).__name__, error, corrupt.name)
            return None

    def refresh(self) -> int:
        """Index the chunks stored (by any process) since this cache last looked; returns how many images are new."""
        if not self.dir.is_dir():
            return 0
        if not self._checked:
            self._check_backbone()
        before = len(self._index)
        for path in sorted(self.dir.glob("chunk-*.npz")):
            if path.name in self._known:
                continue
            keys = self._read_keys(path)
            if keys is None:
                continue
            number = len(self._chunks)
            self._chunks.append(path)
            self._known.add(path.name)
            for row, key in enumerate(keys.tolist()):
                self._index.setdefault(key, (number, row))
        return len(self._index) - before

    def _rebuild(self) -> None:
        self._chunks, self._known, self._index = [], set(), {}
        self.refresh()

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def missing(self, keys: Sequence[str]) -> list[str]:
        """Keys not in the index as of the last open, :meth:`refresh`, :meth:`add` or :meth:`get`."""
        return [k for k in keys if k not in self._index]

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> Path | None:
        """Store one chunk atomically; keys already present (stored by anyone) are ignored."""
        vectors = np.asarray(vectors, np.float32)
        if vectors.shape != (len(keys), self.dim):
            raise ValueError(f"vectors have shape {vectors.shape}, expected ({len(keys)}, {self.dim})")
        self.refresh()
        fresh = [i for i, k in enumerate(keys) if k not in self._index]
        if not fresh:
            return None
        keys = np.asarray([keys[i] for i in fresh])
        vectors = vectors[fresh]
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self._chunks or not (self.dir / "backbone.json").is_file():
            write_json(self.dir / "backbone.json", {"id": self.backbone_id, "dim": self.dim, **self.info})
        writer = f"{_HOST}.{os.getpid()}"
        name = f"chunk-{time.time_ns():020d}-{sha256_bytes(keys.tobytes() + writer.encode())[:8]}.npz"
        path = self._write_chunk(name, keys, vectors)
        number = len(self._chunks)
        self._chunks.append(path)
        self._known.add(path.name)
        for row, key in enumerate(keys.tolist()):
            self._index[key] = (number, row)
        return path

    def _write_chunk(self, name: str, keys: np.ndarray, vectors: np.ndarray) -> Path:
        """Write to ``.<name>.<host>.<pid>.tmp``, fsync, rename onto ``name``; once more if the temp vanished."""
        target = self.dir / name
        temp = self.dir / f".{name}.{_HOST}.{os.getpid()}.tmp"
        for attempt in range(2):
            try:
                with open(temp, "wb") as handle:
                    np.savez(handle, keys=keys, x=vectors)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, target)
                return target
            except FileNotFoundError:
                if attempt:
                    raise
                log.warning("%s vanished before its rename (removed by another process?); writing it again", temp)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
        raise AssertionError("unreachable")

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Descriptors for ``keys`` in order, float32 (n, dim); :class:`MissingDescriptorsError` says what is missing.

        Keys not indexed yet trigger one :meth:`refresh` first, so a reader opened before an
        extraction finished sees what it stored.
        """
        if self.missing(keys):
            self.refresh()
        missing = self.missing(keys)
        if missing:
            raise MissingDescriptorsError(
                f"{len(missing)} images have no {self.backbone_id} descriptors in {self.dir} (e.g. {missing[0][:12]}); run extraction first"
            )
        try:
            return self._gather(keys)
        except FileNotFoundError:  # a chunk was moved aside by another process: index afresh, once
            self._rebuild()
            missing = self.missing(keys)
            if missing:
                raise MissingDescriptorsError(
                    f"{len(missing)} images have no {self.backbone_id} descriptors in {self.dir} (e.g. {missing[0][:12]}); run extraction first"
                ) from None
            return self._gather(keys)

    def _gather(self, keys: Sequence[str]) -> np.ndarray:
        out = np.empty((len(keys), self.dim), np.float32)
        wanted: dict[int, list[tuple[int, int]]] = {}
        for i, key in enumerate(keys):
            chunk, row = self._index[key]
            wanted.setdefault(chunk, []).append((i, row))
        for chunk, pairs in wanted.items():
            with np.load(self._chunks[chunk], allow_pickle=False) as data:
                x = data["x"]
                out[[i for i, _ in pairs]] = x[[r for _, r in pairs]]
        return out


@dataclasses.dataclass
class ExtractReport:
    """What one extraction run did."""

    backbone: str
    requested: int
    cached: int
    embedded: int
    failures: list[dict[str, str]]
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 and self.embedded else 0.0

    def summary(self) -> str:
        rate = f" at {self.images_per_s:.1f} img/s" if self.embedded else ""
        return f"{self.backbone}: {self.requested} images, {self.cached} already cached, {self.embedded} embedded{rate}, {len(self.failures)} failed to decode"


def _batches(
    items: Sequence[tuple[Path, str]], backbone: Any, batch_size: int, failures: list[dict[str, str]], workers: int = 1, ahead: int = 2
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Decoded and prepared faces, ``batch_size`` at a time, in the order of ``items``, prepared by
    ``workers`` threads up to ``ahead`` batches ahead of the one the caller embeds (so decoding
    overlaps the model, in bounded memory). Decoding and dlib's HOG detection (each thread has its
    own detector) release the GIL, so they run on every core; dlib's landmarks and chip hold it, so
    the threads take turns there."""
    from concurrent.futures import Future, ThreadPoolExecutor

    from gender_lib.images import load_rgb

    def prepare(item: tuple[Path, str]) -> tuple[str, np.ndarray | None, dict[str, str] | None]:
        path, key = item
        try:
            return key, backbone.prepare(load_rgb(path)), None
        except Exception as error:  # noqa: BLE001 - one bad image must not sink its batch
            return key, None, {"path": display_path(path), "reason": "failed to decode at extraction", "detail": f"{type(error).__name__}: {error}"}

    def finished(batch: list[Future]) -> Iterator[tuple[list[str], np.ndarray]]:
        done = [f.result() for f in batch]
        failures.extend(failure for _, _, failure in done if failure)
        kept = [(key, face) for key, face, failure in done if not failure]
        if kept:
            yield [key for key, _ in kept], np.stack([face for _, face in kept])

    queued: collections.deque[list[Future]] = collections.deque()
    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="gender_lib-prepare")
    try:
        for start in range(0, len(items), batch_size):
            queued.append([pool.submit(prepare, item) for item in items[start : start + batch_size]])
            if len(queued) > ahead:
                yield from finished(queued.popleft())
        while queued:
            yield from finished(queued.popleft())
    finally:  # an error or Ctrl-C in the caller: the batches queued ahead are dropped, not waited for
        pool.shutdown(wait=False, cancel_futures=True)


def todo(paths: Sequence[str | os.PathLike[str]], keys: Sequence[str], cache: DescriptorCache) -> tuple[int, list[tuple[Path, str]]]:
    """(distinct keys requested, [(path, key)] of those not cached yet): the work of an extraction,
    single-machine or Ray. A key's first path wins; what other processes stored is not redone."""
    if len(paths) != len(keys):
        raise ValueError(f"{len(paths)} paths but {len(keys)} keys")
    cache.refresh()
    seen: set[str] = set()
    out: list[tuple[Path, str]] = []
    for path, key in zip(paths, keys):
        if key not in seen and key not in cache:
            out.append((Path(path), key))
        seen.add(key)
    return len(seen), out


class ChunkWriter:
    """Descriptors as they come, stored in chunks: every ``chunk_size`` rows or, with a slow
    backbone, as soon as ``flush_seconds`` have passed since the last chunk (None: only by size), so
    a kill loses at most about that much work. :meth:`flush` stores the rest."""

    def __init__(self, cache: DescriptorCache, chunk_size: int = 256, flush_seconds: float | None = 30.0):
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        if flush_seconds is not None and not flush_seconds >= 0:
            raise ValueError(f"flush_seconds must be >= 0 or None, not {flush_seconds}")
        self.cache, self.chunk_size, self.flush_seconds = cache, chunk_size, flush_seconds
        self.keys: list[str] = []
        self.vectors: list[np.ndarray] = []
        self.last = time.monotonic()

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        self.keys.extend(keys)
        self.vectors.append(np.asarray(vectors, np.float32))
        due = self.flush_seconds is not None and time.monotonic() - self.last >= self.flush_seconds
        if len(self.keys) >= self.chunk_size or due:
            self.flush()

    def flush(self) -> None:
        if self.keys:
            self.cache.add(self.keys, np.concatenate(self.vectors))
        self.keys, self.vectors, self.last = [], [], time.monotonic()


def extract(
    paths: Sequence[str | Path],
    keys: Sequence[str],
    backbone: Any,
    cache: DescriptorCache,
    *,
    batch_size: int = 32,
    chunk_size: int = 256,
    prefetch: int = 2,
    progress: bool = True,
    flush_seconds: float | None = 30.0,
    prepare_threads: int | None = None,
) -> ExtractReport:
    """Embed every image whose key is not cached yet; stream, batch, and store in chunks.

    Images are decoded and prepared (:meth:`prepare`: detection, alignment) by ``prepare_threads``
    threads (default: one per core this process may use), ``prefetch`` batches ahead of the model.
    A chunk is stored every ``chunk_size`` images or, with a slow backbone, as soon as
    ``flush_seconds`` have passed since the last one (None: only by size), so a kill loses
    at most about that much work.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    writer = ChunkWriter(cache, chunk_size, flush_seconds)
    if cache.backbone_id != backbone.id or cache.dim != backbone.dim:
        raise CacheMismatchError(f"cache {cache.dir} is for {cache.backbone_id}, not {backbone.id}")
    start = time.perf_counter()
    requested, work = todo(paths, keys, cache)
    failures: list[dict[str, str]] = []
    bar = tqdm(total=len(work), desc=f"embed {backbone.name}", unit="img", disable=not progress or not work, mininterval=1.0)
    try:
        threads = prepare_threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        for batch_keys, batch in _batches(work, backbone, batch_size, failures, threads, prefetch):
            writer.add(batch_keys, backbone.embed(batch))
            bar.update(len(batch_keys))
        writer.flush()
    finally:
        bar.close()
    embedded = len(work) - len(failures)
    return ExtractReport(backbone.id, requested, requested - len(work), embedded, failures, time.perf_counter() - start)


def cache_for(backbone: Any, root: str | Path | None = None) -> DescriptorCache:
    """The descriptor cache of ``backbone`` under ``root`` (default: the store, :func:`gender_lib.store.root`)."""
    from gender_lib import store

    return DescriptorCache(root or store.root(), backbone.id, backbone.dim, backbone.describe())


def open_cache(backbone_id: str, dim: int, root: str | Path | None = None) -> DescriptorCache:
    """The existing descriptor cache of ``backbone_id``; a clear error naming what is there if absent."""
    from gender_lib import store

    root = Path(root or store.root())
    if not (root / backbone_id).is_dir():
        available = sorted(p.name for p in root.iterdir() if (p / "backbone.json").is_file()) if root.is_dir() else []
        raise CacheMismatchError(f"{root}: no descriptors for backbone {backbone_id}; available: {available or 'none'}. Run extraction with that backbone.")
    return DescriptorCache(root, backbone_id, dim)
