"""Inference speed of the two committed models, from aligned 150x150 chips to P(female).

* frozen: ``checkpoints/dlib_gender_head.keras`` -- dlib's network (Keras engine) to the 128-d
  descriptor of each chip, then the head's NumPy forward pass;
* shipped (the default, mode finetune, flip-averaged): ``checkpoints/dlib_gender_finetuned.npz`` --
  the network's lower levels on the chip and on its mirror image (the ``level2`` output), then the
  classifier (top levels + head for both views, averaged).

Chips are made once from data/sample (the decode, detection and 5-point alignment before them cost
the same for both, ~12.5 ms of CPU per image here). Repeats are interleaved, medians reported, with
the ratio in the same run. Writes ``benchmarks/results/head_modes.json``.

    .venv/bin/python benchmarks/head_modes.py [--n 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from gender_lib import backbones, config, finetune
from gender_lib import head as hd
from gender_lib.fileio import write_json
from gender_lib.images import load_rgb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(config.paths().root / "benchmarks" / "results" / "head_modes.json"))
    args = parser.parse_args()
    p = config.paths()
    frozen_head, _ = hd.load_head(p.frozen_head, backend="numpy")
    shipped, shipped_meta = finetune.load_any(p.default_head)
    frozen_net = backbones.DlibBackbone()
    level2_net = backbones.from_description(shipped_meta["backbone"])
    faces = sorted(p.sample.glob("*/*.jpg"))
    chips = np.stack([frozen_net.prepare(load_rgb(faces[i % len(faces)])) for i in range(args.n)])
    runs = {
        "frozen": lambda: hd.predict_proba(frozen_head, frozen_net.embed(chips)),
        "shipped": lambda: hd.predict_proba(shipped, level2_net.embed(chips)),
    }
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
        f"{args.n} chips, median of {args.repeats}: frozen (descriptor + NumPy head) {rate['frozen']:.1f} img/s; "
        f"shipped (level-2 maps of face and mirror + classifier) {rate['shipped']:.1f} img/s; "
        f"the shipped model takes {rate['frozen'] / rate['shipped']:.2f}x the time per image"
    )
    write_json(args.out, {"n": args.n, "repeats": args.repeats, "seconds": seconds, "images_per_s": rate, "cpus": os.cpu_count()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
