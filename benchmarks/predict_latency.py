"""Prediction latency: one face, warm (in a live Predictor) and cold (``gender-lib predict`` in a fresh process).

* warm: ``gender_lib.predict.Predictor`` (the model, its backbone rebuilt from its record) on a
  128 px face crop of data/sample, detection on (as the CLI runs it); median of 20 after 3 warm-up
  calls. Target <= 10 ms. Its parts (detect, chip, embed, head) are timed alone too, and the same
  with ``detect=False``.
* cold: ``gender-lib predict PHOTO`` as a subprocess; median of ``--cold-repeats``, interleaved with
  the yardsticks of the shared machine's speed during the run: a bare Python process importing numpy,
  Pillow and dlib (the floor of any dlib-based tool), and ``import numpy`` alone. Target <= 0.5 s.

dlib's network is converted first where absent (one-off, not timed: the default store,
data/cache/descriptors or $GENDER_LIB_CACHE). Writes ``benchmarks/results/predict_latency.json``
(``predict_latency_<model>.json`` for another ``--head``).

    .venv/bin/python benchmarks/predict_latency.py [--head checkpoints/dlib_gender_model.npz] [--repeats 20] [--cold-repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from gender_lib import config

TARGET_WARM_MS = 10.0
TARGET_COLD_S = 0.5


def sample_face() -> Path:
    """A face crop of data/sample in which the detector finds one face (from the middle of the list)."""
    from gender_lib.faces import detect
    from gender_lib.images import load_rgb

    faces = sorted(config.paths().sample.glob("*_F/nm*.jpg"))
    for face in faces[len(faces) // 2 :] + faces[: len(faces) // 2]:
        if len(detect(load_rgb(face))) == 1:
            return face
    raise SystemExit(f"no detectable face in {config.paths().sample}")


def timed(fn, repeats: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, out


# --------------------------------------------------------------------------- warm


def warm(photo: Path, repeats: int, head: Path) -> dict:
    from gender_lib.faces import detect
    from gender_lib.predict import Predictor, read_image

    rgb = read_image(photo)
    out: dict = {"photo": str(photo), "size": list(rgb.shape[:2])}
    start = time.perf_counter()
    predictor = Predictor(head)
    predictor.backbone.embed(np.zeros((1, 150, 150, 3), np.uint8))  # converts once where absent, loads
    out["setup_s"] = time.perf_counter() - start
    for _ in range(3):
        predictor.predict(rgb)
    out["detect_ms"] = 1000 * timed(lambda: predictor.predict(rgb), repeats)[0]
    out["p_female"], out["faces"] = predictor.predict(rgb)[0].p_female, len(predictor.predict(rgb))
    out["no_detect_ms"] = 1000 * timed(lambda: predictor.predict(rgb, detect=False), repeats)[0]
    box = detect(rgb)[0].box
    chip = predictor.backbone.prepare_face(rgb, box)[None]
    x = predictor.backbone.embed(chip)
    parts = {
        "detect": lambda: detect(rgb),
        "chip": lambda: predictor.backbone.prepare_face(rgb, box),
        "embed": lambda: predictor.backbone.embed(chip),
        "head": lambda: predictor.model.answer(x),
    }
    out["parts_ms"] = {name: 1000 * timed(fn, repeats)[0] for name, fn in parts.items()}
    output = predictor.backbone.output
    out["embedding"] = f"{output}: {2 if output == 'descriptor+mirror' else 1} view(s) per face, one forward pass"
    return out


# --------------------------------------------------------------------------- cold


def cold(photo: Path, repeats: int, head: Path) -> dict:
    root = config.paths().root
    cli = [str(Path(sys.executable).with_name("gender-lib")), "predict", "--head", str(head), str(photo)]
    runs: dict[str, list[str]] = {
        "gender_lib_predict": cli,
        "import_numpy_pillow_dlib": [sys.executable, "-c", "import numpy, PIL.Image, dlib"],  # the floor of a dlib-based tool
        "import_numpy": [sys.executable, "-c", "import numpy"],  # a yardstick of this machine's speed at the time
    }
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, str] = {}
    for _ in range(repeats):  # interleaved
        for name, command in runs.items():
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, cwd=root, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
            seconds[name].append(time.perf_counter() - start)
            if done.returncode:
                raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
            outputs[name] = done.stdout
    return {
        "seconds": seconds,
        "median_s": {name: statistics.median(s) for name, s in seconds.items()},
        "cli_output": outputs["gender_lib_predict"].strip(),
        "cli_p_female": float(outputs["gender_lib_predict"].split("P(female) ")[1].split()[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cold-repeats", type=int, default=5)
    parser.add_argument("--photo", default=None, help="default: a 128 px face crop of data/sample")
    frozen_head = config.paths().checkpoints / "dlib_gender_head.npz"
    parser.add_argument("--head", default=str(frozen_head), help="the model to time (default: the frozen head)")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/predict_latency[_<head>].json")
    args = parser.parse_args()
    head = Path(args.head)
    frozen = head.resolve() == frozen_head.resolve()
    out = args.out or str(config.paths().root / "benchmarks" / "results" / ("predict_latency.json" if frozen else f"predict_latency_{head.stem}.json"))
    photo = Path(args.photo) if args.photo else sample_face()
    w = warm(photo, args.repeats, head)
    print(
        f"warm Predictor on {photo.name} ({w['size'][0]} px), median of {args.repeats}: {w['detect_ms']:.1f} ms with detection, "
        f"{w['no_detect_ms']:.1f} ms without; parts: " + ", ".join(f"{k} {v:.1f} ms" for k, v in w["parts_ms"].items()) + f" ({w['embedding']})"
    )
    c = cold(photo, args.cold_repeats, head)
    m = c["median_s"]
    print(
        f"cold ({head.name}), median of {args.cold_repeats}: gender-lib predict {m['gender_lib_predict']:.2f} s "
        f"({m['gender_lib_predict'] / m['import_numpy_pillow_dlib']:.2f}x a bare Python importing numpy, Pillow and dlib, "
        f"{m['import_numpy_pillow_dlib']:.2f} s); import numpy alone {m['import_numpy']:.2f} s"
    )
    verdicts = []
    for what, value, target, unit in (
        ("warm single face", w["detect_ms"], TARGET_WARM_MS, " ms"),
        ("cold gender-lib predict", m["gender_lib_predict"], TARGET_COLD_S, " s"),
    ):
        verdicts.append(f"{what}: {value:.2f}{unit} vs target <= {target:g}{unit}: " + ("met" if value <= target else f"MISSED by {value - target:.2f}{unit}"))
        print(verdicts[-1])
    result = {
        "warm": w,
        "cold": c,
        "targets": {"warm_ms": TARGET_WARM_MS, "cold_s": TARGET_COLD_S},
        "verdicts": verdicts,
        "cpus": os.cpu_count(),
        "note": "shared machine: medians; other processes ran at the same time",
    }
    from gender_lib.fileio import write_json

    result["head"] = str(head)
    write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
