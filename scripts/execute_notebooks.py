"""Re-execute the committed notebooks in place: the default run on the embedded sample.

    .venv/bin/python scripts/execute_notebooks.py [02_extract 03_train ...]

This is how the outputs that ``pytest --nbval`` compares are made (``make notebooks``). Every
stage writes into a scratch folder (``GENDER_LIB_WORKDIR``, ``GENDER_LIB_CACHE``), removed at the
end, so the checkout changes only in the notebooks' outputs. Notebooks run in order (later ones
read what earlier ones wrote); with names, only those are saved, but their predecessors still run.
Widget state is not stored: a static render (nbconvert HTML, a repository viewer) then shows each
widget's text fallback instead of an empty embed that needs JavaScript from the network.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    import nbformat
    from nbclient import NotebookClient

    from gender_lib.fileio import write_text
    from gender_lib.pipeline import NOTEBOOKS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", choices=[[], *NOTEBOOKS], metavar="NAME", help=f"notebooks to save (default all: {' '.join(NOTEBOOKS)})")
    args = parser.parse_args(argv)
    save = set(args.names or NOTEBOOKS)
    last = max(NOTEBOOKS.index(name) for name in save)
    with tempfile.TemporaryDirectory(prefix="gender_lib-notebooks-") as scratch:
        os.environ |= {
            "GENDER_LIB_WORKDIR": str(Path(scratch) / "work"),
            "GENDER_LIB_CACHE": str(Path(scratch) / "cache"),
            "IPYTHONDIR": str(ROOT / ".ipython"),
        }
        for name in NOTEBOOKS[: last + 1]:
            path = ROOT / "notebooks" / f"{name}.ipynb"
            notebook = nbformat.read(path, as_version=4)
            print(f"executing {path.relative_to(ROOT)}", flush=True)
            NotebookClient(
                notebook, timeout=1800, kernel_name="python3", record_timing=False, store_widget_state=False, resources={"metadata": {"path": str(path.parent)}}
            ).execute()
            if name in save:
                write_text(path, nbformat.writes(notebook) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
