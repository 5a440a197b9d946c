"""Benchmark: list, hash, check and split a real image folder (target: under 30 s for combined/aligned).

Compares gender_lib.dataset.build (threaded read+hash+decode, one read per file, greedy grouped
split) with the naive path (one thread; hash, then open the file again to decode; sklearn's
GroupShuffleSplit) on the same folder in the same run. Prints medians and the ratio, writes JSON.

    .venv/bin/python benchmarks/dataset.py [ROOT] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from pathlib import Path

from gender_lib import config
from gender_lib import dataset as ds
from gender_lib.fileio import write_json
from gender_lib.readers import subject_from_combined_name


def naive(root: Path) -> int:
    from PIL import Image
    from sklearn.model_selection import GroupShuffleSplit

    paths, genders, groups = [], [], []
    for folder in sorted(root.iterdir()):
        for path in sorted(folder.iterdir()):
            paths.append(path)
            genders.append(folder.name[-1])
            parsed = subject_from_combined_name(path.name)
            groups.append(parsed[0] if parsed else path.name)
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    for path in paths:
        with Image.open(path) as image:
            image.load()
    split = GroupShuffleSplit(n_splits=1, test_size=0.15, random_state=0)
    next(split.split(paths, genders, groups))
    return len(set(digests))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(config.paths().datasets / "combined" / "aligned"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(config.paths().root / "benchmarks" / "results" / "dataset.json"))
    args = parser.parse_args()
    root = Path(args.root)
    ds.build(root, progress=False)  # warm the page cache so both paths read from memory
    ours, theirs = [], []
    for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
        start = time.perf_counter()
        dataset = ds.build(root, progress=False)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        naive(root)
        theirs.append(time.perf_counter() - start)
    result = {
        "root": str(root),
        "images": dataset.meta["n_read"],
        "kept": dataset.meta["n_images"],
        "repeats": args.repeats,
        "gender_lib_build_s": {"median": statistics.median(ours), "all": ours},
        "naive_s": {"median": statistics.median(theirs), "all": theirs},
        "speedup": statistics.median(theirs) / statistics.median(ours),
        "target_s": 30.0,
    }
    print(f"{'path':<34}{'median s':>10}{'images/s':>10}")
    for name, times in (("gender_lib.dataset.build", ours), ("naive (1 thread, 2 reads/file)", theirs)):
        median = statistics.median(times)
        print(f"{name:<34}{median:>10.2f}{result['images'] / median:>10.0f}")
    print(f"speedup {result['speedup']:.2f}x; build under 30 s: {statistics.median(ours) < 30}")
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
