"""Face detection in phone photos: our two-pass detector against the one-pass path it replaced.

A synthetic photo of WIDTHxHEIGHT (default 4032x3024, 12 MP) with two faces of the embedded sample
about 125 px wide (and, with --small, four more about 48 px wide) on a textured background. Both
paths run on the same decoded image in the same process, interleaved, medians of --repeats:

* ours: ``gender_lib.faces.detect_faces`` (pass 1 on a <= 1600 px copy, pass 2 at full
  resolution upsampled once, in tiles): faces from 40 px;
* before: dlib's HOG on the <= 1600 px copy with no upsampling (what ``predict`` did), which
  misses faces under about 200 px on a 12 MP photo.

Prints seconds per photo, the ratio, and how many of the planted faces each path found. Writes
``benchmarks/results/detect.json``.

    .venv/bin/python benchmarks/detect.py [--size 4032x3024] [--repeats 3] [--small]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from gender_lib import config, faces


def photo(width: int, height: int, small: bool) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """The synthetic photo and the planted faces' squares (left, top, right, bottom)."""
    rng = np.random.default_rng(0)
    scene = Image.fromarray(np.clip(rng.normal(125, 18, (height, width, 3)), 0, 255).astype(np.uint8))
    sample = sorted(config.paths().sample.glob("[2-5]?_[FM]/nm*.jpg"))
    plan = [(125, (width // 4, height // 3)), (125, (2 * width // 3, height // 2))]
    if small:
        plan += [(48, (width // 8 + i * width // 5, 4 * height // 5)) for i in range(4)]
    squares = []
    for i, (face, (left, top)) in enumerate(plan):
        side = int(face / 0.7)  # the face fills about 70% of a sample crop
        scene.paste(Image.open(sample[i * 3]).convert("RGB").resize((side, side), Image.BICUBIC), (left, top))
        squares.append((left, top, left + side, top + side))
    return np.asarray(scene), squares


def one_pass(rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The detection ``predict`` used before: one pass on a copy of at most 1600 px, no upsampling."""
    height, width = rgb.shape[:2]
    scale = min(1.0, 1600 / max(height, width))
    small = np.asarray(Image.fromarray(rgb).resize((round(width * scale), round(height * scale)), Image.BILINEAR))
    found = faces.dlib_models().detector(small, 1 if max(small.shape[:2]) < 800 else 0)
    return [tuple(int(round(v / scale)) for v in (r.left(), r.top(), r.right(), r.bottom())) for r in found]


def hits(boxes, squares) -> int:
    """Planted faces with a box centred inside them."""
    return sum(any(s[0] <= (b[0] + b[2]) / 2 <= s[2] and s[1] <= (b[1] + b[3]) / 2 <= s[3] for b in boxes) for s in squares)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="4032x3024")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="also plant four faces about 48 px wide")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    rgb, squares = photo(width, height, args.small)
    faces.dlib_models()  # load the detector before timing
    times: dict[str, list[float]] = {"ours": [], "before": []}
    found: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, fn in (("ours", faces.detect_faces), ("before", one_pass)):
            start = time.perf_counter()
            boxes = fn(rgb)
            times[name].append(time.perf_counter() - start)
            found[name] = hits(boxes, squares)
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "photo": f"{width}x{height} ({width * height / 1e6:.1f} MP), {len(squares)} faces planted",
        "seconds_median": medians,
        "faces_found": found,
        "ratio_ours_to_before": medians["ours"] / medians["before"],
        "repeats": args.repeats,
    }
    for name in ("ours", "before"):
        print(f"{name:>6}: {medians[name]:.2f} s per photo (median of {args.repeats}), found {found[name]} of {len(squares)} faces")
    print(f"ratio ours/before: {result['ratio_ours_to_before']:.1f}x the time")
    out = Path(__file__).resolve().parent / "results" / "detect.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
