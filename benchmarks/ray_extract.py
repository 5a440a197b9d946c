"""Descriptor extraction on a local Ray instance (gender_lib.distributed.extract_ray) vs the
single-machine extraction (gender_lib.features.extract), on the same real faces, on this machine.

The faces: ``--images`` (default 1000) spread evenly over the sorted shared ``combined/aligned``
folder; where it is absent, the 300 faces of data/sample (noted in the results). The backbone:
``DlibBackbone(align="chip")`` (dlib's network on ONNX Runtime; converted once into the default store).

Each measurement runs in a fresh Python process with an empty descriptor cache (a new temp
folder), so each pays what a real run pays: the network's load (in the process, or in Ray's
actor), and for Ray its import and start-up. Three ways, interleaved
(single, ray, ray-running, single, ...) for ``--repeats`` rounds; medians reported:

* ``single``: ``features.extract`` (decode in a prefetch thread, embed in batches of 32);
* ``ray``: ``extract_ray`` starting its own local Ray (``num_cpus`` = all cores) and shutting
  it down: end to end, as ``gender-lib extract --ray-address local``;
* ``ray_running``: ``extract_ray`` joining a Ray instance already running (as on a cluster,
  where Ray is up before a job), timed from the call; Ray's import + ``ray.init`` are timed
  separately as the start-up cost.

Overhead = Ray's seconds / single's seconds - 1 (target <= 20%). Per-worker rates (what sizes a
cluster): decode + 5-point chip per CPU core, and embedding per actor (ONNX Runtime on this
machine's cores), each measured alone in one process. Writes ``benchmarks/results/ray_extract.json``.

    .venv/bin/python benchmarks/ray_extract.py [--images 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ray_extract.json"
WAYS = ("single", "ray", "ray_running")


def choose_faces(n: int) -> tuple[list[Path], str]:
    from gender_lib import config

    shared = config.paths().datasets / "combined" / "aligned"
    files = sorted(shared.glob("*/*.jpg")) if shared.is_dir() else []
    if len(files) >= n:
        return [files[int(i)] for i in np.linspace(0, len(files) - 1, n).round()], f"{shared} ({n} of {len(files)}, evenly spaced)"
    sample = sorted(config.paths().sample.glob("*/*.jpg"))
    note = f"shared data absent ({shared}): the {len(sample)} faces of data/sample, fewer than the {n} asked for"
    print(f"NOTE: {note}", file=sys.stderr)
    return sample, note


# --------------------------------------------------------------------------- one measurement, in its own process


def _one(way: str, listing: str) -> dict:
    from gender_lib import backbones, features

    rows = json.loads(Path(listing).read_text())
    paths, keys = [r["path"] for r in rows], [r["key"] for r in rows]
    backbone = backbones.DlibBackbone(align="chip")
    out: dict = {"way": way}
    stamps: list[tuple[float, int]] = []  # (time, descriptors stored so far) at each chunk

    class TimedCache(features.DescriptorCache):
        def add(self, keys_, vectors):
            written = super().add(keys_, vectors)
            stamps.append((time.perf_counter(), (stamps[-1][1] if stamps else 0) + len(keys_)))
            return written

    with tempfile.TemporaryDirectory(prefix="ray_extract-") as root:
        cache = TimedCache(root, backbone.id, backbone.dim, backbone.describe())
        if way == "ray_running":  # Ray up before the job, as on a cluster: its start-up timed on its own
            import logging

            begin = time.perf_counter()
            import ray
            import ray.data  # noqa: F401

            imported = time.perf_counter()
            ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
            out["ray_import_s"], out["ray_init_s"] = imported - begin, time.perf_counter() - imported
        start = time.perf_counter()
        if way == "single":
            report = features.extract(paths, keys, backbone, cache, progress=False)
        else:
            from gender_lib import distributed

            report = distributed.extract_ray(paths, keys, backbone.describe(), cache, progress=False)
        seconds = time.perf_counter() - start
        if way == "ray_running":
            stop = time.perf_counter()
            ray.shutdown()
            out["ray_shutdown_s"] = time.perf_counter() - stop
        check = cache.get([k for k in keys if k in cache])
        if len(stamps) >= 2:  # after the first chunk: the pipeline's steady rate, start-up excluded
            out["first_chunk_s"] = stamps[0][0] - start
            out["steady_images_per_s"] = (stamps[-1][1] - stamps[0][1]) / (stamps[-1][0] - stamps[0][0])
        out.update(
            seconds=seconds,
            embedded=report.embedded,
            failures=len(report.failures),
            images_per_s=report.embedded / seconds,
            checksum=float(np.abs(check).sum()),
            stored=len(check),
        )
    return out


def _rates(listing: str, n: int = 96) -> dict:
    """Decode + chip per core, and embedding per actor (this machine's cores), each alone."""
    from gender_lib import backbones
    from gender_lib.images import load_rgb

    rows = json.loads(Path(listing).read_text())[:n]
    backbone = backbones.DlibBackbone(align="chip").load()
    start = time.perf_counter()
    faces = np.stack([backbone.prepare_face(load_rgb(r["path"])) for r in rows])
    prepare = len(rows) / (time.perf_counter() - start)
    backbone.embed(faces[:32])  # traced
    start = time.perf_counter()
    for i in range(0, len(faces), 32):
        backbone.embed(faces[i : i + 32])
    embed = len(faces) / (time.perf_counter() - start)
    return {"decode_chip_per_core_images_per_s": prepare, "embed_per_actor_images_per_s": embed, "images": len(rows)}


def _spawn(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", choices=[*WAYS, "rates"], help=argparse.SUPPRESS)  # one measurement (the child processes)
    parser.add_argument("--listing", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_rates(args.listing) if args.one == "rates" else _one(args.one, args.listing)))
        return

    from gender_lib.converters import dlib_resnet
    from gender_lib.fileio import write_json

    paths, source = choose_faces(args.images)
    start = time.perf_counter()
    dlib_resnet.ensure_converted()  # the one-off conversion is no part of either way's time
    print(f"{len(paths)} faces from {source}; converted model ready ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump([{"path": str(p), "key": hashlib.sha256(p.read_bytes()).hexdigest()} for p in paths], handle)
        listing = handle.name
    try:
        runs: dict[str, list[dict]] = {way: [] for way in WAYS}
        for repeat in range(args.repeats):
            for way in WAYS:
                result = _spawn(["--one", way, "--listing", listing])
                runs[way].append(result)
                steady = result.get("steady_images_per_s", float("nan"))
                print(
                    f"repeat {repeat + 1}/{args.repeats} {way:12s} {result['seconds']:6.1f} s  {result['images_per_s']:5.1f} img/s "
                    f"(first chunk {result.get('first_chunk_s', float('nan')):5.1f} s, then {steady:5.1f} img/s)",
                    file=sys.stderr,
                )
        rates = _spawn(["--one", "rates", "--listing", listing])
    finally:
        os.unlink(listing)

    checksums = [r["checksum"] for rs in runs.values() for r in rs]
    median = {way: statistics.median(r["seconds"] for r in rs) for way, rs in runs.items()}
    embedded = runs["single"][0]["embedded"]
    startup = {k: statistics.median(r[k] for r in runs["ray_running"]) for k in ("ray_import_s", "ray_init_s", "ray_shutdown_s")}
    results = {
        "benchmark": "benchmarks/ray_extract.py",
        "images": len(paths),
        "source": source,
        "backbone": "DlibBackbone(align='chip'), ONNX Runtime",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "repeats": args.repeats,
        "seconds_median": median,
        "images_per_s_median": {way: embedded / s for way, s in median.items()},
        "overhead_vs_single": {way: median[way] / median["single"] - 1 for way in ("ray", "ray_running")},
        "overhead_target": 0.20,
        "ray_startup_s_median": startup,
        # start-up (process, TensorFlow, model, Ray's workers and actors) until the first 256 descriptors are stored,
        # then the rate from there to the last chunk: what a long run converges to
        "first_chunk_s_median": {way: statistics.median(r.get("first_chunk_s", float("nan")) for r in rs) for way, rs in runs.items()},
        "steady_images_per_s_median": {way: statistics.median(r.get("steady_images_per_s", float("nan")) for r in rs) for way, rs in runs.items()},
        "per_worker": rates,
        # sum of |descriptor| over every image, equal across runs and engines up to float rounding
        "same_descriptors_every_run": max(checksums) - min(checksums) < 1e-2 and len({r["stored"] for rs in runs.values() for r in rs}) == 1,
        "runs": runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS, results)
    shown = ("images_per_s_median", "overhead_vs_single", "ray_startup_s_median", "first_chunk_s_median", "steady_images_per_s_median", "per_worker")
    print(json.dumps({k: results[k] for k in shown}, indent=2))
    print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
