"""``gender-lib`` command line: the same functions the notebooks call."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def _convert(args: argparse.Namespace) -> int:
    from gender_lib import vggface

    meta = vggface.convert(args.source, args.output, strict=not args.lenient)
    print(vggface.describe(meta))
    print(f"saved {args.output} and {vggface.sidecar_path(args.output)}")
    return 0


def _extract(args: argparse.Namespace) -> int:
    from gender_lib import features

    _, x, _, _ = features.build_and_extract(
        args.data_root, args.workdir, layout=args.layout, backbone=args.backbone, align=args.align,
        precision=args.precision, sample_size=args.sample_size, batch_size=args.batch_size, seed=args.seed,
        protocol=args.protocol, progress=not args.quiet,
    )
    print(f"{x.shape[0]} descriptors of {x.shape[1]} dims; manifest and extraction.json in {args.workdir}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from gender_lib import head

    config = head.HeadConfig(widths=tuple(args.widths), dropout=args.dropout, l2=args.l2, learning_rate=args.learning_rate,
                             batch_size=args.batch_size, epochs=args.epochs, patience=args.patience, seed=args.seed)
    result = head.fit_from_workdir(args.workdir, args.output, config)
    print(head.describe(result.meta))
    print(f"saved {result.path} and {result.path.with_suffix('.json')}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from gender_lib import evaluate

    if args.data_root:
        results = evaluate.evaluate_folder(args.head, args.data_root, layout=args.layout, reports_dir=args.reports, n_boot=args.n_boot)
    else:
        results = evaluate.evaluate_workdir(args.head, args.workdir, reports_dir=args.reports, n_boot=args.n_boot)
    for name, report in results["models"].items():
        print("\n".join(evaluate.summary_lines(report, name)))
    print(f"reports written to {args.reports}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gender_lib import predict

    predictor = predict.Predictor(args.head)
    try:
        if len(args.images) == 1 and Path(args.images[0]).is_dir():
            out = args.csv or str(Path(args.images[0]).name) + "_predictions.csv"
            predictor.predict_folder(args.images[0], out, detect=not args.no_detect)
            print(f"wrote {out}")
            return 0
        rows = predictor.predict_paths(args.images, detect=not args.no_detect)
    finally:
        predictor.close()
    failed = False
    for row in rows:
        if row["message"]:
            failed = failed or row["message"] != "no face found"
            print(f"{row['path']}: {row['message']}")
        else:
            word = "female" if row["label"] == "F" else "male"
            confidence = row["p_female"] if row["label"] == "F" else 1 - row["p_female"]
            print(f"{row['path']}: face {row['face'] + 1}: {word} (P(female)={row['p_female']:.3f}, confidence {confidence:.0%}) box {row['box']}")
    if args.csv:
        import pandas as pd

        from gender_lib.fileio import atomic_write

        frame = pd.DataFrame(rows)
        atomic_write(Path(args.csv), lambda tmp: frame.to_csv(tmp, index=False))
    return 1 if failed else 0


def _run(args: argparse.Namespace) -> int:
    from gender_lib import pipeline

    run_dir = pipeline.run(args.config, args.name, only=args.only)
    print(f"all notebooks ran; executed copies, manifest, head and reports in {run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from gender_lib import config

    p = config.paths()
    parser = argparse.ArgumentParser(prog="gender-lib", description="Face gender classification from VGG-Face / dlib descriptors.")
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="convert vgg_face.mat to a verified Keras model", description="Convert MatConvNet vgg_face.mat (either published layout) to checkpoints/vggface.keras + .json, checked against a NumPy reference.")
    convert.add_argument("source", nargs="?", default=str(p.vgg_face_mat), help=f"the .mat file (default {p.vgg_face_mat})")
    convert.add_argument("-o", "--output", default=str(p.vggface_model), help=f"the .keras file to write (default {p.vggface_model})")
    convert.add_argument("--lenient", action="store_true", help="accept networks that are not VGG-Face-shaped")
    convert.set_defaults(func=_convert)

    extract = sub.add_parser("extract", help="build the manifest (clean, split by person) and extract descriptors",
                             description="Read a face folder in any supported layout, clean it, split it by person, write "
                                         "manifest.csv to WORKDIR and embed every image (cached, resumable).")
    extract.add_argument("--data-root", default=str(p.datasets / "combined" / "aligned"), help="face folder or label CSV (default: the shared combined/aligned)")
    extract.add_argument("--layout", default=None, choices=["combined", "adience", "utkface", "folders", "csv"], help="force a layout (default: detect)")
    extract.add_argument("--workdir", default=str(p.processed), help=f"where manifest.csv goes (default {p.processed})")
    extract.add_argument("--backbone", default="auto", choices=["auto", "vggface", "dlib"])
    extract.add_argument("--align", default="chip", choices=["chip", "resize"], help="dlib: 5-point chip or plain resize")
    extract.add_argument("--precision", default="float32", choices=["float32", "bfloat16"], help="vggface compute precision")
    extract.add_argument("--sample-size", type=int, default=0, help="seeded subset size (0 = all images)")
    extract.add_argument("--batch-size", type=int, default=32)
    extract.add_argument("--seed", type=int, default=0)
    extract.add_argument("--protocol", default="person", choices=["person", "original"], help="person-disjoint split, or the original work's leaky image-level split")
    extract.add_argument("--quiet", action="store_true", help="no progress bars")
    extract.set_defaults(func=_extract)

    train = sub.add_parser("train", help="train the gender head on a workdir's train split",
                           description="Train the MLP head (seeded; early stopping and threshold on the val split) and save it with metadata.")
    train.add_argument("--workdir", default=str(p.processed), help="folder with manifest.csv and extraction.json")
    train.add_argument("-o", "--output", default=str(p.checkpoints / "head.keras"), help="where the head goes (.keras + .json)")
    train.add_argument("--widths", type=int, nargs="+", default=[16, 16])
    train.add_argument("--dropout", type=float, default=0.4)
    train.add_argument("--l2", type=float, default=0.0)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--epochs", type=int, default=100)
    train.add_argument("--patience", type=int, default=8)
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=_train)

    evaluate = sub.add_parser("evaluate", help="score a head on the test split, or on any labelled folder",
                              description="Evaluate a saved head: on WORKDIR's test split (default) or, with --data-root, on every image of another labelled folder.")
    evaluate.add_argument("--head", default=str(p.checkpoints / "head.keras"))
    evaluate.add_argument("--workdir", default=str(p.processed))
    evaluate.add_argument("--data-root", default=None, help="a labelled folder in any supported layout (cross-dataset evaluation)")
    evaluate.add_argument("--layout", default=None, choices=["combined", "adience", "utkface", "folders", "csv"])
    evaluate.add_argument("--reports", default=str(p.reports), help="where evaluation.json/.md go")
    evaluate.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    evaluate.set_defaults(func=_evaluate)

    predict = sub.add_parser("predict", help="label the faces in photos (or every image of a folder)",
                             description="Detect faces in each photo and print box, label and P(female). A single folder argument writes a CSV with one row per face.")
    predict.add_argument("images", nargs="+", help="image files, or one folder")
    predict.add_argument("--head", default=None, help="a trained head (default: the committed checkpoints/dlib_gender_head.keras)")
    predict.add_argument("--no-detect", action="store_true", help="the images are already face crops: skip detection")
    predict.add_argument("--csv", default=None, help="also write the results to this CSV")
    predict.set_defaults(func=_predict)

    run = sub.add_parser("run", help="execute the numbered notebooks in order with papermill",
                         description="Run notebooks/01..06 with parameters from a YAML file into runs/<name>/; stops at the first failing notebook.")
    run.add_argument("--config", default=str(p.root / "pipeline.yml"), help="pipeline YAML (default: pipeline.yml)")
    run.add_argument("--name", default=None, help="run name (default: the YAML's name)")
    run.add_argument("--only", nargs="+", default=None, help="run just these notebooks (e.g. 03_train 04_evaluate)")
    run.set_defaults(func=_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line and exit 2 instead of a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, OSError, RuntimeError, KeyError) as error:
        print(f"gender-lib {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
