"""Inference speed of the two committed models, from aligned 150x150 chips to P(female).

* frozen: ``checkpoints/dlib_gender_head.npz`` -- dlib's network (its ONNX graph) to the 128-d
  descriptor of each chip, then the MLP's NumPy forward pass;
* shipped (the default, flip-averaged): ``checkpoints/dlib_gender_model.npz`` -- the descriptors of
  each chip and of its mirror image (the ``descriptor+mirror`` output), the MLP on both, averaged.

Both load through :func:`gender_lib.modeling.load` and get their backbone from their record, as the
Predictor does. Chips are made once from data/sample (the decode, detection and 5-point alignment
before them cost the same for both). Repeats are interleaved, medians reported, with the ratio in
the same run. Writes ``benchmarks/results/head_modes.json``.

    .venv/bin/python benchmarks/head_modes.py [--n 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from gender_lib import backbones, config, modeling
from gender_lib.fileio import write_json
from gender_lib.images import load_rgb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(config.paths().root / "benchmarks" / "results" / "head_modes.json"))
    args = parser.parse_args()
    p = config.paths()
    models = {"frozen": modeling.load(p.checkpoints / "dlib_gender_head.npz"), "shipped": modeling.load(p.default_head)}
    nets = {name: backbones.from_description(m.meta_["backbone"]) for name, m in models.items()}
    faces = sorted(p.sample.glob("*/*.jpg"))
    chips = np.stack([nets["frozen"].prepare(load_rgb(faces[i % len(faces)])) for i in range(args.n)])
    runs = {name: (lambda m=m, net=nets[name]: m.p_female(net.embed(chips))) for name, m in models.items()}
    for run in runs.values():  # warm-up: load, trace
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    rate = {name: args.n / statistics.median(s) for name, s in seconds.items()}
    print(
        f"{args.n} chips, median of {args.repeats}: frozen (descriptor + MLP) {rate['frozen']:.1f} img/s; "
        f"shipped (descriptors of face and mirror + MLP, averaged) {rate['shipped']:.1f} img/s; "
        f"the shipped model takes {rate['frozen'] / rate['shipped']:.2f}x the time per image"
    )
    write_json(args.out, {"n": args.n, "repeats": args.repeats, "seconds": seconds, "images_per_s": rate, "cpus": os.cpu_count()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
