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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line and exit 2 instead of a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"gender-lib {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
