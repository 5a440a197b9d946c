"""Fit the map from CenterFace's boxes to the boxes dlib's 5-point model expects, and show the chips.

Research code, outside the package (issue 28)::

    python -m experiments.box_map [--faces 2000] [--figure docs/figures/chips_detector.jpg]

dlib's 5-point landmark model, and so every chip the descriptor network was trained on, starts from
the box dlib's HOG detector draws (``dlib.get_frontal_face_detector()``, upsampled once, as the
package chipped crops before 0.3). On ``--faces`` crops of the shared data (seeded), for the faces
both detectors find, this fits CenterFace's box (centre cx, cy, width w, height h) to HOG's square
box: its centre shift in box widths and heights and its side in box widths, as medians
(:data:`gender_lib.faces.DLIB_BOX` holds the result). It then measures, with the fitted map, how far
the 5 landmarks land from where HOG's box puts them (fractions of the face's width), and how often
each detector finds a face at all.

``--figure``: the 300 embedded sample faces' chips, HOG's (as before) beside CenterFace's (as now).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import numpy as np

from gender_lib import config, faces
from gender_lib.images import load_rgb


def hog_rect(rgb: np.ndarray, detector: Any) -> Any:
    """The widest face dlib's HOG detector finds (upsampled once), or None."""
    found = detector(rgb, 1)
    return max(found, key=lambda r: r.area()) if len(found) else None


def landmarks(rgb: np.ndarray, rect: Any) -> np.ndarray:
    shape = faces._landmarks()(rgb, rect)
    return np.array([(shape.part(i).x, shape.part(i).y) for i in range(5)], float)


def fit(paths: list[Path]) -> dict[str, Any]:
    import dlib

    detector = dlib.get_frontal_face_detector()
    pairs, hog_found, cf_found = [], 0, 0
    for path in paths:
        rgb = load_rgb(path)
        rect, found = hog_rect(rgb, detector), faces.detect(rgb, min_face=1)
        hog_found += rect is not None
        cf_found += bool(found)
        if rect is not None and found:
            pairs.append((rgb, rect, found[0].box))
    rows = np.array(
        [
            ((r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2, r.right() - r.left(), (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1])
            for _, r, b in pairs
        ]
    )
    fitted = {
        "dx": round(float(np.median((rows[:, 0] - rows[:, 3]) / rows[:, 5])), 3),
        "dy": round(float(np.median((rows[:, 1] - rows[:, 4]) / rows[:, 6])), 3),
        "side": round(float(np.median(rows[:, 2] / rows[:, 5])), 3),
    }
    saved = dict(faces.DLIB_BOX)
    faces.DLIB_BOX.update(fitted)
    try:
        deviation = [np.abs(landmarks(rgb, faces.dlib_rect(box)) - landmarks(rgb, rect)).mean() / (rect.right() - rect.left()) for rgb, rect, box in pairs]
    finally:
        faces.DLIB_BOX.update(saved)
    return {
        "faces": len(paths),
        "hog_found": hog_found,
        "centerface_found": cf_found,
        "both": len(pairs),
        "fitted": fitted,
        "landmark_deviation_of_face_width": {q: round(float(np.percentile(deviation, p)), 4) for q, p in (("median", 50), ("p90", 90), ("p99", 99))},
    }


def figure(out: Path) -> dict[str, Any]:
    """The sample's chips before and after, side by side; returns how far they differ."""
    import dlib
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    detector = dlib.get_frontal_face_detector()
    paths = sorted(config.paths().sample.glob("*/*.jpg"))
    before, after, hog_missed, cf_missed = [], [], 0, 0
    for path in paths:
        rgb = load_rgb(path)
        rect = hog_rect(rgb, detector)
        hog_missed += rect is None
        rect = rect or dlib.rectangle(0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)
        before.append(np.asarray(dlib.get_face_chip(rgb, faces._landmarks()(rgb, rect), size=150, padding=0.25)))
        chip, found = faces.dlib_chip(rgb)
        cf_missed += not found
        after.append(chip)
    cols = 20
    grid = lambda chips: np.concatenate([np.concatenate(chips[r * cols : (r + 1) * cols], axis=1) for r in range(len(chips) // cols)], axis=0)
    fig, axes = plt.subplots(1, 2, figsize=(20, 8.8))
    diff = [float(np.abs(a.astype(float) - b.astype(float)).mean()) for a, b in zip(before, after)]
    for ax, chips, title in (
        (axes[0], before, f"before: dlib's HOG box ({hog_missed} of {len(paths)} faces not found: whole crop)"),
        (axes[1], after, f"now: CenterFace's box, mapped ({cf_missed} of {len(paths)} not found: whole crop)"),
    ):
        ax.imshow(grid(chips))
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(f"dlib 5-point chips of the {len(paths)} embedded sample faces; mean |pixel difference| median {np.median(diff):.1f} of 255")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=60, pil_kwargs={"quality": 80} if out.suffix == ".jpg" else None)
    return {"sample": len(paths), "hog_missed": hog_missed, "centerface_missed": cf_missed, "median_mean_abs_pixel_diff": round(float(np.median(diff)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", default="")
    args = parser.parse_args()
    files = sorted((config.paths().datasets / "combined" / "aligned").glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"no crops under {config.paths().datasets / 'combined' / 'aligned'}")
    result = fit(random.Random(args.seed).sample(files, min(args.faces, len(files))))
    if args.figure:
        result["figure"] = figure(Path(args.figure))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
