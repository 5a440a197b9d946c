#!/usr/bin/env python
"""Compare the head modes (issue 11) on a work folder and write the README's table.

    python scripts/compare_methods.py --workdir runs/levels-person [--methods NAME ...] [--folds 5]

The work folder must hold a manifest (``gender-lib extract``/``manifest``); the level-2 maps
are extracted first where missing (cached; ~13 min for the 29k faces on 2 cores). Every method
trains on the train split, its variant (face alone or flip-averaged) and threshold are chosen on the
validation split, the winner too; the test split is read once, after all choices. Then 5-fold
person-disjoint cross-validation of the baseline and the winner. Writes
``<workdir>/reports/methods.json`` and ``methods.md`` (kept after each step of a long run).
See :mod:`gender_lib.comparison`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from gender_lib import comparison, config
from gender_lib.errors import GenderLibError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="work folder with a manifest and level-2 maps")
    parser.add_argument("--methods", nargs="+", default=list(comparison.METHODS), choices=list(comparison.METHODS), metavar="NAME")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds for the baseline and the winner (0: none)")
    parser.add_argument("--seed", type=int, default=config.DEFAULT.seed)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("absl", "tensorflow", "h5py", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    cfg = config.DEFAULT.replace(workdir=args.workdir, seed=args.seed)
    try:
        comparison.compare(cfg, methods=args.methods, folds=args.folds, progress=False)
    except GenderLibError as error:  # user input (folder, folds): one line, like the CLI
        print(f"compare_methods.py: error: {error}", file=sys.stderr)
        return 2
    print((cfg.workdir() / "reports" / "methods.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
