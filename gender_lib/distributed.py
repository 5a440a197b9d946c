"""Descriptor extraction and prediction past one machine, on Ray Data (``pip install -e '.[distributed]'``).

:func:`predict_ray` streams photos through prediction actors (each a
:class:`gender_lib.predict.Predictor`) for ``gender-lib predict --ray-address``; the driver
(:func:`gender_lib.predict.run`) writes the rows as they come. Extraction:

:func:`extract_ray` does what :func:`gender_lib.features.extract` does, with the work spread over
a Ray cluster (or a local Ray instance), and stores the descriptors in the same content-addressed
:class:`~gender_lib.features.DescriptorCache`, so the head, the evaluation and reruns cannot tell
where they were made::

    driver: keys already cached (or repeated) are dropped before anything is scheduled
      -> ray.data.from_items([(path, key), ...])
      -> map_batches(_prepare_batch)           CPU tasks: decode (images.load_rgb) + backbone.prepare_face;
                                               a file that fails is marked, the rest of its batch kept
      -> map_batches(_Embed, ActorPoolStrategy) actors, the backbone loaded once each (from_description),
                                               one GPU each where the cluster has GPUs
      -> iter_batches on the driver             cache.add(keys, vectors) every ``chunk_size`` rows

Faults: the embedding actors are created with ``max_restarts`` and ``max_task_retries``
(:data:`RETRIES`), so an actor that dies (killed, OOM, node lost) is restarted by Ray and its
batches run again; decode tasks are retried by Ray Data as usual. Whatever happens, each
image's descriptor is stored once: the driver is the only writer, it keeps the first vector of a
key it sees, and the cache ignores keys it already holds. At the end every requested key is
either in the cache or among the decode failures; otherwise :class:`IncompleteExtractionError`.

Importing this module does not import Ray; :func:`extract_ray` does, and says how to install
it where it is missing. On a cluster every node needs gender_lib and its dependencies installed
and must see the image paths and the store (:mod:`gender_lib.store`; a shared filesystem): the
driver converts dlib's network there before the actors start, and an actor that finds none
converts it itself.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from gender_lib import backbones, features, store
from gender_lib.errors import GenderLibError

log = logging.getLogger(__name__)

#: How often Ray restarts a dead embedding actor, and retries a batch it was running.
RETRIES = 3
#: The extra that installs Ray Data.
INSTALL_HINT = "pip install -e '.[distributed]'"


class RayNotInstalledError(GenderLibError, ImportError):
    """Extraction on Ray (``ray_address``) was asked for, but Ray Data is not installed."""


class IncompleteExtractionError(GenderLibError, RuntimeError):
    """Images that came back from the cluster with neither a descriptor nor a decode failure."""


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - the part that is needed, and the part that may be missing
    except ImportError as error:
        raise RayNotInstalledError(f"extraction on Ray (ray_address) needs Ray Data, which is not installed ({error.msg}): {INSTALL_HINT}") from None
    return ray


# --------------------------------------------------------------------------- worker side

#: One backbone per worker process and description: decode tasks reuse their worker processes.
_BACKBONES: dict[str, Any] = {}


def _backbone(description: dict[str, Any], root: str, vggface_path: str | None = None) -> Any:
    key = f"{description['id']}@{root}"
    if key not in _BACKBONES:
        with store.using(root):
            _BACKBONES[key] = backbones.from_description(description, vggface_path)
    return _BACKBONES[key]


def _prepare_batch(batch: dict[str, np.ndarray], description: dict[str, Any], root: str, vggface_path: str | None = None) -> dict[str, np.ndarray]:
    """Decode and prepare one batch of (path, key) rows; a row that fails keeps its place with an
    ``error`` and a zero face, so a bad file costs only itself. ``root``: the driver's store."""
    from gender_lib.images import load_rgb

    backbone = _backbone(description, root, vggface_path)
    faces: list[np.ndarray | None] = []
    errors: list[str] = []
    with store.using(root):  # dlib's detector copy is read from it
        for path in batch["path"]:
            try:
                faces.append(np.asarray(backbone.prepare_face(load_rgb(str(path)))))
                errors.append("")
            except Exception as error:  # noqa: BLE001 - one bad image must not sink its batch
                faces.append(None)
                errors.append(f"{type(error).__name__}: {error}")
    good = next((f for f in faces if f is not None), None)
    if good is None:  # every file failed: a zero face of the right shape and type keeps the column uniform
        good = np.asarray(backbone.prepare_face(np.zeros((64, 64, 3), np.uint8)))
    zero = np.zeros_like(good)
    return {"path": batch["path"], "key": batch["key"], "error": np.asarray(errors, dtype=object), "face": np.stack([zero if f is None else f for f in faces])}


class _Embed:
    """An embedding actor: the backbone's network is loaded once, in the constructor."""

    def __init__(self, description: dict[str, Any], root: str, vggface_path: str | None = None):
        self.backbone = _backbone(description, root, vggface_path).load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = batch["error"]
        ok = np.asarray([not e for e in errors], bool)
        vectors = np.zeros((len(errors), self.backbone.dim), np.float32)
        if ok.any():
            vectors[ok] = self.backbone.embed(batch["face"][ok])
        return {"path": batch["path"], "key": batch["key"], "error": errors, "vector": vectors}


# --------------------------------------------------------------------------- driver side


def _start_ray(ray: Any, address: str, num_cpus: int | None) -> bool:
    """Start a quiet local instance (``address`` ``local``) or connect to ``address``; True where this
    call started Ray (and so must shut it down). An instance already running in this process is used as it is."""
    if ray.is_initialized():
        return False
    # Workers' output stays in Ray's log files (/tmp/ray/session_latest/logs); the driver logs errors only.
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "configure_logging": True}
    if address == "local":
        ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
        return True
    try:
        ray.init(address=address, **quiet)
    except ConnectionError as error:
        raise RayUnreachableError(f"ray_address {address}: no Ray cluster answers there ({error}); --ray-address local starts one here") from None
    return True


class RayUnreachableError(GenderLibError, ConnectionError):
    """``ray_address`` names a cluster that does not answer."""


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail in seconds, naming the address, where nothing listens at ``host:port``: ``ray.init``
    would wait for minutes, deaf to Ctrl-C. ``auto`` (this machine's running cluster) is left to Ray."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        if address != "auto":
            raise RayUnreachableError(f"ray_address {address}: expected local, auto, host:port or ray://host:port")
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        raise RayUnreachableError(
            f"ray_address {address}: cannot connect ({error.strerror or error}); is the cluster running? (--ray-address local starts one here)"
        ) from None


def _pool(ray: Any, actors: int | None) -> tuple[int, float, float]:
    """(actors, GPUs per actor, CPUs per actor): one GPU each where the cluster has GPUs (as many
    actors as GPUs by default), else one actor per node (its backbone uses the node's cores)."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return (actors or gpus), 1.0, 1.0
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return (actors or max(1, nodes)), 0.0, 1.0


def _blocks(n: int, batch_size: int) -> int:
    """About one batch per input block (decode tasks start and finish early), at most 20,000 blocks."""
    return max(1, min(math.ceil(n / batch_size), 20_000))


def extract_ray(
    paths: Sequence[str | os.PathLike[str]],
    keys: Sequence[str],
    backbone_description: dict[str, Any],
    cache: features.DescriptorCache,
    *,
    address: str = "local",
    batch_size: int = 32,
    num_cpus: int | None = None,
    actors: int | None = None,
    progress: bool = True,
    vggface_path: str | os.PathLike[str] | None = None,
    chunk_size: int = 256,
    flush_seconds: float | None = 30.0,
) -> features.ExtractReport:
    """Embed every image whose key is not cached yet, on Ray Data; store the descriptors in ``cache``.

    ``backbone_description``: the backbone's ``describe()``; each worker rebuilds it with
    :func:`gender_lib.backbones.from_description`, in this process's store (:func:`gender_lib.store.root`).
    ``address``: ``local`` starts a local instance with ``num_cpus`` CPUs (default all) and shuts
    it down at the end; otherwise a running cluster (``auto``, ``ray://host:10001``). ``vggface_path``:
    where the workers find a VGG-Face backbone's converted network (default ``checkpoints/vggface.onnx``). ``actors``: embedding actors (default one per GPU, or
    one per node without GPUs). A chunk is stored every ``chunk_size`` descriptors, or after
    ``flush_seconds``, as in :func:`gender_lib.features.extract`.

    Keys already cached, and repeated keys, are dropped before anything is scheduled: when
    nothing is left, Ray is not even started. Returns the same :class:`ExtractReport` as the
    single-machine extraction (decode failures with path, reason and detail).
    """
    if len(paths) != len(keys):
        raise ValueError(f"{len(paths)} paths but {len(keys)} keys")
    if batch_size < 1 or chunk_size < 1:
        raise ValueError("batch_size and chunk_size must be positive")
    backbone_id, dim = backbone_description.get("id"), int(backbone_description.get("dim", -1))
    if cache.backbone_id != backbone_id or cache.dim != dim:
        raise features.CacheMismatchError(f"cache {cache.dir} is for {cache.backbone_id} ({cache.dim}-d), not {backbone_id} ({dim}-d)")
    start = time.perf_counter()
    requested, work = features.todo(paths, keys, cache)
    todo = [(os.path.abspath(path), key, str(path)) for path, key in work]  # (for the workers, as the caller gave it)
    if not todo:
        log.info("%s: all %d images already cached; nothing scheduled", backbone_id, requested)
        return features.ExtractReport(backbone_id, requested, requested, 0, [], time.perf_counter() - start)
    ray = _import_ray()
    if address != "local" and not ray.is_initialized():
        _check_reachable(address)  # in seconds, before anything else is done

    root = str(store.root())
    if backbone_description.get("name") == "dlib":  # convert once here, not in every actor at once
        from gender_lib.converters import dlib_resnet

        try:
            dlib_resnet.ensure_converted(root)
        except OSError as error:
            if address == "local":
                raise
            log.warning("could not convert dlib's network in %s on the driver (%s); the actors will", root, error)
    started = _start_ray(ray, address, num_cpus)
    try:
        failures = _run(
            ray,
            todo,
            backbone_description,
            {"root": root, "vggface_path": str(vggface_path) if vggface_path else None},
            cache,
            batch_size=batch_size,
            actors=actors,
            progress=progress,
            chunk_size=chunk_size,
            flush_seconds=flush_seconds,
        )
    finally:
        if started:
            ray.shutdown()
    cache.refresh()
    failed = {f["key"] for f in failures}
    lost = [key for _, key, _ in todo if key not in cache and key not in failed]
    if lost:
        raise IncompleteExtractionError(
            f"{len(lost)} of {len(todo)} images came back from Ray with no descriptor (e.g. {lost[0][:12]}); run the extraction again to embed them"
        )
    for failure in failures:
        del failure["key"]
    return features.ExtractReport(backbone_id, requested, requested - len(todo), len(todo) - len(failures), failures, time.perf_counter() - start)


def _run(
    ray: Any,
    todo: list[tuple[str, str, str]],
    description: dict[str, Any],
    where: dict[str, Any],
    cache: features.DescriptorCache,
    *,
    batch_size: int,
    actors: int | None,
    progress: bool,
    chunk_size: int,
    flush_seconds: float | None,
) -> list[dict[str, str]]:
    """Run the pipeline over ``todo``; store descriptors as they come. Returns the decode failures (with their key)."""
    from ray.data import ActorPoolStrategy, DataContext
    from tqdm.auto import tqdm

    size, gpus, cpus = _pool(ray, actors)
    context = DataContext.get_current()
    saved = {name: getattr(context, name, None) for name in ("enable_progress_bars", "print_on_execution_start")}
    for name in saved:
        if hasattr(context, name):
            setattr(context, name, False)
    data_log = logging.getLogger("ray.data")
    level = data_log.level
    data_log.setLevel(logging.ERROR)  # its execution plans, per-run notices and progress-bar hints
    try:
        given = {key: path for _, key, path in todo}  # failures name the path as the caller gave it, as features.extract does
        ds = ray.data.from_items([{"path": p, "key": k} for p, k, _ in todo], override_num_blocks=_blocks(len(todo), batch_size))
        with warnings.catch_warnings():  # Ray >= 2.5x calls ray_remote_args deprecated, yet it is the only way to set these
            warnings.simplefilter("ignore")
            # One input block (about batch_size rows) per decode task. The different remote args keep Ray Data
            # from fusing decoding into the actors, where it would run one batch at a time, next to the model.
            ds = ds.map_batches(
                _prepare_batch, batch_size=None, batch_format="numpy", fn_kwargs={"description": description, **where}, num_cpus=1, max_retries=RETRIES
            )
            ds = ds.map_batches(
                _Embed,
                batch_size=batch_size,
                batch_format="numpy",
                compute=ActorPoolStrategy(size=size),
                fn_constructor_kwargs={"description": description, **where},
                num_cpus=cpus,
                num_gpus=gpus,
                max_restarts=RETRIES,
                max_task_retries=RETRIES,
            )
        failures: list[dict[str, str]] = []
        done: set[str] = set()
        writer = features.ChunkWriter(cache, chunk_size, flush_seconds)
        bar = tqdm(total=len(todo), desc=f"embed {description.get('name')} (ray)", unit="img", disable=not progress, mininterval=1.0)
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                fresh = [i for i, key in enumerate(batch["key"]) if key not in done]  # a retried batch is not stored twice
                done.update(batch["key"][i] for i in fresh)
                ok = [i for i in fresh if not batch["error"][i]]
                for i in fresh:
                    if batch["error"][i]:
                        key = str(batch["key"][i])
                        failures.append(
                            {
                                "path": given.get(key, str(batch["path"][i])),
                                "reason": "failed to decode at extraction",
                                "detail": str(batch["error"][i]),
                                "key": key,
                            }
                        )
                if ok:
                    writer.add([str(batch["key"][i]) for i in ok], batch["vector"][ok])
                bar.update(len(fresh))
            writer.flush()
        finally:
            bar.close()
        return failures
    finally:
        data_log.setLevel(level)
        for name, value in saved.items():
            if hasattr(context, name):
                setattr(context, name, value)


# --------------------------------------------------------------------------- prediction on Ray


class _Predict:
    """A prediction actor: a :class:`gender_lib.predict.Predictor` (detector, backbone and model
    loaded once, in the constructor) on ``device``, each network with ``threads`` intra-op threads;
    a batch of (path, key) rows -> each file's rows as JSON (they hold '' and numbers in one column)."""

    def __init__(
        self, make: Any, head_path: str, root: str, vggface_path: str | None, min_face: int, min_confidence: float, detect: bool, device: str, threads: int
    ):
        from gender_lib.converters import onnx_graph

        onnx_graph.use(device, threads)
        self.root, self.detect = root, detect
        with store.using(root):
            self.predictor = make(head_path, vggface_path, min_confidence=min_confidence, min_face=min_face, spin=False)
            self.predictor.backbone.load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import json

        with store.using(self.root):
            rows = [json.dumps(self.predictor.rows(str(path), self.detect)) for path in batch["path"]]
        return {"key": batch["key"], "rows": np.asarray(rows, dtype=object)}


def _predict_pool(ray: Any, actors: int | None, device: str) -> tuple[int, float]:
    """(actors, GPUs per actor): one GPU each where the cluster has GPUs (and ``device`` is not ``cpu``),
    else one actor per CPU (one thread each)."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if device != "cpu" else 0
    if gpus:
        return (actors or gpus), 1.0
    return (actors or max(1, int(resources.get("CPU", 1)))), 0.0


def predict_ray(
    items: Sequence[tuple[str | os.PathLike[str], str]],
    on_file: Any,
    make: Any,
    *,
    head_path: str | os.PathLike[str],
    vggface_path: str | os.PathLike[str] | None = None,
    min_face: int = 16,
    min_confidence: float = -1.0,
    detect: bool = True,
    device: str = "auto",
    address: str = "local",
    num_cpus: int | None = None,
    actors: int | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> int:
    """Predict the files of ``items`` ((path, content key), keys distinct) on Ray Data; call
    ``on_file(key, rows)`` on this process as each file's rows (:meth:`gender_lib.predict.Predictor.rows`,
    their ``path`` as the worker saw it: absolute) come back; ``make``: the
    :class:`~gender_lib.predict.Predictor` class (passed in, so this module does not import
    predict, which imports it). Returns how many files came back.

    The files stream through an actor pool (``actors``: default one per GPU, else one per CPU of the
    cluster, one ONNX Runtime thread each), each actor a :class:`~gender_lib.predict.Predictor`
    that reads, decodes, detects, chips, embeds and answers, so rows equal the local path's. Actors
    run on ``device`` (:func:`gender_lib.converters.onnx_graph.providers`: ``auto`` uses CUDA where
    onnxruntime-gpu is installed on the node; ``cpu`` leaves the cluster's GPUs alone). A killed actor is restarted and its batches retried
    (:data:`RETRIES`); a file answered twice is passed on once. ``address``: as :func:`extract_ray`.
    Raises :class:`RayNotInstalledError`, :class:`RayUnreachableError`, and
    :class:`IncompleteExtractionError` where files came back with no rows.
    """
    import json

    from gender_lib.converters import onnx_graph

    if not items:
        return 0
    if address == "local":
        onnx_graph.providers(device)  # "cuda" where this machine has none: the error here, in seconds (a cluster's actors say it there)
    ray = _import_ray()
    if address != "local" and not ray.is_initialized():
        _check_reachable(address)
    root = str(store.root())
    from gender_lib import modeling
    from gender_lib.converters import centerface, dlib_resnet

    networks = [centerface, dlib_resnet] if modeling.load(head_path).meta_["backbone"].get("name") == "dlib" else [centerface]
    for network in networks:  # converted once here, not by every actor at once
        try:
            network.ensure_converted(root)
        except OSError as error:
            log.warning("could not convert %s in %s on the driver (%s); the actors will", network.__name__, root, error)
    started = _start_ray(ray, address, num_cpus)
    try:
        from ray.data import ActorPoolStrategy, DataContext
        from tqdm.auto import tqdm

        size, gpus = _predict_pool(ray, actors, device)
        context = DataContext.get_current()
        saved = {name: getattr(context, name, None) for name in ("enable_progress_bars", "print_on_execution_start")}
        for name in saved:
            if hasattr(context, name):
                setattr(context, name, False)
        data_log = logging.getLogger("ray.data")
        level = data_log.level
        data_log.setLevel(logging.ERROR)
        try:
            # Blocks of up to 256 files (8 a actor at least): the driver keeps a little for every block, so not one a batch.
            blocks = max(1, min(math.ceil(len(items) / batch_size), max(8 * size, math.ceil(len(items) / 256))))
            ds = ray.data.from_items([{"path": os.path.abspath(p), "key": k} for p, k in items], override_num_blocks=blocks)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = ds.map_batches(
                    _Predict,
                    batch_size=batch_size,
                    batch_format="numpy",
                    compute=ActorPoolStrategy(size=size),
                    fn_constructor_kwargs={
                        "make": make,
                        "head_path": os.path.abspath(head_path),
                        "root": root,
                        "vggface_path": os.path.abspath(vggface_path) if vggface_path else None,
                        "min_face": int(min_face),
                        "min_confidence": float(min_confidence),
                        "detect": bool(detect),
                        "device": device,
                        "threads": 1,
                    },
                    num_cpus=1,
                    num_gpus=gpus,
                    max_restarts=RETRIES,
                    max_task_retries=RETRIES,
                )
            done: set[str] = set()
            with tqdm(total=len(items), desc="predict (ray)", unit="file", disable=not progress, mininterval=1.0) as bar:
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    for key, rows in zip(batch["key"], batch["rows"]):
                        if key not in done:  # a retried batch is passed on once
                            done.add(key)
                            on_file(str(key), json.loads(rows))
                            bar.update(1)
        finally:
            data_log.setLevel(level)
            for name, value in saved.items():
                if hasattr(context, name):
                    setattr(context, name, value)
    finally:
        if started:
            ray.shutdown()
    lost = len({k for _, k in items} - done)
    if lost:
        raise IncompleteExtractionError(f"{lost} of {len(items)} files came back from Ray with no rows; run the prediction again to resume")
    return len(done)
