"""Project paths (with environment overrides) and run parameters.

Nothing here touches the disk or the environment at import time: call :func:`paths`.

* ``GENDER_LIB_ROOT``: project root (default: the checkout this package lives in, else the
  current folder). ``data/``, ``checkpoints/``, ``reports/`` and ``runs/`` live under it.
* ``GENDER_LIB_DATASETS``: the shared real data (default ``<root>/../shared/datasets``).
* ``GENDER_LIB_VGG_FACE_MAT``: the user's ``vgg_face.mat`` (default ``<root>/data/external/vgg_face.mat``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


def project_root() -> Path:
    """The project root: ``$GENDER_LIB_ROOT``, else the source checkout, else the cwd."""
    override = os.environ.get("GENDER_LIB_ROOT")
    if override:
        return Path(override).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "gender_lib").is_dir():
        return checkout
    return Path.cwd().resolve()


@dataclasses.dataclass(frozen=True)
class Paths:
    """Every folder the stages read or write."""

    root: Path
    data: Path
    external: Path
    processed: Path
    checkpoints: Path
    reports: Path
    figures: Path
    runs: Path
    datasets: Path
    vgg_face_mat: Path

    @property
    def manifest(self) -> Path:
        return self.processed / "manifest.csv"

    @property
    def descriptors(self) -> Path:
        return self.processed / "descriptors"

    @property
    def vggface_model(self) -> Path:
        return self.checkpoints / "vggface.keras"


def paths(root: str | os.PathLike[str] | None = None) -> Paths:
    """Resolve all project paths (environment overrides applied)."""
    base = Path(root).resolve() if root is not None else project_root()
    data = base / "data"
    reports = base / "reports"
    datasets = os.environ.get("GENDER_LIB_DATASETS")
    mat = os.environ.get("GENDER_LIB_VGG_FACE_MAT")
    return Paths(
        root=base,
        data=data,
        external=data / "external",
        processed=data / "processed",
        checkpoints=base / "checkpoints",
        reports=reports,
        figures=reports / "figures",
        runs=base / "runs",
        datasets=Path(datasets).expanduser().resolve() if datasets else (base.parent / "shared" / "datasets").resolve(),
        vgg_face_mat=Path(mat).expanduser().resolve() if mat else data / "external" / "vgg_face.mat",
    )
