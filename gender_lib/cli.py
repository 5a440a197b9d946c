"""``gender-lib`` command line: thin wrappers over :mod:`gender_lib.stages`.

Flags are made from :class:`gender_lib.config.Config` (same names with dashes, same defaults),
so the CLI, ``pipeline.yml`` and the notebooks cannot drift. The output is what the user asked
for: TensorFlow's and Jupyter's start-up chatter is hidden unless ``--verbose``. User errors
(:class:`gender_lib.errors.GenderLibError`) print one line and exit 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from gender_lib import store
from gender_lib.config import DEFAULT, RETIRED, BackboneConfig, Config, DataConfig, HeadConfig

ALIASES = {"ray_address": ["--address"]}
#: Each stage's flag groups: a Config section's fields (the work folder's two paths for "where").
STAGE_FLAGS = {
    "data": [f.name for f in dataclasses.fields(DataConfig)],
    "backbone": [f.name for f in dataclasses.fields(BackboneConfig)],
    "head": [f.name for f in dataclasses.fields(HeadConfig)],
    "where": ["workdir", "cache_dir"],
}


def _add_config_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    defaults, helps, choices = DEFAULT.flat(), Config.help(), Config.choices()
    for name in names:
        default = defaults[name]
        flags = ["--" + name.replace("_", "-"), *ALIASES.get(name, [])]
        # A help text that explains its own default (environment variables, empty meaning detect) says it once.
        help_ = helps[name]
        text = help_ if "(default" in help_ else f"{help_} (default: {' '.join(map(str, default)) if isinstance(default, list) else default})"
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": text}
        if isinstance(default, list):
            kwargs.update(type=int, nargs="+")
        elif isinstance(default, bool):
            kwargs.update(choices=["true", "false"])
        elif isinstance(default, (int, float)):
            kwargs.update(type=type(default))
        if name in choices:
            kwargs["choices"] = [c for c in choices[name] if c != ""]  # "" (detect) is the flag's absence
        parser.add_argument(*flags, **kwargs)


def _config(args: argparse.Namespace) -> Config:
    """DEFAULT, then ``--config FILE``'s parameters, then the flags given on the command line."""
    config = DEFAULT
    if getattr(args, "config_file", None):
        from gender_lib.config import load_yaml_parameters

        config = config.replace(load_yaml_parameters(args.config_file)["parameters"], source=args.config_file)
    given = {k: v for k, v in vars(args).items() if (k in Config.field_sections() or k in RETIRED) and v is not None}  # a retired one: its error
    return config.replace(given, source="command line")


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


def _convert(args: argparse.Namespace) -> int:
    """VGG-Face's ``.mat``, or with ``--dlib`` dlib's network, to a verified ONNX graph."""

    config = _config(args)
    with store.using(config.cache_dir()):  # the detector copy and the file hashes too
        return _convert_in_store(args, config)


def _convert_in_store(args: argparse.Namespace, config: Config) -> int:
    from gender_lib.converters import dlib_resnet, verified, vggface
    from gender_lib.errors import ConfigError

    if not args.dlib:
        if args.force:
            raise ConfigError("--force goes with --dlib (the VGG-Face conversion always runs)")
        output = config.vggface_model()
        meta = vggface.convert(config.vgg_face_mat(), output, strict=not args.lenient)
        print(vggface.describe(meta))
        print(f"saved {output} and {verified.sidecar_path(output).name}")
        return 0
    vgg_only = [flag for flag, value in (("--vgg-face-mat", args.vgg_face_mat), ("--vggface-model", args.vggface_model), ("--lenient", args.lenient)) if value]
    if vgg_only:
        raise ConfigError(f"{', '.join(vgg_only)} concern the VGG-Face conversion, not --dlib")
    root = store.root()  # the config's, entered by _convert
    path = dlib_resnet.default_path(root)
    meta = None if args.force else dlib_resnet.cached_conversion(root)
    done = "reused (verified when it was converted; --force converts again)" if meta else "saved"
    meta = meta or dlib_resnet.convert(output=path)
    print(verified.describe(meta))
    print(f"{done}: {path} and {verified.sidecar_path(path).name}")
    return 0


def _manifest(args: argparse.Namespace) -> int:
    from gender_lib import stages

    result = stages.manifest(_config(args), progress=_progress(args))
    print(result.summary())
    print(f"manifest.csv, manifest.json and excluded.csv in {result.workdir}")
    return 0


def _extract(args: argparse.Namespace) -> int:
    from gender_lib import stages

    config = _config(args)
    built = stages.manifest(config, progress=_progress(args))
    print(built.summary())
    result = stages.extract(config, progress=_progress(args))
    print(result.report.summary())
    print(result.summary())
    print(f"manifest and extraction record (extractions/) in {result.workdir}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from gender_lib import stages

    result = stages.train(_config(args), output=args.output, progress=_progress(args))
    print(result.summary())
    print(f"saved {result.path} and {result.path.with_suffix('.json')}")
    if result.replaced:
        print(f"the work folder's current model is now {result.path.name}; it replaces {result.replaced}")
    return 0


def _answers(args: argparse.Namespace) -> int:
    from gender_lib import stages

    result = stages.fit_answers(_config(args), head=args.head_path)
    print(result.summary())
    print(f"saved {result.path} and {result.path.with_suffix('.json')} (gender head unchanged)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from gender_lib import stages

    config = _config(args)
    if args.data_root:
        result = stages.cross_evaluate(config, args.data_root, head=args.head_path, progress=_progress(args))
    elif args.leave_one_source_out:
        held = stages.leave_one_source_out(config, head=args.head_path, progress=_progress(args))
        print(held.summary())
        print(f"report: {held.report}")
        return 0
    else:
        result = stages.evaluate(config, head=args.head_path)
    print(result.summary())
    print(f"reports: {result.reports[0]} and {result.reports[1].name}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    """Each file's lines as soon as it is done (and its CSV rows: see :func:`gender_lib.stages.predict`)."""
    from gender_lib import predict, stages

    def show(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            text, problem = predict.line(row)
            print(terminal_text(text), file=sys.stderr if problem else sys.stdout, flush=True)

    result = stages.predict(
        _config(args),
        args.images,
        head=args.head_path,
        detect=not args.no_detect,
        csv=args.csv,
        output=args.output,
        on_rows=None if args.output else show,  # a Parquet run shows its progress, not each answer
        progress=bool(args.output) and _progress(args),
    )
    if args.csv or args.output or len(result.rows) > 1:
        print(terminal_text(result.summary()), file=sys.stderr if result.exit_code else sys.stdout)
    return result.exit_code


def terminal_text(text: str) -> str:
    """``text`` with control characters (a file name's newline, carriage return or ANSI escape) shown
    as ``\\xNN``, so a name cannot break a line or steer the terminal."""
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]|\n(?!$)", lambda m: f"\\x{ord(m.group()):02x}", text)


def _run(args: argparse.Namespace) -> int:
    from gender_lib import pipeline

    run_dir = pipeline.run(args.config, args.name, only=args.only)
    print(f"all notebooks ran; executed copies, manifest, head and reports in {run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from gender_lib import config as cfg

    p = cfg.paths()
    parser = argparse.ArgumentParser(prog="gender-lib", description="Face gender classification from VGG-Face / dlib descriptors.")
    parser.add_argument("--verbose", action="store_true", help="also show TensorFlow's, Jupyter's and the library's log lines")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_: str, description: str, *flag_groups: str, func: Any) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=description)
        sp.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="also show log lines")
        for name in RETIRED:  # gender_lib 0.1's flags: accepted, then refused saying what replaced them
            sp.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=argparse.SUPPRESS)
        for group in flag_groups:
            _add_config_flags(sp, STAGE_FLAGS[group])
        if flag_groups:
            _add_config_flags(sp, ["seed"])
            sp.add_argument("--config", dest="config_file", default=None, help="take parameters from a pipeline YAML (flags override)")
        sp.set_defaults(func=func)
        return sp

    convert = command(
        "convert",
        "convert vgg_face.mat (or, with --dlib, dlib's network) to a verified ONNX graph",
        f"Convert MatConvNet vgg_face.mat (either published layout) to {p.vggface_model} + .json, checked against a float64 NumPy "
        "reference. With --dlib: convert dlib's face recognition ResNet, checked against dlib on real face chips, into "
        "<cache-dir>/dlib_onnx/ (what the dlib backbone runs; made on first use anyway, reused when already there).",
        func=_convert,
    )
    _add_config_flags(convert, ["vgg_face_mat", "vggface_model"])
    convert.add_argument("--lenient", action="store_true", help="accept networks that are not VGG-Face-shaped")
    convert.add_argument("--dlib", action="store_true", help="convert dlib's face recognition ResNet instead of VGG-Face")
    _add_config_flags(convert, ["cache_dir"])
    convert.add_argument("--force", action="store_true", help="with --dlib: convert again even where a verified conversion is cached")

    manifest = command(
        "manifest",
        "read, clean and split a face folder (no descriptors)",
        "Read a face folder in any supported layout, clean it, split it by person and write manifest.csv to the work folder.",
        "data",
        "where",
        func=_manifest,
    )
    manifest.add_argument("--quiet", action="store_true", help="no progress bars")

    extract = command(
        "extract",
        "build the manifest and extract descriptors",
        "The manifest stage, then every image through the backbone (cached by content and backbone, resumable).",
        "data",
        "backbone",
        "where",
        func=_extract,
    )
    extract.add_argument("--quiet", action="store_true", help="no progress bars")

    train = command(
        "train",
        "train a gender model on a work folder's train split",
        "Fit the frozen head (seeded; early stopping and threshold on the val split), its age groups and P(correct), and save it "
        "with its metadata as the work folder's current model. With --flip-tta true it reads the mirror images too (extracted first, cached).",
        "head",
        "where",
        func=_train,
    )
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("-o", "--output", default=None, help="where the model goes (default: <workdir>/model.npz; a .json beside it)")

    answers = command(
        "answers",
        "fit a trained model's age groups and P(correct) again (its gender head unchanged)",
        "Fit the age-group model on the work folder's train split and P(correct) with its confidence level on the val split "
        "(for --target-accuracy) of a model trained there, and save it in place. train does this itself; this is for a model "
        "trained before, or another target.",
        "where",
        func=_answers,
    )
    answers.add_argument("--head", dest="head_path", default=None, help="the model (default: the work folder's current one)")
    _add_config_flags(answers, ["target_accuracy"])

    evaluate = command(
        "evaluate",
        "score a model on the test split, or on any labelled folder",
        "Evaluate a saved model on the work folder's test split (default: its current model) or, with "
        f"--data-root, on every image of another labelled folder (default: the committed {p.default_head.name}).",
        "where",
        func=_evaluate,
    )
    evaluate.add_argument(
        "--head",
        dest="head_path",
        default=None,
        help=f"the model to evaluate (default: the work folder's current one; with --data-root, {p.default_head.name})",
    )
    evaluate.add_argument("--data-root", default=None, help="a labelled folder in any supported layout (cross-dataset evaluation)")
    evaluate.add_argument(
        "--leave-one-source-out",
        action="store_true",
        help="retrain the model's recipe without each source of the manifest and score it on that source's test split",
    )
    _add_config_flags(evaluate, ["layout", "n_boot", "min_confidence"])
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")

    predict = command(
        "predict",
        "label the faces in photos (files or folders)",
        "Detect faces in each photo and print label, P(female) and box. Folders stand for every image below them. "
        "Problems go to stderr; the exit status is 1 if any file could not be read (2 if no image was found at all).",
        func=_predict,
    )
    predict.add_argument("images", nargs="+", help="image files and/or folders")
    predict.add_argument("--head", dest="head_path", default=None, help=f"a trained model (default: the committed {p.default_head.name})")
    predict.add_argument("--no-detect", action="store_true", help="the images are already face crops: skip detection")
    predict.add_argument("--csv", default=None, help="also write one row per face to this CSV")
    predict.add_argument(
        "--output",
        default=None,
        help="write the rows (the CSV's columns and each file's content key) to this folder of Parquet part files as the run goes, "
        "e.g. results.parquet; a run started again skips the files already there. Shows progress instead of each answer",
    )
    predict.add_argument("--quiet", action="store_true", help="with --output: no progress bars")
    _add_config_flags(predict, ["min_confidence", "min_face", "cache_dir", "ray_address", "device"])

    run = command(
        "run",
        "execute the numbered notebooks in order with papermill",
        "Run notebooks/01..06 with parameters from a YAML file into runs/<name>/; stops at the first failing notebook.",
        func=_run,
    )
    run.add_argument("--config", default=str(p.root / "pipeline.yml"), help="pipeline YAML (default: pipeline.yml)")
    run.add_argument("--name", default=None, help="run name (default: the YAML's name)")
    run.add_argument("--only", nargs="+", default=None, help="run just these notebooks (e.g. 03_train 04_evaluate)")
    return parser


@contextlib.contextmanager
def quiet_native_output(enabled: bool) -> Iterator[None]:
    """Hide what native libraries write to file descriptor 2 (TensorFlow/absl start-up lines,
    ``E0000 ... use_unbounded_threadpool``) while Python's own ``sys.stderr`` keeps working."""
    if not enabled:
        yield
        return
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    warnings.filterwarnings("ignore", message=".*running over TCP without encryption.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="keras")
    try:
        from PIL import Image

        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own size check says it plainly
    except ImportError:  # pragma: no cover
        pass
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    python_stderr = sys.stderr
    try:
        own = python_stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # already redirected (pytest's capture, a notebook)
        own = False
    try:
        os.dup2(devnull, 2)
        if own:
            sys.stderr = open(saved, "w", closefd=False, buffering=1, encoding=python_stderr.encoding, errors="backslashreplace")
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = python_stderr
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line and exit 2 instead of a traceback."""
    import logging

    from gender_lib.errors import GenderLibError
    from gender_lib.fileio import display_path

    try:
        parser = build_parser()
    except GenderLibError as error:  # an environment variable naming a file where a folder is meant
        print(f"gender-lib: error: {terminal_text(str(error))}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    for stream in (sys.stdout, sys.stderr):  # a file name that is not valid UTF-8 never ends the run in an encoding error
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    with quiet_native_output(not verbose):
        # After the redirect, so library warnings reach the user's terminal through sys.stderr.
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
        if not verbose:
            logging.getLogger("papermill").setLevel(logging.WARNING)
        stop = signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() else None
        try:
            return int(args.func(args) or 0)
        except GenderLibError as error:
            print(f"gender-lib {args.command}: error: {terminal_text(display_path(str(error)))}", file=sys.stderr)  # names escaped
            return 2
        except KeyboardInterrupt:
            print(f"gender-lib {args.command}: interrupted ({INTERRUPTED.get(args.command, INTERRUPTED[''])})", file=sys.stderr)
            return 130
        except BrokenPipeError:  # the reader went away (| head -1): stop quietly, as command-line tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        finally:
            if stop is not None:
                signal.signal(signal.SIGTERM, stop)


#: What an interrupted command (Ctrl-C, or SIGTERM, handled alike) kept, by command.
INTERRUPTED = {
    "": "nothing partial was saved; run it again",
    "extract": "the descriptors finished are cached: run it again to resume",
    "predict": "every answer printed above is kept, and in the CSV where one was given; with --output, run it again to resume",
}


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
