"""Benchmark: VGG-Face descriptor extraction on this machine (a benchmark, not a test).

On the same N real JPEG faces, in one run, for the full-size VGG-Face architecture with random
weights (the real weights are not on this machine), written as the ONNX graph inference runs:

1. the machine's float32 matmul roof (GFLOP/s, NumPy);
2. the network's pure in-memory throughput at batch sizes 8/16/32 (best one kept);
3. ours: gender_lib.features.extract from files (decode+resize overlap the model);
4. the naive way: each file decoded, resized and embedded in turn, one image per pass, no cache;
5. ours again over the same files (cached rerun);
6. peak memory (RSS) extracting N/4 and N images (flat means streaming).

Prints a table and writes JSON.  ``.venv/bin/python benchmarks/extract.py [--n 96] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from gender_lib import config
from gender_lib.fileio import sha256_file, write_json

GFLOP_PER_IMAGE = 30.95


def matmul_roof(size: int = 2048, repeats: int = 10) -> float:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((size, size), np.float32), rng.standard_normal((size, size), np.float32)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9


class RssSampler:
    """Peak RSS, sampled every 50 ms, readable at any moment."""

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=96, help="number of real face images")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of ours vs naive (medians reported)")
    parser.add_argument("--root", default=str(config.paths().datasets / "combined" / "aligned"))
    parser.add_argument("--out", default=str(config.paths().root / "benchmarks" / "results" / "extract.json"))
    args = parser.parse_args()

    from gender_lib import features as ft
    from gender_lib.backbones import VGGFaceBackbone
    from gender_lib.converters import matconvnet as mc
    from gender_lib.converters import vggface as vf
    from gender_lib.images import load_rgb

    paths = sorted(Path(args.root).glob("*/*.jpg"))[:: max(1, 29000 // args.n)][: args.n]
    keys = [sha256_file(p) for p in paths]
    print(f"{len(paths)} images from {args.root}; building full-size VGG-Face with random weights ...")
    scratch_model = tempfile.TemporaryDirectory()
    network = mc.synthetic_network(mc.VGG_FACE_CONV_WIDTHS, mc.VGG_FACE_FC_WIDTHS, seed=0)
    vf.convert(network, Path(scratch_model.name) / "vggface.onnx", check_images=0)  # a 580 MB graph; checked against the reference in the tests
    fp32 = VGGFaceBackbone.from_checkpoint(Path(scratch_model.name) / "vggface.onnx")
    roof = matmul_roof()
    print(f"float32 matmul roof: {roof:.0f} GFLOP/s")

    prepared = np.stack([fp32.prepare(load_rgb(p)) for p in paths])
    memory: dict[int, float] = {}
    for batch_size in (8, 16, 32):
        fp32.embed(prepared[:batch_size])  # warm up this shape
        start = time.perf_counter()
        for i in range(0, len(prepared), batch_size):
            fp32.embed(prepared[i : i + batch_size])
        memory[batch_size] = len(prepared) / (time.perf_counter() - start)
        print(f"in-memory fp32 batch {batch_size}: {memory[batch_size]:.2f} img/s")
    best = max(memory, key=memory.get)

    def naive() -> float:
        start = time.perf_counter()
        for path in paths:
            fp32.embed(fp32.prepare(load_rgb(path))[None])
        return len(paths) / (time.perf_counter() - start)

    def ours(backbone: VGGFaceBackbone, cache_root: Path) -> tuple[float, ft.ExtractReport]:
        start = time.perf_counter()
        report = ft.extract(paths, keys, backbone, ft.cache_for(backbone, cache_root), batch_size=best, chunk_size=best * 2, progress=False)
        return len(paths) / (time.perf_counter() - start), report

    def in_memory() -> float:
        start = time.perf_counter()
        for i in range(0, len(prepared), best):
            fp32.embed(prepared[i : i + best])
        return len(prepared) / (time.perf_counter() - start)

    ours_rates, naive_rates, memory_rates, cached_times = [], [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):  # interleaved, so machine noise hits every path alike
            root = Path(scratch) / f"cache{repeat}"
            memory_rates.append(in_memory())
            rate, report = ours(fp32, root)
            ours_rates.append(rate)
            naive_rates.append(naive())
            start = time.perf_counter()
            again = ft.extract(paths, keys, fp32, ft.cache_for(fp32, root), batch_size=best, progress=False)
            cached_times.append(time.perf_counter() - start)
            assert again.embedded == 0
        # Streaming: peak memory for a quarter of the images vs all of them (fresh caches).
        peaks = {}
        for count in (len(paths) // 4, len(paths)):
            with RssSampler() as rss:
                ft.extract(paths[:count], keys[:count], fp32, ft.cache_for(fp32, Path(scratch) / f"rss{count}"), batch_size=best, progress=False)
            peaks[count] = rss.peak / 2**20
    memory[best] = statistics.median(memory_rates)

    ours_rate, naive_rate = statistics.median(ours_rates), statistics.median(naive_rates)
    first_run_s = len(paths) / ours_rate
    result = {
        "images": len(paths),
        "repeats": args.repeats,
        "best_batch": best,
        "matmul_roof_gflops": roof,
        "in_memory_img_s": {"by_batch_first_pass": memory, "best_batch_median": statistics.median(memory_rates), "all": memory_rates},
        "ours_fp32_img_s": {"median": ours_rate, "all": ours_rates},
        "naive_predict_img_s": {"median": naive_rate, "all": naive_rates},
        "ours_vs_in_memory": ours_rate / memory[best],
        "ours_vs_naive": ours_rate / naive_rate,
        "cached_rerun_s": {"median": statistics.median(cached_times), "all": cached_times},
        "cached_speedup": first_run_s / statistics.median(cached_times),
        "fraction_of_roof": ours_rate * GFLOP_PER_IMAGE / roof,
        "peak_rss_mb": {str(k): v for k, v in peaks.items()},
        "weights": "random (VGG-Face architecture, 145,002,878 parameters)",
    }
    rows = [
        ("in-memory fp32, best batch", memory[best], ""),
        ("ours fp32 from JPEG files", ours_rate, f"{result['ours_vs_in_memory']:.1%} of in-memory (target >= 95%)"),
        ("naive: one file at a time", naive_rate, f"ours is {result['ours_vs_naive']:.2f}x"),
    ]
    print(f"\n{'path':<32}{'img/s':>8}  note")
    for name, rate, note in rows:
        print(f"{name:<32}{rate:>8.2f}  {note}")
    print(
        f"cached rerun: {statistics.median(cached_times):.3f} s for {len(paths)} images "
        f"({result['cached_speedup']:.0f}x faster than the first run; target >= 50x)"
    )
    print(f"fp32 achieves {ours_rate * GFLOP_PER_IMAGE:.0f} GFLOP/s = {result['fraction_of_roof']:.0%} of the {roof:.0f} GFLOP/s matmul roof")
    (few, few_mb), (many, many_mb) = peaks.items()
    print(f"peak RSS while extracting {few} images: {few_mb:.0f} MB; {many} images: {many_mb:.0f} MB (flat = streaming)")
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
