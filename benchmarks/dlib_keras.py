"""dlib's face descriptor: the converted Keras model vs dlib itself, end to end from JPEG files.

On the same real faces (shared combined/aligned, else data/sample; a deterministic spread-out
selection), with nothing cached (every repeat decodes, aligns and embeds every file):

* ``keras``: decode + 5-point chip in a producer thread, Keras embedding in batches of 32
  (the two overlap: TensorFlow releases the GIL while it computes);
* ``dlib_1proc``: decode + chip + ``compute_face_descriptor`` (batches of 32) in this process;
* ``dlib_2proc``: the same split over 2 worker processes (started before timing).

Three repeats, interleaved (keras, dlib 1, dlib 2, keras, ...); medians reported. Also the
embedding step alone on ready chips for both, a 2048 x 2048 float32 matmul probe (GFLOP/s the
CPU reaches in NumPy), the network's FLOPs per chip and the GFLOP/s each embedding achieves,
and the one-off cold conversion time. Writes ``benchmarks/results/dlib_keras.json``.

    .venv/bin/python benchmarks/dlib_keras.py [--images 500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import queue
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from gender_lib import config, dlib_dnn, dlib_keras
from gender_lib.fileio import write_json

BATCH = 32

# --------------------------------------------------------------------------- dlib workers

_worker: dict = {}


def _dlib_init() -> None:
    import dlib

    _worker["chip"] = dlib_keras.ChipMaker()
    _worker["net"] = dlib.face_recognition_model_v1(str(dlib_dnn.default_source()))


def _dlib_run(paths: list[str]) -> np.ndarray:
    if not _worker:
        _dlib_init()
    out = []
    for start in range(0, len(paths), BATCH):
        chips = [_worker["chip"](dlib_keras.load_rgb(p)) for p in paths[start : start + BATCH]]
        out += [np.asarray(v, np.float32) for v in _worker["net"].compute_face_descriptor(chips)]
    return np.stack(out)


def _ready(_: int = 0) -> int:
    time.sleep(1.0)  # keeps each worker busy so the two tasks start two processes
    return os.getpid() if _worker else 0


# --------------------------------------------------------------------------- Keras


def keras_forward(model):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, 150, 150, 3), tf.float32)])
    def forward(x):
        return model(x, training=False)

    return lambda chips: forward(np.asarray(chips, np.float32)).numpy()


def keras_run(paths: list[str], forward, maker) -> np.ndarray:
    """Decode + chip in a thread, embed batches of 32 here as they arrive."""
    batches: queue.Queue = queue.Queue(maxsize=3)

    def produce() -> None:
        try:
            for start in range(0, len(paths), BATCH):
                batches.put(np.stack([maker(dlib_keras.load_rgb(p)) for p in paths[start : start + BATCH]]))
        finally:
            batches.put(None)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    out = []
    while (batch := batches.get()) is not None:
        out.append(forward(batch))
    thread.join()
    return np.concatenate(out)


# --------------------------------------------------------------------------- FLOPs


def network_flops(network: dlib_dnn.Network) -> int:
    """Multiply-adds x 2 of the convolutions and the fc layer for one 150 x 150 chip."""
    shapes = dlib_dnn.output_shapes(network.layers)
    flops = 0
    for layer, shape in zip(network.layers, shapes):
        if layer.kind == "con":
            k, nr, nc = layer.filters.shape[1:]
            flops += 2 * shape[0] * shape[1] * shape[2] * k * nr * nc
        elif layer.kind == "fc":
            flops += 2 * layer.num_inputs * layer.num_outputs
    return flops


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(config.paths().root / "benchmarks" / "results" / "dlib_keras.json"))
    args = parser.parse_args()

    p = config.paths()
    paths = [str(f) for f in dlib_keras.real_face_paths(args.images, roots=[p.datasets / "combined" / "aligned", p.sample])]
    print(f"{len(paths)} real faces from {Path(paths[0]).parent.parent}; {os.cpu_count()} CPUs")

    network = dlib_dnn.read_network()
    flops = network_flops(network)
    probe = matmul_gflops()
    print(f"network: {flops / 1e9:.3f} GFLOP per chip; 2048^2 float32 matmul probe: {probe:.1f} GFLOP/s")

    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        path = dlib_keras.ensure_converted(cache)
        convert_s = time.perf_counter() - start
        model, meta = dlib_keras.load(path)
    print(f"cold conversion (read, build, verify on {meta['verification']['n_chips']} chips, save): {convert_s:.1f} s")

    forward = keras_forward(model)
    maker = dlib_keras.ChipMaker()
    _dlib_init()
    forward(np.zeros((BATCH, 150, 150, 3), np.float32))  # trace outside the timing
    pool = concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=_dlib_init)
    if len(set(pool.map(_ready, range(2)))) != 2:
        raise RuntimeError("the two dlib worker processes did not start")

    def dlib_2proc() -> np.ndarray:
        halves = [paths[: len(paths) // 2], paths[len(paths) // 2 :]]
        return np.concatenate(list(pool.map(_dlib_run, halves)))

    runs = {"keras": lambda: keras_run(paths, forward, maker), "dlib_1proc": lambda: _dlib_run(paths), "dlib_2proc": dlib_2proc}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    outputs = {}
    for repeat in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            outputs[name] = run()
            seconds[name].append(time.perf_counter() - start)
            print(f"  repeat {repeat + 1} {name:<10} {len(paths) / seconds[name][-1]:6.2f} images/s")
    pool.shutdown()
    agreement = dlib_keras.compare(outputs["keras"], outputs["dlib_1proc"])

    # The embedding step alone, on ready chips.
    chips = np.stack([maker(dlib_keras.load_rgb(p)) for p in paths])
    embed_s: dict[str, list[float]] = {"keras": [], "dlib_1proc": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        for i in range(0, len(chips), BATCH):
            forward(chips[i : i + BATCH])
        embed_s["keras"].append(time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(0, len(chips), BATCH):
            _worker["net"].compute_face_descriptor(list(chips[i : i + BATCH]))
        embed_s["dlib_1proc"].append(time.perf_counter() - start)

    n = len(paths)
    e2e = {name: n / statistics.median(s) for name, s in seconds.items()}
    emb = {name: n / statistics.median(s) for name, s in embed_s.items()}
    result = {
        "images": n,
        "source": str(Path(paths[0]).parent.parent),
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "batch": BATCH,
        "end_to_end_images_per_s": e2e,
        "end_to_end_seconds": seconds,
        "ratio_keras_vs_dlib_1proc": e2e["keras"] / e2e["dlib_1proc"],
        "ratio_keras_vs_dlib_2proc": e2e["keras"] / e2e["dlib_2proc"],
        "embed_only_images_per_s": emb,
        "embed_only_seconds": embed_s,
        "ratio_embed_keras_vs_dlib": emb["keras"] / emb["dlib_1proc"],
        "network_gflop_per_chip": flops / 1e9,
        "achieved_gflops_embed": {name: rate * flops / 1e9 for name, rate in emb.items()},
        "matmul_2048_gflops": probe,
        "cold_conversion_s": convert_s,
        "verification": meta["verification"],
        "keras_vs_dlib_on_these_faces": {k: v for k, v in agreement.items() if not k.startswith("per_chip")},
        "note": "2 shared cores: other processes ran at the same time; rates are medians of interleaved repeats",
    }
    print(f"end to end (median of {args.repeats}): " + ", ".join(f"{k} {v:.2f}/s" for k, v in e2e.items()))
    print(f"  keras / dlib 1 process = {result['ratio_keras_vs_dlib_1proc']:.2f}, keras / dlib 2 processes = {result['ratio_keras_vs_dlib_2proc']:.2f}")
    print("embedding alone: " + ", ".join(f"{k} {v:.2f}/s ({v * flops / 1e9:.1f} GFLOP/s)" for k, v in emb.items())
          + f"; matmul probe {probe:.1f} GFLOP/s")
    print(f"keras vs dlib on these {n} faces: max |diff| {agreement['max_abs_diff']:.2g}, min cosine {agreement['min_cosine']:.9f}")
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
