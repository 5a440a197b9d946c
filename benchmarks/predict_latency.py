"""Prediction latency: one face, warm (in a live Predictor) and cold (``gender-lib predict`` in a fresh process).

* warm: ``gender_lib.predict.Predictor`` (the committed head, its backbone rebuilt with the default
  engine, keras) on a 128 px face crop of data/sample, detection on (as the CLI runs it); median of
  20 after 3 warm-up calls. Target <= 50 ms. The parts (detect, chip, embed, head) are timed
  alone too, and the same with ``detect=False``.
* cold: ``gender-lib predict PHOTO`` as a subprocess, median of 3. Target <= 4 s. For scale, the
  cold ``import tensorflow`` alone (median of 3), and a TF-free prototype of the same prediction
  (dlib engine, the head's weights evaluated in NumPy; not what the CLI runs) whose P(female)
  must match the CLI's.

The keras engine's converted model is made first where absent (one-off, not timed: the default
descriptor cache, data/cache/descriptors or $GENDER_LIB_CACHE). Writes
``benchmarks/results/predict_latency.json``.

    .venv/bin/python benchmarks/predict_latency.py [--repeats 20] [--cold-repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from gender_lib import config

TARGET_WARM_MS = 50.0
TARGET_COLD_S = 4.0


def sample_face() -> Path:
    """A face crop of data/sample in which dlib's HOG detector finds the face (from the middle of the list)."""
    from gender_lib.faces import detect_faces
    from gender_lib.images import load_rgb

    faces = sorted(config.paths().sample.glob("*_F/nm*.jpg"))
    for face in faces[len(faces) // 2 :] + faces[: len(faces) // 2]:
        if detect_faces(load_rgb(face)):
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
    from gender_lib import head as hd
    from gender_lib.faces import detect_faces
    from gender_lib.predict import Predictor, read_image

    start = time.perf_counter()
    predictor = Predictor(head)
    predictor.backbone.load()  # converts once where absent, loads, traces
    setup_s = time.perf_counter() - start
    rgb = read_image(photo)
    for _ in range(3):
        predictor.predict(rgb)
        predictor.predict(rgb, detect=False)
    out: dict = {"photo": str(photo), "size": list(rgb.shape[:2]), "engine": predictor.backbone.engine, "setup_s": setup_s}
    med, times, faces = timed(lambda: predictor.predict(rgb), repeats)
    out.update(detect_ms=1000 * med, detect_ms_all=[1000 * t for t in times], faces=len(faces), p_female=faces[0].p_female if faces else None)
    med, _, _ = timed(lambda: predictor.predict(rgb, detect=False), repeats)
    out["no_detect_ms"] = 1000 * med
    box = detect_faces(rgb)[0]
    chip = predictor.backbone.prepare_face(rgb, box)[None]
    x = predictor.backbone.embed(chip)
    parts = {
        "detect": lambda: detect_faces(rgb),
        "chip": lambda: predictor.backbone.prepare_face(rgb, box),
        "embed": lambda: predictor.backbone.embed(chip),
        "head": lambda: hd.predict_proba(predictor.model, x),
    }
    out["parts_ms"] = {name: 1000 * timed(fn, repeats)[0] for name, fn in parts.items()}
    predictor.close()
    return out


# --------------------------------------------------------------------------- cold


def numpy_head(path: Path):
    """A saved head's forward pass in NumPy (Normalization, Dense relu..., Dropout = identity, Dense sigmoid)."""
    import io
    import zipfile

    import h5py

    with zipfile.ZipFile(path) as archive:
        layers = json.loads(archive.read("config.json"))["config"]["layers"]
        weights = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
        seen: dict[str, int] = {}
        steps = []
        for layer in layers:
            kind = layer["class_name"]
            if kind in ("InputLayer", "Dropout"):
                continue
            base = {"Dense": "dense", "Normalization": "normalization"}[kind]
            key = base if base not in seen else f"{base}_{seen[base]}"
            seen[base] = seen.get(base, 0) + 1
            values = [np.asarray(weights[f"layers/{key}/vars/{i}"]) for i in range(len(weights[f"layers/{key}/vars"]))]
            steps.append((kind, layer["config"].get("activation"), values))

    def forward(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        for kind, activation, values in steps:
            if kind == "Normalization":
                x = (x - values[0]) / np.maximum(np.sqrt(values[1]), 1e-7)
            else:
                x = x @ values[0] + values[1]
                x = np.maximum(x, 0) if activation == "relu" else 1 / (1 + np.exp(-x)) if activation == "sigmoid" else x
        return x.reshape(-1)

    return forward


def tf_free_once(photo: str) -> None:
    """What ``gender-lib predict --head <frozen head> PHOTO`` does, with the dlib engine and a NumPy head: no TensorFlow."""
    from gender_lib import backbones
    from gender_lib.faces import detect_faces
    from gender_lib.predict import read_image

    head_path = config.paths().frozen_head
    meta = json.loads(head_path.with_suffix(".json").read_text())
    backbone = backbones.from_description(meta["backbone"], workers=1, engine="dlib")
    rgb = read_image(photo)
    boxes = detect_faces(rgb)
    p = numpy_head(head_path)(backbone.embed(np.stack([backbone.prepare_face(rgb, b) for b in boxes])))
    assert "tensorflow" not in sys.modules
    print(json.dumps({"p_female": [float(v) for v in p], "boxes": boxes}))


def cold(photo: Path, repeats: int, head: Path) -> dict:
    root = config.paths().root
    cli = [str(Path(sys.executable).with_name("gender-lib")), "predict", "--head", str(head), str(photo)]
    runs: dict[str, list[str]] = {
        "gender_lib_predict": cli,
        "import_tensorflow": [sys.executable, "-c", "import tensorflow"],
        "tf_free_prototype": [sys.executable, str(Path(__file__).resolve()), "--tf-free-once", str(photo)],
    }
    if head.resolve() != config.paths().frozen_head.resolve():
        del runs["tf_free_prototype"]  # a TF-free path exists for the frozen head only
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
    cli_p = float(outputs["gender_lib_predict"].split("P(female) ")[1].split()[0])
    proto_p = json.loads(outputs["tf_free_prototype"])["p_female"][0] if "tf_free_prototype" in outputs else float("nan")
    return {
        "seconds": seconds,
        "median_s": {name: statistics.median(s) for name, s in seconds.items()},
        "cli_output": outputs["gender_lib_predict"].strip(),
        "cli_p_female": cli_p,
        "tf_free_p_female": proto_p,
        "tf_free_matches_cli": abs(cli_p - proto_p) < 1e-3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cold-repeats", type=int, default=3)
    parser.add_argument("--photo", default=None, help="default: a 128 px face crop of data/sample")
    parser.add_argument("--head", default=str(config.paths().frozen_head), help="the model to time (default: the frozen head, TF-free)")
    parser.add_argument("--tf-free-once", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="default: benchmarks/results/predict_latency[_<head>].json")
    args = parser.parse_args()
    head = Path(args.head)
    frozen = head.resolve() == config.paths().frozen_head.resolve()
    out = args.out or str(config.paths().root / "benchmarks" / "results" / ("predict_latency.json" if frozen else f"predict_latency_{head.stem}.json"))
    if args.tf_free_once:
        tf_free_once(args.tf_free_once)
        return
    photo = Path(args.photo) if args.photo else sample_face()
    w = warm(photo, args.repeats, head)
    print(
        f"warm Predictor ({w['engine']} engine) on {photo.name} ({w['size'][0]} px), median of {args.repeats}: "
        f"{w['detect_ms']:.1f} ms with detection, {w['no_detect_ms']:.1f} ms without; parts: " + ", ".join(f"{k} {v:.1f} ms" for k, v in w["parts_ms"].items())
    )
    c = cold(photo, args.cold_repeats, head)
    m = c["median_s"]
    print(
        f"cold ({head.name}), median of {args.cold_repeats}: gender-lib predict {m['gender_lib_predict']:.2f} s; import tensorflow alone "
        f"{m['import_tensorflow']:.2f} s"
        + (
            f"; TF-free prototype (dlib engine + NumPy head) {m['tf_free_prototype']:.2f} s "
            f"(P(female) {c['tf_free_p_female']:.4f} vs the CLI's {c['cli_p_female']:.3f})"
            if "tf_free_prototype" in m
            else ""
        )
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
