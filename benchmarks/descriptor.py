"""dlib's face descriptor: our verified ONNX graph against dlib's own code, and where a face's time goes, in one run.

On the same real faces (a deterministic, spread-out selection of the shared combined/aligned
folder where present, else data/sample), with this process's cores (2 here):

1. **embedding alone**: the converted graph on ONNX Runtime (its threads spinning while they wait,
   as ``predict`` runs it, and not, as extraction runs it) against dlib's own
   ``compute_face_descriptor`` (the reference, one process) on the same ``--chips`` aligned chips,
   at batch 1 and batch 32. Repeats interleaved, medians; the ratio; max |diff| against dlib.
2. **a face's time, by part** (one thread, median per face over the chips' source crops): decode,
   HOG detection, 5-point landmarks and chip, embedding (batch 32, per face), head (the shipped
   model's answer, per face). With ``dlib_align crop`` the detection is skipped.
3. **end to end extraction** (``gender_lib.features.extract`` into an empty descriptor cache, as
   ``gender-lib extract`` runs it) of ``--images`` faces: align chip (the default) and crop, each
   with and without spinning threads (ONNX Runtime's own default). Faces/s and ratios.

The graph is converted first where absent (one-off, not timed). Writes ``benchmarks/results/descriptor.json``.

    .venv/bin/python benchmarks/descriptor.py [--chips 256] [--images 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from gender_lib import config, features, store
from gender_lib.backbones import DlibBackbone
from gender_lib.converters import dlib_resnet, verified
from gender_lib.fileio import sha256_file, write_json
from gender_lib.images import load_rgb

TARGET_DIFF = 1e-5
med = statistics.median


def face_paths(n: int) -> list[Path]:
    p = config.paths()
    return verified.real_face_paths(n, roots=[p.datasets / "combined" / "aligned", p.sample])


def per_face_ms(fn, items, repeats: int) -> float:
    """Median over repeats of (time for all items) / items, in ms."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(item)
        times.append((time.perf_counter() - start) / len(items))
    return 1000 * med(times)


# --------------------------------------------------------------------------- 1. embedding alone


class DlibOwn:
    """dlib's own ``compute_face_descriptor``: the reference the graph is verified against, and the naive path."""

    def __init__(self) -> None:
        import dlib

        self.model = dlib.face_recognition_model_v1(str(dlib_resnet.dlib_dnn.default_source()))

    def embed(self, chips: np.ndarray) -> np.ndarray:
        return np.asarray([np.asarray(v) for v in self.model.compute_face_descriptor([np.ascontiguousarray(c) for c in chips])], np.float32)


def embedding(chips: np.ndarray, runs: dict, repeats: int) -> dict:
    out: dict = {"chips": len(chips), "ms_per_face": {}, "agreement_with_dlib": {}}
    reference = dlib_resnet.dlib_descriptors(chips)
    for name, backbone in runs.items():
        backbone.embed(chips[:32])  # warm: loaded
        out["agreement_with_dlib"][name] = dlib_resnet.compare(backbone.embed(chips), reference)["max_abs_diff"]
    for batch in (1, 32):
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):  # interleaved
            for name, backbone in runs.items():
                start = time.perf_counter()
                for i in range(0, len(chips), batch):
                    backbone.embed(chips[i : i + batch])
                times[name].append((time.perf_counter() - start) / len(chips))
        out["ms_per_face"][f"batch{batch}"] = {name: 1000 * med(t) for name, t in times.items()}
    return out


# --------------------------------------------------------------------------- 2. a face's time, by part


def parts(paths: list[Path], graph: DlibBackbone, repeats: int) -> dict:
    from gender_lib import modeling
    from gender_lib.faces import _landmarks, detect, dlib_rect

    images = [load_rgb(p) for p in paths]
    boxes = [(detect(rgb, min_face=1) or [None])[0] for rgb in images]
    boxes = [d.box if d else (0.0, 0.0, rgb.shape[1] - 1.0, rgb.shape[0] - 1.0) for d, rgb in zip(boxes, images)]
    chips = np.stack([graph.prepare_face(rgb, box) for rgb, box in zip(images, boxes)])
    model = modeling.load(config.paths().default_head)
    descriptors = DlibBackbone(output="descriptor+mirror").embed(chips)

    def chip(item):
        import dlib

        rgb, box = item
        return dlib.get_face_chip(rgb, _landmarks()(rgb, dlib_rect(box)), size=150, padding=0.25)

    out = {
        "decode": per_face_ms(load_rgb, paths, repeats),
        "detection": per_face_ms(lambda rgb: detect(rgb, min_face=1), images, repeats),
        "landmarks_and_chip": per_face_ms(chip, list(zip(images, boxes)), repeats),
        "embedding_batch32": 1000 * med([_timed(lambda: _batched(graph, chips)) / len(chips) for _ in range(repeats)]),
        "head_per_face": 1000 * med([_timed(lambda: model.answer(descriptors)) / len(chips) for _ in range(repeats)]),
    }
    out["detection_share_of_prepare"] = out["detection"] / (out["decode"] + out["detection"] + out["landmarks_and_chip"])
    return out


def _batched(backbone: DlibBackbone, chips: np.ndarray, batch: int = 32) -> None:
    for i in range(0, len(chips), batch):
        backbone.embed(chips[i : i + batch])


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- 3. end to end extraction


def extraction(paths: list[Path], repeats: int) -> dict:
    keys = [sha256_file(p) for p in paths]
    unique = dict(zip(keys, paths))
    keys, paths = list(unique), list(unique.values())
    runs = {
        "align chip": DlibBackbone(),
        "align chip, threads spinning": DlibBackbone(spin=True),
        "align crop": DlibBackbone(align="crop"),
        "align crop, threads spinning": DlibBackbone(align="crop", spin=True),
    }
    for backbone in runs.values():
        backbone.load()  # outside the timing
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, backbone in runs.items():
            with tempfile.TemporaryDirectory() as root:
                cache = features.cache_for(backbone, root)
                start = time.perf_counter()
                report = features.extract(paths, keys, backbone, cache, progress=False, flush_seconds=None)
                seconds[name].append(time.perf_counter() - start)
                if report.embedded != len(keys) or report.failures:
                    raise RuntimeError(f"{name}: {report.summary()}")
    return {"images": len(keys), "faces_per_s": {name: len(keys) / med(s) for name, s in seconds.items()}, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=256)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(config.paths().root / "benchmarks" / "results" / "descriptor.json"))
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as root, store.using(root):
        dlib_resnet.ensure_converted()
        paths = face_paths(args.chips)
        graph = DlibBackbone()
        chips = np.stack([graph.prepare(load_rgb(p)) for p in paths])
        e = embedding(chips, {"graph": DlibBackbone(spin=True), "graph_no_spin": graph, "dlib": DlibOwn()}, args.repeats)
        b1, b32 = e["ms_per_face"]["batch1"], e["ms_per_face"]["batch32"]
        e["ratios"] = {"graph_vs_dlib_batch1": b1["dlib"] / b1["graph"], "graph_vs_dlib_batch32": b32["dlib"] / b32["graph"]}
        print(f"1. embedding alone, {len(chips)} real chips, {cores} cores, median of {args.repeats} (ms per face; faces/s):")
        for batch, row in e["ms_per_face"].items():
            print(f"   {batch:8s} " + "  ".join(f"{name} {ms:.2f} ms ({1000 / ms:.1f}/s)" for name, ms in row.items()))
        r = e["ratios"]
        print(f"   the graph vs dlib's own code: {r['graph_vs_dlib_batch1']:.2f}x at batch 1, {r['graph_vs_dlib_batch32']:.2f}x at batch 32")
        print("   max |diff| against dlib's own descriptors: " + ", ".join(f"{k} {v:.1e}" for k, v in e["agreement_with_dlib"].items()))

        p = parts(paths[: min(len(paths), 128)], graph, args.repeats)
        print(
            "2. a face's time by part (ms, one thread): "
            + ", ".join(f"{k} {v:.2f}" for k, v in p.items() if k != "detection_share_of_prepare")
            + f"; detection is {100 * p['detection_share_of_prepare']:.0f}% of preparing a face"
        )

        x = extraction(face_paths(args.images), args.repeats)
        rates = x["faces_per_s"]
        base = rates["align chip"]
        print(f"3. end to end extraction of {x['images']} faces into an empty cache, median of {args.repeats}:")
        for name, rate in rates.items():
            print(f"   {name:40s} {rate:6.1f} faces/s ({rate / base:.2f}x align chip)")
    verdict = f"the graph's descriptors vs dlib's: max |diff| {e['agreement_with_dlib']['graph']:.1e} vs target <= {TARGET_DIFF:g}: " + (
        "met" if e["agreement_with_dlib"]["graph"] <= TARGET_DIFF else "MISSED"
    )
    print(verdict)
    write_json(
        args.out, {"embedding": e, "parts_ms": p, "extraction": x, "cores": cores, "verdict": verdict, "note": "shared machine: medians of interleaved repeats"}
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
