"""Every default in one place: project paths (with environment overrides) and the run config.

Nothing here touches the disk or the environment at import time: call :func:`paths`.

Environment overrides (all optional):

* ``GENDER_LIB_ROOT``: project root (default: the checkout this package lives in, else the
  current folder). Read-only assets live under it: ``notebooks/``, ``checkpoints/`` (the
  committed head), ``data/sample/`` (the embedded faces).
* ``GENDER_LIB_WORKDIR``: where stages write by default (manifest, descriptors index, head,
  reports); default ``<root>/data/processed``. The test suite points it at a temporary folder
  so that running the notebooks never touches tracked files.
* ``GENDER_LIB_CACHE``: the store (default ``<root>/data/cache/descriptors``): the descriptor
  cache, the converted dlib network, the detector copy and the file hashes, shared by every
  work folder and run because all of it is content-addressed or checked (:mod:`gender_lib.store`).
* ``GENDER_LIB_DATASETS``: the full shared data (default ``<root>/../shared/datasets``).
* ``GENDER_LIB_VGG_FACE_MAT``: the user's ``vgg_face.mat`` (default ``<root>/data/external/vgg_face.mat``).

:class:`Config` holds every run parameter in sections (data, backbone, head, evaluation,
paths). Its field names are unique across sections, so the flat view (:meth:`Config.flat`)
is what notebook ``parameters`` cells, ``pipeline.yml`` and CLI flags use; an unknown or
misspelt key is a :class:`~gender_lib.errors.ConfigError` naming it, and a retired one
(:data:`RETIRED`) says what replaced it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import numbers
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from gender_lib.errors import ConfigError

#: The model every reader uses unless another is named: a frozen head on dlib's descriptors of the
#: face and of its mirror image, flip-averaged (docs/results.md, "The shipped model").
DEFAULT_HEAD_NAME = "dlib_gender_model.npz"


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
    """Every folder the stages read or write, resolved."""

    root: Path
    data: Path
    sample: Path
    workdir: Path
    cache: Path
    checkpoints: Path
    runs: Path
    datasets: Path
    vgg_face_mat: Path

    @property
    def default_head(self) -> Path:
        """The committed default model: predict, the widget and cross-dataset evaluation use it by default."""
        return self.checkpoints / DEFAULT_HEAD_NAME

    @property
    def vggface_model(self) -> Path:
        return self.checkpoints / "vggface.onnx"


def _env_path(name: str, default: Path, folder: bool = True) -> Path:
    """``$name`` as a path (where set), else ``default``; a variable naming a file where a folder is
    meant is a :class:`ConfigError` saying so."""
    value = os.environ.get(name)
    path = Path(value).expanduser().resolve() if value else default
    if value and folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{name}={value}: is a file, not a folder; point it at a folder (or unset it)")
    return path


def paths(root: str | os.PathLike[str] | None = None) -> Paths:
    """Resolve all project paths (environment overrides applied)."""
    base = Path(root).resolve() if root is not None else project_root()
    data = base / "data"
    return Paths(
        root=base,
        data=data,
        sample=data / "sample",
        workdir=_env_path("GENDER_LIB_WORKDIR", data / "processed"),
        cache=_env_path("GENDER_LIB_CACHE", data / "cache" / "descriptors"),
        checkpoints=base / "checkpoints",
        runs=base / "runs",
        datasets=_env_path("GENDER_LIB_DATASETS", (base.parent / "shared" / "datasets").resolve()),
        vgg_face_mat=_env_path("GENDER_LIB_VGG_FACE_MAT", data / "external" / "vgg_face.mat", folder=False),
    )


# --------------------------------------------------------------------------- the run config

#: The allowed values of each choice parameter: the CLI's choices, the notebooks' comments and
#: :meth:`Config.validate` all read these types (:meth:`Config.choices`).
Layout = Literal["", "combined", "adience", "utkface", "folders", "csv"]
Protocol = Literal["person", "original"]
BackboneName = Literal["dlib", "vggface", "auto"]
Align = Literal["chip", "crop", "resize"]
VggFaceLayer = Literal["fc7", "fc8"]

LAYOUTS = get_args(Layout)
BACKBONES = get_args(BackboneName)

_KINDS = "the frozen head is the one model kind (multi-level features and fine-tuning measured no gain: docs/results.md; experiments/kinds.py keeps them)"
#: Parameters of gender_lib 0.1 that 0.2 retired, with what to do instead (a config naming one is an error saying so).
RETIRED = {
    "engine": "inference always runs on ONNX Runtime; to extract on Ray, set ray_address (local: a local Ray instance)",
    "precision": "bfloat16 measured slower than float32 (0.91x); VGG-Face runs in float32",
    "mode": _KINDS,
    "finetune_levels": _KINDS,
    "finetune_epochs": _KINDS,
    "finetune_learning_rate": _KINDS,
}


def _param(default: Any, help: str) -> Any:
    """A config field with its help text (the CLI's ``--help`` and the docs read it from here)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which faces, and how they are split."""

    data_root: str = _param(
        "",
        "face folder or label CSV in any supported layout, or several separated by : (each source split alike); default: the embedded sample data/sample",
    )
    layout: Layout = _param("", "force a layout (default: detect)")
    sample_size: int = _param(0, "seeded subset of the data (0 = every image)")
    protocol: Protocol = _param("person", "person-disjoint split, or the original work's leaky image-level split (for comparison only)")
    val_fraction: float = _param(0.15, "share of people in the validation split")
    test_fraction: float = _param(0.15, "share of people in the test split")
    folds: int = _param(5, "number of person-disjoint folds in the manifest's fold column")


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """The descriptor network and how faces are prepared for it."""

    backbone: BackboneName = _param("dlib", "descriptor network")
    dlib_align: Align = _param(
        "chip", "dlib: 5-point chip in the face box detected in each crop, 5-point chip in the whole crop as the box (no detection), or plain resize"
    )
    ray_address: str = _param(
        "",
        "where extraction and predict run: empty, in this process; local, a local Ray instance; auto or ray://host:10001, a Ray cluster (distributed extra)",
    )
    min_face: int = _param(
        16, "the narrowest face box searched for in a photo, px (16: big photos at full resolution; larger values read big photos scaled down, faster)"
    )
    device: Literal["auto", "cpu", "cuda"] = _param(
        "auto", "where ONNX Runtime runs the networks for predict: auto (CUDA where onnxruntime-gpu's provider is installed, else the CPU), cpu, or cuda"
    )
    vggface_layer: VggFaceLayer = _param("fc7", "vggface descriptor layer")
    batch_size: int = _param(32, "images per backbone batch")


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """The MLP head on the frozen descriptor (the original work's Dense 16, Dense 16, Dropout 0.4,
    sigmoid) and its training. ``flip_tta``: read each face twice, as it is and mirrored, train on
    both views and average P(female) over them.
    """

    widths: tuple[int, ...] = _param((16, 16), "hidden layer widths of the head")
    dropout: float = _param(0.4, "dropout before the output")
    l2: float = _param(0.0, "L2 weight penalty")
    learning_rate: float = _param(0.001, "Adam learning rate")
    head_batch_size: int = _param(64, "training batch size")
    epochs: int = _param(100, "maximum epochs (early stopping on validation loss)")
    patience: int = _param(8, "epochs without improvement before stopping")
    class_balance: bool = _param(True, "weight classes to balance them (true/false)")
    flip_tta: bool = _param(False, "read each face and its mirror image: train on both, average P(female) over them (true/false)")
    target_accuracy: float = _param(
        0.985, "accuracy on answered faces that the confidence level (min_confidence) is chosen for, on the validation split at training"
    )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "widths": list(self.widths)}


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation and the face grid."""

    n_boot: int = _param(1000, "bootstrap resamples (over people) for the 95%% intervals")
    n_faces: int = _param(30, "faces in the prediction grid")
    min_confidence: float = _param(
        -1.0, "answer a face where P(correct) is at least this, else say uncertain (-1: the level the model chose on validation; 0: always answer)"
    )


@dataclasses.dataclass(frozen=True)
class PathConfig:
    """Where a run reads and writes; empty strings mean the defaults of :func:`paths`."""

    workdir: str = _param("", "work folder: manifest, extraction record, head, reports (default: $GENDER_LIB_WORKDIR, else data/processed)")
    cache_dir: str = _param("", "the store: descriptor cache, converted networks, detector copy (default: $GENDER_LIB_CACHE, else data/cache/descriptors)")
    head_path: str = _param("", "the head to use (default: the work folder's for its own test split, the committed model elsewhere)")
    vgg_face_mat: str = _param("", "the MatConvNet vgg_face.mat (default: $GENDER_LIB_VGG_FACE_MAT, else data/external/vgg_face.mat)")
    vggface_model: str = _param("", "where the converted VGG-Face graph goes (default: checkpoints/vggface.onnx)")
    example_image: str = _param("", "example photo (default: a face of the embedded sample)")


SECTIONS = ("data", "backbone", "head", "evaluation", "paths")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every run parameter. ``seed`` drives the split, the sample, the head and the bootstrap."""

    seed: int = 0
    data: DataConfig = DataConfig()
    backbone: BackboneConfig = BackboneConfig()
    head: HeadConfig = HeadConfig()
    evaluation: EvalConfig = EvalConfig()
    paths: PathConfig = PathConfig()

    # ---- the flat view used by notebooks, pipeline.yml and the CLI

    @staticmethod
    def field_sections() -> dict[str, str]:
        """Flat parameter name -> section name (``""`` for top-level fields)."""
        out = {"seed": ""}
        for section in SECTIONS:
            for field in dataclasses.fields(_section_type(section)):
                if field.name in out:  # pragma: no cover - guarded by a test
                    raise RuntimeError(f"config field {field.name} is defined twice")
                out[field.name] = section
        return out

    def flat(self) -> dict[str, Any]:
        """Every parameter by its flat name (tuples as lists, as YAML and papermill give them)."""
        out: dict[str, Any] = {}
        for name, section in self.field_sections().items():
            value = getattr(getattr(self, section), name) if section else getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, values: Mapping[str, Any] | None = None, *, source: str = "parameters", **more: Any) -> Config:
        """A copy with flat ``values`` applied; unknown names and wrong types are :class:`ConfigError`."""
        values = {**(values or {}), **more}
        sections = self.field_sections()
        retired = [k for k in values if k in RETIRED]
        if retired:
            raise ConfigError(f"{source}: {'; '.join(f'{k!r} was retired in gender_lib 0.2: {RETIRED[k]}' for k in retired)}")
        unknown = [k for k in values if k not in sections]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, sections, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(f"{source}: unknown parameter {', '.join(hints)}; known: {', '.join(sorted(sections))}")
        updates: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for key, value in values.items():
            section = sections[key]
            current = getattr(getattr(self, section), key) if section else getattr(self, key)
            value = _coerce(key, value, current, source)
            (updates.setdefault(section, {}) if section else top)[key] = value
        changed = {s: dataclasses.replace(getattr(self, s), **v) for s, v in updates.items()}
        config = dataclasses.replace(self, **top, **changed)
        config.validate(source)
        return config

    @staticmethod
    def choices() -> dict[str, tuple[Any, ...]]:
        """Flat name -> allowed values, for every parameter typed with a ``Literal``."""
        return dict(_choices())

    @staticmethod
    def help() -> dict[str, str]:
        """Flat name -> help text (the CLI's ``--help``), from each field's metadata."""
        out = {"seed": "seed of the split, sample, head and bootstrap"}
        for section in SECTIONS:
            out |= {f.name: f.metadata["help"] for f in dataclasses.fields(_section_type(section))}
        return out

    def validate(self, source: str = "parameters") -> None:
        """Values outside their allowed set are a :class:`ConfigError` naming the parameter."""
        flat = self.flat()
        for name, allowed in self.choices().items():
            value = flat[name]
            if value not in allowed:
                raise ConfigError(f"{source}: {name} must be one of {[a for a in allowed if a]}, got {value!r}")
        positive = {
            "batch_size": self.backbone.batch_size,
            "min_face": self.backbone.min_face,
            "head_batch_size": self.head.head_batch_size,
            "epochs": self.head.epochs,
            "patience": self.head.patience,
            "n_boot": self.evaluation.n_boot,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{source}: {name} must be at least 1, got {value}")
        if self.data.sample_size < 0:
            raise ConfigError(f"{source}: sample_size must be 0 (all images) or positive, got {self.data.sample_size}")
        d = self.data
        if not (0 < d.val_fraction < 1 and 0 < d.test_fraction < 1 and d.val_fraction + d.test_fraction < 1):
            raise ConfigError(f"{source}: val_fraction and test_fraction must be in (0, 1) and sum to less than 1, got {d.val_fraction} and {d.test_fraction}")
        if d.folds < 2:
            raise ConfigError(f"{source}: folds must be at least 2, got {d.folds}")
        if self.head.learning_rate <= 0:
            raise ConfigError(f"{source}: learning_rate must be positive, got {self.head.learning_rate}")
        if not 0.5 < self.head.target_accuracy <= 1:
            raise ConfigError(f"{source}: target_accuracy must be in (0.5, 1], got {self.head.target_accuracy}")
        if not (self.evaluation.min_confidence == -1 or 0 <= self.evaluation.min_confidence <= 1):
            raise ConfigError(f"{source}: min_confidence must be -1 (the model's level) or in [0, 1], got {self.evaluation.min_confidence}")
        if not 0 <= self.head.dropout < 1:
            raise ConfigError(f"{source}: dropout must be in [0, 1), got {self.head.dropout}")
        if not self.head.widths or any(w < 1 for w in self.head.widths):
            raise ConfigError(f"{source}: widths must be a non-empty list of positive layer widths, got {list(self.head.widths)}")

    # ---- resolved locations

    def workdir(self) -> Path:
        return Path(self.paths.workdir).expanduser().resolve() if self.paths.workdir else paths().workdir

    def cache_dir(self) -> Path | None:
        """The store (:mod:`gender_lib.store`) ``cache_dir`` names, or None where unset: the one in
        use (``store.using(config.cache_dir())`` enters the right one either way)."""
        return Path(self.paths.cache_dir).expanduser().resolve() if self.paths.cache_dir else None

    def data_roots(self) -> list[Path]:
        """The data folders (``data_root`` split at ``os.pathsep``), else the embedded sample."""
        parts = [p for p in self.data.data_root.split(os.pathsep) if p.strip()]
        return [Path(p.strip()).expanduser().resolve() for p in parts] or [paths().sample]

    def reports_dir(self) -> Path:
        return self.workdir() / "reports"

    def vgg_face_mat(self) -> Path:
        return Path(self.paths.vgg_face_mat).expanduser().resolve() if self.paths.vgg_face_mat else paths().vgg_face_mat

    def vggface_model(self) -> Path:
        return Path(self.paths.vggface_model).expanduser().resolve() if self.paths.vggface_model else paths().vggface_model


def from_namespace(namespace: Mapping[str, Any], source: str = "notebook parameters") -> Config:
    """The config of a notebook: :data:`DEFAULT` with every parameter the namespace defines
    (its ``parameters`` cell, as papermill may have overridden it).

    A parameter papermill injected (``-p NAME VALUE``: the cell it runs, headed ``# Parameters``,
    is in the kernel's input history ``In``) that is no Config field, or not one this notebook
    declares, is a :class:`ConfigError` naming it and the nearest known one: papermill itself would
    only log it, and the run would go on without it."""
    import ast

    def assigned(cell: str) -> list[str]:
        return [t.id for node in ast.parse(cell).body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)]

    known = Config.field_sections()
    cells = [cell for cell in namespace.get("In", []) if isinstance(cell, str)]
    declared = {name for cell in cells if cell.startswith("# Parameters (") for name in assigned(cell)}  # the notebook's own parameters cell
    for name in (name for cell in cells if cell.startswith("# Parameters\n") for name in assigned(cell)):  # what papermill injected
        if name not in known:
            DEFAULT.replace({name: None}, source=f"{source} (papermill -p)")  # unknown or retired: the error names the nearest
        if declared and name not in declared:
            raise ConfigError(f"{source} (papermill -p): this notebook does not declare {name!r}; it declares {', '.join(sorted(declared))}")
    return DEFAULT.replace({k: v for k, v in namespace.items() if k in known}, source=source)


def load_yaml_parameters(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``parameters`` mapping of a pipeline YAML (``name``, ``notebooks``, ``parameters``),
    every key checked against :class:`Config`."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no pipeline config here (copy pipeline.yml and edit it)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("parameters", {}), dict):
        raise ConfigError(f"{path}: expected a mapping with 'name', 'notebooks' and a 'parameters' mapping")
    extra = sorted(set(raw) - {"name", "notebooks", "parameters"})
    if extra:
        raise ConfigError(f"{path}: unknown top-level key {', '.join(map(repr, extra))}; expected name, notebooks, parameters")
    parameters = dict(raw.get("parameters") or {})
    DEFAULT.replace(parameters, source=str(path))  # unknown keys and bad values fail here
    return {"name": raw.get("name"), "notebooks": raw.get("notebooks"), "parameters": parameters}


@functools.cache
def _choices() -> dict[str, tuple[Any, ...]]:
    """:meth:`Config.choices`, worked out once: ``typing.get_type_hints`` compiles every annotation
    string (this module's annotations are strings), about 1 ms a call, and the CLI and every
    :meth:`Config.replace` ask."""
    out: dict[str, tuple[Any, ...]] = {}
    for section in ("", *SECTIONS):
        kind = Config if not section else _section_type(section)
        for name, hint in typing.get_type_hints(kind).items():
            if typing.get_origin(hint) is Literal:
                out[name] = get_args(hint)
    return out


def _section_type(section: str) -> type:
    return {"data": DataConfig, "backbone": BackboneConfig, "head": HeadConfig, "evaluation": EvalConfig, "paths": PathConfig}[section]


def _coerce(key: str, value: Any, current: Any, source: str) -> Any:
    """``value`` converted to the type of the default ``current``, or a clear error."""
    given = value
    try:
        if isinstance(current, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if isinstance(current, tuple):
            if isinstance(value, str):  # papermill -p passes "[64, 64]" as text; YAML reads it (also "64, 64" and "64")
                import yaml

                text = value.strip()
                try:
                    parsed = yaml.safe_load(text if text.startswith("[") else f"[{text}]")
                except yaml.YAMLError:
                    raise ValueError(value) from None
                if not isinstance(parsed, list):
                    raise ValueError(value)
                value = parsed
            items = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, bool) or not isinstance(v, numbers.Real) or float(v) != int(v) for v in items):
                raise ValueError(value)  # true, 64.7 or "wide" are not layer widths
            return tuple(int(v) for v in items)
        if isinstance(current, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, str):
            return "" if value is None else str(value)
    except (TypeError, ValueError):
        hint = (
            f"; a list of whole numbers such as {list(current)} (papermill: -y '{key}: {list(current)}' or -p {key} '{list(current)}')"
            if isinstance(current, tuple)
            else ""
        )
        raise ConfigError(f"{source}: {key} must be {type(current).__name__}-like (default {current!r}), got {given!r}{hint}") from None
    return value  # pragma: no cover


DEFAULT = Config()
