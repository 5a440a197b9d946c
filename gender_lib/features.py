"""Streaming descriptor extraction with an on-disk cache that survives kills.

Cache layout, one folder per backbone id (which includes its weights hash and preprocessing)::

    data/processed/descriptors/<backbone id>/
        backbone.json               what produced these descriptors
        chunk-<time>-<hash>.npz     keys (image sha256, str) + x (float32 n x dim), written atomically
        index.json                  chunk names and sizes (rewritten atomically after each chunk)

The chunks are the source of truth: on open, every chunk's ``keys`` array is read (lazily,
not the vectors) to rebuild the key -> (chunk, row) index; a chunk that cannot be read is
moved aside as ``*.corrupt`` and its images are embedded again. Because a chunk appears only
through an atomic rename, a run killed at any moment leaves complete chunks or none, and a
rerun embeds exactly the images that are not yet in a chunk.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from gender_lib.fileio import atomic_write, sha256_bytes, write_json


class CacheMismatchError(ValueError):
    """Descriptors from one backbone offered to a consumer built for another."""


class MissingDescriptorsError(KeyError):
    """Images asked for that the cache does not hold; prints as a plain sentence."""

    def __str__(self) -> str:
        return str(self.args[0])


class DescriptorCache:
    """Content-addressed descriptor store for one backbone id."""

    def __init__(self, root: str | Path, backbone_id: str, dim: int, info: dict[str, Any] | None = None):
        self.dir = Path(root) / backbone_id
        self.backbone_id, self.dim = backbone_id, int(dim)
        self.info = info or {}
        self._chunks: list[Path] = []
        self._index: dict[str, tuple[int, int]] = {}
        self.quarantined: list[Path] = []
        self._open()

    def _open(self) -> None:
        if not self.dir.is_dir():
            return
        for stale in self.dir.glob(".chunk-*"):  # temp files of a killed writer
            stale.unlink(missing_ok=True)
        stored = self.dir / "backbone.json"
        if stored.is_file():
            saved = json.loads(stored.read_text())
            if saved.get("id") != self.backbone_id or int(saved.get("dim", self.dim)) != self.dim:
                raise CacheMismatchError(f"{self.dir}: holds descriptors of {saved.get('id')} ({saved.get('dim')}-d), not {self.backbone_id} ({self.dim}-d)")
        for path in sorted(self.dir.glob("chunk-*.npz")):
            try:
                with np.load(path, allow_pickle=False) as data:
                    keys = data["keys"]
                    shape = data["x"].shape
                if shape != (len(keys), self.dim):
                    raise ValueError(f"x has shape {shape}, expected ({len(keys)}, {self.dim})")
            except Exception as error:  # noqa: BLE001 - any unreadable chunk is set aside, never trusted
                corrupt = path.with_suffix(".corrupt")
                path.rename(corrupt)
                self.quarantined.append(corrupt)
                print(f"warning: {path} is unreadable ({type(error).__name__}: {error}); moved to {corrupt.name}, its images will be re-embedded")
                continue
            number = len(self._chunks)
            self._chunks.append(path)
            for row, key in enumerate(keys.tolist()):
                self._index.setdefault(key, (number, row))

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def missing(self, keys: Sequence[str]) -> list[str]:
        return [k for k in keys if k not in self._index]

    @property
    def chunks(self) -> list[Path]:
        return list(self._chunks)

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> Path | None:
        """Store one chunk atomically; keys already present are ignored."""
        vectors = np.asarray(vectors, np.float32)
        if vectors.shape != (len(keys), self.dim):
            raise ValueError(f"vectors have shape {vectors.shape}, expected ({len(keys)}, {self.dim})")
        fresh = [i for i, k in enumerate(keys) if k not in self._index]
        if not fresh:
            return None
        keys = np.asarray([keys[i] for i in fresh])
        vectors = vectors[fresh]
        if not self._chunks:
            write_json(self.dir / "backbone.json", {"id": self.backbone_id, "dim": self.dim, **self.info})
        name = f"chunk-{time.time_ns():020d}-{sha256_bytes(keys.tobytes())[:8]}.npz"
        path = atomic_write(self.dir / name, lambda tmp: np.savez(tmp, keys=keys, x=vectors))
        number = len(self._chunks)
        self._chunks.append(path)
        for row, key in enumerate(keys.tolist()):
            self._index[key] = (number, row)
        write_json(self.dir / "index.json", {"backbone": self.backbone_id, "dim": self.dim, "images": len(self._index),
                                             "chunks": [{"file": p.name} for p in self._chunks]})
        return path

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Descriptors for ``keys`` in order, float32 (n, dim); :class:`MissingDescriptorsError` says what is missing."""
        missing = self.missing(keys)
        if missing:
            raise MissingDescriptorsError(f"{len(missing)} images have no {self.backbone_id} descriptors in {self.dir} (e.g. {missing[0][:12]}); run extraction first")
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
        return (f"{self.backbone}: {self.requested} images, {self.cached} already cached, {self.embedded} embedded{rate}, "
                f"{len(self.failures)} failed to decode")


def _batches(items: Sequence[tuple[Path, str]], backbone: Any, batch_size: int, failures: list[dict[str, str]]) -> Iterator[tuple[list[str], np.ndarray]]:
    from gender_lib.dataset import load_rgb

    batch_keys: list[str] = []
    prepared: list[np.ndarray] = []
    for path, key in items:
        try:
            prepared.append(backbone.prepare(load_rgb(path)))
            batch_keys.append(key)
        except Exception as error:  # noqa: BLE001 - one bad image must not sink its batch
            failures.append({"path": str(path), "reason": "failed to decode at extraction", "detail": f"{type(error).__name__}: {error}"})
        if len(prepared) == batch_size:
            yield batch_keys, np.stack(prepared)
            batch_keys, prepared = [], []
    if prepared:
        yield batch_keys, np.stack(prepared)


def _prefetch(iterator: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run ``iterator`` in a thread, ``depth`` items ahead, so decoding overlaps the model."""
    box: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        box.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            box.put(done)
        except BaseException as error:  # noqa: BLE001 - re-raised in the consumer
            box.put(error)

    thread = threading.Thread(target=produce, daemon=True, name="gender_lib-decode")
    thread.start()
    try:
        while True:
            item = box.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


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
) -> ExtractReport:
    """Embed every image whose key is not cached yet; stream, batch, and store in chunks."""
    from tqdm.auto import tqdm

    if len(paths) != len(keys):
        raise ValueError(f"{len(paths)} paths but {len(keys)} keys")
    if batch_size < 1 or chunk_size < 1:
        raise ValueError("batch_size and chunk_size must be positive")
    if cache.backbone_id != backbone.id or cache.dim != backbone.dim:
        raise CacheMismatchError(f"cache {cache.dir} is for {cache.backbone_id}, not {backbone.id}")
    start = time.perf_counter()
    seen: set[str] = set()
    todo: list[tuple[Path, str]] = []
    for path, key in zip(paths, keys):
        if key not in seen and key not in cache:
            todo.append((Path(path), key))
        seen.add(key)
    failures: list[dict[str, str]] = []
    pending_keys: list[str] = []
    pending: list[np.ndarray] = []
    bar = tqdm(total=len(todo), desc=f"embed {backbone.name}", unit="img", disable=not progress or not todo, mininterval=1.0)
    try:
        for batch_keys, batch in _prefetch(_batches(todo, backbone, batch_size, failures), prefetch):
            pending.append(backbone.embed(batch))
            pending_keys.extend(batch_keys)
            bar.update(len(batch_keys))
            if len(pending_keys) >= chunk_size:
                cache.add(pending_keys, np.concatenate(pending))
                pending_keys, pending = [], []
        if pending_keys:
            cache.add(pending_keys, np.concatenate(pending))
    finally:
        bar.close()
    embedded = len(todo) - len(failures)
    return ExtractReport(backbone.id, len(seen), len(seen) - len(todo), embedded, failures, time.perf_counter() - start)


def cache_for(backbone: Any, root: str | Path | None = None) -> DescriptorCache:
    """The descriptor cache of ``backbone`` under ``root`` (default data/processed/descriptors)."""
    from gender_lib import config

    return DescriptorCache(root or config.paths().descriptors, backbone.id, backbone.dim, backbone.describe())


def extract_dataset(
    dataset: Any,
    backbone: Any,
    *,
    cache_root: str | Path | None = None,
    manifest_dir: str | Path | None = None,
    batch_size: int = 32,
    chunk_size: int = 256,
    progress: bool = True,
) -> tuple[np.ndarray, Any, ExtractReport]:
    """Embed a manifest's images; returns (descriptors, the rows that have them, report).

    Images that fail to decode are dropped from the returned table and appended to the
    manifest's ``excluded.csv`` (when ``manifest_dir`` is given).
    """
    import pandas as pd

    from gender_lib.dataset import absolute_paths

    cache = cache_for(backbone, cache_root)
    table = dataset.table
    report = extract(absolute_paths(dataset), table["sha256"].tolist(), backbone, cache,
                     batch_size=batch_size, chunk_size=chunk_size, progress=progress)
    keep = table["sha256"].map(cache.__contains__)
    if report.failures and manifest_dir is not None:
        root = Path(dataset.meta["root"])
        failed = pd.DataFrame(report.failures)
        failed["path"] = [str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else p for p in failed["path"]]
        excluded = pd.concat([dataset.excluded, failed], ignore_index=True).drop_duplicates()
        atomic_write(Path(manifest_dir) / "excluded.csv", lambda tmp: excluded.to_csv(tmp, index=False))
    kept = table[keep].reset_index(drop=True)
    if manifest_dir is not None:
        write_json(Path(manifest_dir) / "extraction.json", {
            "backbone": backbone.describe(), "cache": str(cache.dir), "images": int(len(kept)),
            "failures": len(report.failures), "manifest_sha256": dataset.meta.get("manifest_sha256"),
        })
    return cache.get(kept["sha256"].tolist()), kept, report


def build_and_extract(
    data_root: str | Path,
    workdir: str | Path,
    *,
    layout: str | None = None,
    backbone: str = "auto",
    align: str = "chip",
    precision: str = "float32",
    sample_size: int = 0,
    batch_size: int = 32,
    seed: int = 0,
    protocol: str = "person",
    cache_root: str | Path | None = None,
    progress: bool = True,
) -> tuple[Any, np.ndarray, Any, ExtractReport]:
    """Read, clean, split, sample and write the manifest to ``workdir``, then extract descriptors.

    Returns (dataset, descriptors, rows with descriptors, report). What the CLI's ``extract`` runs.
    """
    from gender_lib import backbones
    from gender_lib import dataset as ds

    full = ds.build(data_root, layout=layout, seed=seed, protocol=protocol, progress=progress)
    print(ds.cleaning_summary(full.meta["n_read"], full.table, full.excluded))
    data = ds.sample(full, sample_size, seed=seed)
    ds.write_manifest(data, workdir)
    data = ds.read_manifest(Path(workdir) / "manifest.csv")
    print(ds.split_report(data.table))
    net = backbones.get_backbone(backbone, precision=precision, align=align)
    try:
        x, table, report = extract_dataset(data, net, cache_root=cache_root, manifest_dir=workdir, batch_size=batch_size, progress=progress)
    finally:
        net.close()
    print(report.summary())
    return data, x, table, report


def open_cache(backbone_id: str, dim: int, cache_root: str | Path | None = None) -> DescriptorCache:
    """The existing descriptor cache of ``backbone_id``; a clear error naming what is there if absent."""
    from gender_lib import config

    root = Path(cache_root or config.paths().descriptors)
    if not (root / backbone_id).is_dir():
        available = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        raise CacheMismatchError(f"{root}: no descriptors for backbone {backbone_id}; available: {available or 'none'}. Run extraction with that backbone.")
    return DescriptorCache(root, backbone_id, dim)


def load_descriptors(table: Any, backbone_id: str, dim: int, cache_root: str | Path | None = None) -> np.ndarray:
    """Cached descriptors for ``table`` rows (by ``sha256``) from the cache of ``backbone_id``."""
    return open_cache(backbone_id, dim, cache_root).get(table["sha256"].tolist())
