"""The one folder where the package keeps what it writes outside a work folder.

Under it: the descriptor cache (``<backbone id>/``), the verified conversions of dlib's network
(``dlib_onnx/``) and of the face detector (``centerface/``), and the remembered file hashes
(``file_hashes.json``). Everything there is content-addressed or checked on load, so one store
serves every work folder and run.

It is ``$GENDER_LIB_CACHE`` (default ``<root>/data/cache/descriptors``), or the folder a stage
was given (``cache_dir`` in :class:`~gender_lib.config.Config`, ``--cache-dir`` on the CLI): each
stage runs inside :func:`using`, so every part of it reads the same folder (:func:`root`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

_ROOT: list[list[Path]] = []  # the folders :func:`using` has entered, innermost last (one process-wide stack:
# stages run one at a time; threads of one stage share its store)


def root() -> Path:
    """The store's folder: the innermost :func:`using`'s, else ``$GENDER_LIB_CACHE`` (or its default)."""
    if _ROOT:
        return _ROOT[-1][0]
    from gender_lib import config

    return config.paths().cache


@contextlib.contextmanager
def using(folder: str | os.PathLike[str] | None) -> Iterator[Path]:
    """Run the body with ``folder`` as the store (None: the default); nothing is created until written."""
    entry = [Path(folder).expanduser().resolve() if folder else root()]
    _ROOT.append(entry)
    try:
        yield entry[0]
    finally:
        _ROOT.remove(entry)  # its own entry, whatever another thread entered since
