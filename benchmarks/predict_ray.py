"""``gender-lib predict --output`` on a folder: here (one process) vs on a local Ray instance, on the
same photos in one run; start-up apart from the steady rate; the driver's memory at two folder sizes.

The photos: ``--images`` (default 1000) made in a temp folder from the 300 faces of data/sample, the
i-th a copy of face ``i % 300`` with ``i // 300`` zero bytes after its end-of-image marker (decoders
ignore them; every file hashes differently, so none is skipped by content, and the pixels, faces and
answers are the sample's). The model: the shipped ``checkpoints/dlib_gender_model.npz``.

Each measurement runs in a fresh Python process writing a new Parquet folder, so each pays what a
real run pays. Ways, interleaved (local, ray, ray_running, local, ...) for ``--repeats`` rounds,
medians reported:

* ``local``: ``stages.predict(..., output=)`` in this process (one Predictor, ONNX Runtime on all cores);
* ``ray``: the same with ``ray_address local``: Ray started by the run (all cores) and shut down,
  end to end, as ``gender-lib predict FOLDER --output X --ray-address local``;
* ``ray_running``: joining a Ray instance already up (as on a cluster), timed from the call; Ray's
  import and ``ray.init`` timed apart as the start-up cost.

Per run: seconds end to end; ``first_file_s`` (from the call until the first file's rows: the
models' load, and Ray's start and actors); the steady rate, files per second from the 10th
percentile file to the last (start-up excluded; on Ray, rows come back a block at a time, which
flatters this figure); the driver's peak RSS (``ru_maxrss``) and, on Ray, the largest
RSS of a prediction actor (sampled from /proc every 0.5 s). With ``--memory N`` (default 10000;
0 skips), each way runs once more on the photos and then on a folder of N photos: the driver's peak
RSS (measured before the benchmark's own checks read the rows back) is compared (target: within
+10%), and the steady rate is taken as the extra files over the extra seconds (start-up and Ray's
block bursts cancel out; the figure the Ray/local target is judged on).
Also: the Parquet folder's bytes per row, and whether every run wrote the same rows. Writes
``benchmarks/results/predict_ray.json``.

    .venv/bin/python benchmarks/predict_ray.py [--images 1000] [--repeats 3] [--memory 10000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "predict_ray.json"
WAYS = ("local", "ray", "ray_running")


def make_folder(folder: Path, n: int) -> None:
    """``n`` photos from data/sample, each with distinct bytes (a trailer after the JPEG's end) and the sample's pixels."""
    from gender_lib import config

    sample = sorted(config.paths().sample.glob("*/*.jpg"))
    folder.mkdir(parents=True)
    data = [p.read_bytes() for p in sample]
    for i in range(n):
        (folder / f"{i:06d}.jpg").write_bytes(data[i % len(data)] + b"\0" * (i // len(data)))


# --------------------------------------------------------------------------- one measurement, in its own process


def _one(way: str, folder: str, output: str) -> dict:
    import resource

    out: dict = {"way": way}
    if way == "ray_running":
        import logging

        begin = time.perf_counter()
        import ray
        import ray.data  # noqa: F401

        imported = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        out["ray_import_s"], out["ray_init_s"] = imported - begin, time.perf_counter() - imported
    from gender_lib import config, stages

    actors_kb = [0]
    sampling = threading.Event()

    def sample_actors() -> None:  # the largest RSS of a prediction actor process (this machine's /proc), every 0.5 s
        while not sampling.wait(0.5):
            for proc in Path("/proc").iterdir():
                try:
                    if proc.name.isdigit() and b"MapBatches(_Predict)" in (proc / "cmdline").read_bytes():
                        rss = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("VmRSS"))
                        actors_kb[0] = max(actors_kb[0], int(rss.split()[1]))
                except (OSError, StopIteration, ValueError):
                    continue

    threading.Thread(target=sample_actors, daemon=True).start()
    stamps: list[float] = []
    cfg = config.DEFAULT.replace({"ray_address": "local"}) if way != "local" else config.DEFAULT
    start = time.perf_counter()
    result = stages.predict(cfg, [folder], output=output, on_rows=lambda rows: stamps.append(time.perf_counter()))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the checks below read the rows
    sampling.set()
    if way == "ray_running":
        ray.shutdown()
    import pyarrow.parquet as pq

    table = pq.read_table(output).sort_by([("path", "ascending"), ("face", "ascending")])
    k = len(stamps) // 10
    out.update(
        seconds=seconds,
        files=len(stamps),
        faces=result.tally.faces,
        files_per_s=len(stamps) / seconds,
        first_file_s=stamps[0] - start,
        steady_files_per_s=(len(stamps) - 1 - k) / (stamps[-1] - stamps[k]),
        driver_peak_rss_mb=peak,
        actor_peak_rss_mb=actors_kb[0] / 1024 if way != "local" else None,
        rows=table.num_rows,
        parquet_bytes=sum(p.stat().st_size for p in Path(output).glob("part-*.parquet")),
        p_female_sum=float(sum(v for v in table.column("p_female").to_pylist() if v is not None)),
        boxes=hashlib.sha256("\n".join(f"{p} {b}" for p, b in zip(table.column("path").to_pylist(), table.column("box").to_pylist())).encode()).hexdigest(),
    )
    return out


def _spawn(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run(way: str, folder: Path, scratch: Path) -> dict:
    output = scratch / f"out-{way}-{time.time_ns()}.parquet"
    try:
        return _spawn(["--one", way, "--folder", str(folder), "--output", str(output)])
    finally:
        shutil.rmtree(output, ignore_errors=True)


# --------------------------------------------------------------------------- the comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", type=int, default=10000, help="also measure the driver's memory on this many photos (0: skip)")
    parser.add_argument("--one", choices=WAYS, help=argparse.SUPPRESS)  # one measurement (the child processes)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(args.one, args.folder, args.output)))
        return

    from gender_lib import predict
    from gender_lib.converters import centerface, dlib_resnet
    from gender_lib.fileio import write_json

    dlib_resnet.ensure_converted()  # the one-off conversions are no part of either way's time
    centerface.ensure_converted()
    with tempfile.TemporaryDirectory(prefix="predict_ray-") as scratch_name:
        scratch = Path(scratch_name)
        make_folder(scratch / "photos", args.images)
        print(f"{args.images} photos made from data/sample in {scratch / 'photos'}", file=sys.stderr)
        runs: dict[str, list[dict]] = {way: [] for way in WAYS}
        for repeat in range(args.repeats):
            for way in WAYS:
                result = _run(way, scratch / "photos", scratch)
                runs[way].append(result)
                print(
                    f"repeat {repeat + 1}/{args.repeats} {way:12s} {result['seconds']:6.1f} s  {result['files_per_s']:5.1f} files/s "
                    f"(first file {result['first_file_s']:5.1f} s, then {result['steady_files_per_s']:5.1f} files/s; "
                    f"driver {result['driver_peak_rss_mb']:.0f} MB)",
                    file=sys.stderr,
                )
        memory: dict = {}
        hashing: dict = {}
        if args.memory:
            make_folder(scratch / "many", args.memory)
            listed, _ = predict.expand_inputs([scratch / "many"])
            begin = time.perf_counter()
            predict.plan(listed, [], set())  # what the driver does before any prediction: read and hash every file
            hashing = {"files": len(listed), "mb": sum(p.stat().st_size for p in listed) / 1e6, "seconds": time.perf_counter() - begin}
            for way in WAYS:
                small, big = _run(way, scratch / "photos", scratch), _run(way, scratch / "many", scratch)  # one after the other
                memory[way] = {
                    f"{args.images}_files_mb": small["driver_peak_rss_mb"],
                    f"{args.memory}_files_mb": big["driver_peak_rss_mb"],
                    "growth": big["driver_peak_rss_mb"] / small["driver_peak_rss_mb"] - 1,
                    "growth_target": 0.10,
                    # the extra files over the extra seconds: the steady rate, start-up and the bursts of Ray's blocks cancelled out
                    "steady_files_per_s_from_sizes": (args.memory - args.images) / (big["seconds"] - small["seconds"]),
                    "runs": [small, big],
                }
                print(
                    f"memory {way}: driver {small['driver_peak_rss_mb']:.0f} MB at {args.images} files ({small['seconds']:.1f} s), "
                    f"{big['driver_peak_rss_mb']:.0f} MB at {args.memory} ({big['seconds']:.1f} s)",
                    file=sys.stderr,
                )

    every = [r for rs in runs.values() for r in rs]
    timed = ("seconds", "files_per_s", "first_file_s", "steady_files_per_s")
    median = {way: {k: statistics.median(r[k] for r in rs) for k in timed} for way, rs in runs.items()}
    local = runs["local"][0]
    results = {
        "benchmark": "benchmarks/predict_ray.py",
        "images": args.images,
        "source": "data/sample's 300 faces, each file made distinct by trailing bytes after the JPEG end (same pixels)",
        "model": "checkpoints/dlib_gender_model.npz (dlib backbone, ONNX Runtime; CenterFace detection)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "repeats": args.repeats,
        "median": median,
        "steady_ratio_vs_local": {way: median[way]["steady_files_per_s"] / median["local"]["steady_files_per_s"] for way in ("ray", "ray_running")},
        "end_to_end_ratio_vs_local": {way: median["local"]["seconds"] / median[way]["seconds"] for way in ("ray", "ray_running")},
        "steady_target": 0.9,
        "steady_from_sizes_ratio_vs_local": {
            way: memory[way]["steady_files_per_s_from_sizes"] / memory["local"]["steady_files_per_s_from_sizes"] for way in ("ray", "ray_running")
        }
        if memory
        else {},
        "ray_startup_s_median": {k: statistics.median(r[k] for r in runs["ray_running"]) for k in ("ray_import_s", "ray_init_s")},
        "parquet_bytes_per_row": local["parquet_bytes"] / local["rows"],
        "faces_per_file": local["faces"] / local["files"],
        "core_seconds_per_file_local": (os.cpu_count() or 1) / median["local"]["steady_files_per_s"],
        # the same rows (count, boxes, and the sum of P(female) to 1e-6 a row) in every run, local and Ray
        "same_rows_every_run": len({(r["rows"], r["boxes"]) for r in every}) == 1
        and max(r["p_female_sum"] for r in every) - min(r["p_female_sum"] for r in every) <= 1e-6 * local["rows"],
        "driver_memory": memory,
        "driver_hashing": hashing,
        "actor_peak_rss_mb_median": statistics.median(r["actor_peak_rss_mb"] for r in runs["ray"] + runs["ray_running"]),
        "columns": predict.PARQUET_COLUMNS,
        "runs": runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS, results)
    shown = (
        "median",
        "steady_ratio_vs_local",
        "steady_from_sizes_ratio_vs_local",
        "end_to_end_ratio_vs_local",
        "ray_startup_s_median",
        "parquet_bytes_per_row",
        "same_rows_every_run",
    )
    print(json.dumps({k: results[k] for k in shown} | {"driver_memory": {w: {k: v for k, v in m.items() if k != "runs"} for w, m in memory.items()}}, indent=2))
    print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
