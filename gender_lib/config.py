"""Every default in one place: project paths (with environment overrides) and the run config.

Nothing here touches the disk or the environment at import time: call :func:`paths`.

Environment overrides (all optional):

* ``GENDER_LIB_ROOT``: project root (default: the checkout this package lives in, else the
  current folder). Read-only assets live under it: ``notebooks/``, ``checkpoints/`` (the
  committed head), ``data/sample/`` (the embedded faces).
* ``GENDER_LIB_WORKDIR``: where stages write by default (manifest, descriptors index, head,
  reports); default ``<root>/data/processed``. The test suite points it at a temporary folder
  so that running the notebooks never touches tracked files.
* ``GENDER_LIB_CACHE``: the descriptor cache root (default ``<root>/data/cache/descriptors``),
  shared by every workdir and run because it is content-addressed.
* ``GENDER_LIB_DATASETS``: the full shared data (default ``<root>/../shared/datasets``).
* ``GENDER_LIB_VGG_FACE_MAT``: the user's ``vgg_face.mat`` (default ``<root>/data/external/vgg_face.mat``).

:class:`Config` holds every run parameter in sections (data, backbone, head, evaluation,
paths). Its field names are unique across sections, so the flat view (:meth:`Config.flat`)
is what notebook ``parameters`` cells, ``pipeline.yml`` and CLI flags use; an unknown or
misspelt key is a :class:`~gender_lib.errors.ConfigError` naming it.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gender_lib.errors import ConfigError

#: The model every reader uses unless another is named: the winner of the README's comparison of
#: head modes (mode finetune, flip-averaged; trained by ``make results``).
DEFAULT_HEAD_NAME = "dlib_gender_finetuned.npz"
#: The frozen-descriptor head (a few KB; trained by ``make results``): NumPy-only, so
#: ``gender-lib predict --head checkpoints/dlib_gender_head.keras`` answers without importing TensorFlow.
FROZEN_HEAD_NAME = "dlib_gender_head.keras"


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
    external: Path
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
    def frozen_head(self) -> Path:
        """The committed frozen-descriptor head (NumPy forward pass: no TensorFlow at prediction)."""
        return self.checkpoints / FROZEN_HEAD_NAME

    @property
    def vggface_model(self) -> Path:
        return self.checkpoints / "vggface.keras"

    @property
    def shared_faces(self) -> Path:
        """The full shared face folder (29k faces), where present."""
        return self.datasets / "combined" / "aligned"


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


def paths(root: str | os.PathLike[str] | None = None) -> Paths:
    """Resolve all project paths (environment overrides applied)."""
    base = Path(root).resolve() if root is not None else project_root()
    data = base / "data"
    return Paths(
        root=base,
        data=data,
        sample=data / "sample",
        external=data / "external",
        workdir=_env_path("GENDER_LIB_WORKDIR", data / "processed"),
        cache=_env_path("GENDER_LIB_CACHE", data / "cache" / "descriptors"),
        checkpoints=base / "checkpoints",
        runs=base / "runs",
        datasets=_env_path("GENDER_LIB_DATASETS", (base.parent / "shared" / "datasets").resolve()),
        vgg_face_mat=_env_path("GENDER_LIB_VGG_FACE_MAT", data / "external" / "vgg_face.mat"),
    )


# --------------------------------------------------------------------------- the run config

LAYOUTS = ("", "combined", "adience", "utkface", "folders", "csv")
BACKBONES = ("dlib", "vggface", "auto")
MODES = ("frozen", "features", "finetune")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which faces, and how they are split."""

    data_root: str = ""  # empty: the embedded sample data/sample; the full shared folder is one parameter away
    layout: str = ""  # empty: detect
    sample_size: int = 0  # 0: every image of data_root
    protocol: str = "person"  # person | original (leaky image-level split, for comparison only)
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    folds: int = 5


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """The descriptor network and how faces are prepared for it."""

    backbone: str = "dlib"  # dlib | vggface | auto
    dlib_align: str = "chip"  # chip (5-point alignment) | resize
    engine: str = "keras"  # keras (dlib's network converted and verified) | dlib (dlib's own code, for comparison) | ray (keras on a Ray cluster)
    ray_address: str = ""  # engine ray: an existing cluster's address; empty starts a local Ray instance
    precision: str = "float32"  # float32 | bfloat16 (vggface only)
    vggface_layer: str = "fc7"  # fc7 | fc8
    batch_size: int = 32


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """The MLP head (the original work's Dense 16, Dense 16, Dropout 0.4, sigmoid) and its training.

    ``mode``: what the head learns from. ``frozen``: the 128-d descriptor. ``features``: the
    descriptor plus the pooled activations of the last three residual levels (768-d), frozen.
    ``finetune``: the head first, then the network's top ``finetune_levels`` residual levels and
    fc layer trained with it at ``finetune_learning_rate`` (relative to each weight tensor's RMS;
    the head at ``learning_rate`` / 10),
    on cached level-2 maps with mirror-image augmentation, early-stopped on validation loss.
    Modes other than frozen average P(female) over the face and its mirror image when ``flip_tta``.
    """

    mode: str = "frozen"  # frozen | features | finetune

    widths: tuple[int, ...] = (16, 16)
    dropout: float = 0.4
    l2: float = 0.0
    learning_rate: float = 0.001
    head_batch_size: int = 64
    epochs: int = 100
    patience: int = 8
    class_balance: bool = True
    flip_tta: bool = True  # features/finetune: average P(female) over the face and its mirror image
    finetune_levels: int = 1  # finetune: the top residual levels trained (1: the last, 256 channels at 2x2; 2: also the 4x4 one)
    finetune_epochs: int = 6  # finetune: epochs over the train split after the head's own training
    finetune_learning_rate: float = 1e-3  # finetune: Adam's step for the network's levels, relative to each weight tensor's RMS

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "widths": list(self.widths)}


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation and the face grid."""

    n_boot: int = 1000
    n_faces: int = 30


@dataclasses.dataclass(frozen=True)
class PathConfig:
    """Where a run reads and writes; empty strings mean the defaults of :func:`paths`."""

    workdir: str = ""  # manifest, extraction record, head.keras, reports/ (default $GENDER_LIB_WORKDIR or data/processed)
    cache_dir: str = ""  # descriptor cache (default $GENDER_LIB_CACHE or data/cache/descriptors)
    head_path: str = ""  # the head to read: empty = the workdir's head for its own test split, the committed head elsewhere
    vgg_face_mat: str = ""  # empty: $GENDER_LIB_VGG_FACE_MAT or data/external/vgg_face.mat
    vggface_model: str = ""  # empty: checkpoints/vggface.keras
    example_image: str = ""  # empty: a face of the embedded sample (notebook 06)


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

    def validate(self, source: str = "parameters") -> None:
        """Values outside their allowed set are a :class:`ConfigError` naming the parameter."""
        checks = [
            ("layout", self.data.layout, LAYOUTS),
            ("protocol", self.data.protocol, ("person", "original")),
            ("backbone", self.backbone.backbone, BACKBONES),
            ("dlib_align", self.backbone.dlib_align, ("chip", "resize")),
            ("engine", self.backbone.engine, ("keras", "dlib", "ray")),
            ("precision", self.backbone.precision, ("float32", "bfloat16")),
            ("vggface_layer", self.backbone.vggface_layer, ("fc7", "fc8")),
            ("mode", self.head.mode, MODES),
            ("finetune_levels", self.head.finetune_levels, (1, 2)),
        ]
        for name, value, allowed in checks:
            if value not in allowed:
                raise ConfigError(f"{source}: {name} must be one of {[a for a in allowed if a]}, got {value!r}")
        positive = {
            "batch_size": self.backbone.batch_size,
            "head_batch_size": self.head.head_batch_size,
            "epochs": self.head.epochs,
            "patience": self.head.patience,
            "n_boot": self.evaluation.n_boot,
            "finetune_epochs": self.head.finetune_epochs,
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
        for name in ("learning_rate", "finetune_learning_rate"):
            if getattr(self.head, name) <= 0:
                raise ConfigError(f"{source}: {name} must be positive, got {getattr(self.head, name)}")
        if self.head.mode != "frozen" and self.backbone.backbone != "dlib":
            raise ConfigError(f"{source}: mode {self.head.mode!r} needs backbone 'dlib' (its inner levels), got {self.backbone.backbone!r}")
        if not 0 <= self.head.dropout < 1:
            raise ConfigError(f"{source}: dropout must be in [0, 1), got {self.head.dropout}")
        if not self.head.widths or any(w < 1 for w in self.head.widths):
            raise ConfigError(f"{source}: widths must be a non-empty list of positive layer widths, got {list(self.head.widths)}")

    # ---- resolved locations

    def resolved_paths(self) -> Paths:
        return paths()

    def workdir(self) -> Path:
        return Path(self.paths.workdir).expanduser().resolve() if self.paths.workdir else paths().workdir

    def cache_dir(self) -> Path:
        return Path(self.paths.cache_dir).expanduser().resolve() if self.paths.cache_dir else paths().cache

    def data_root(self) -> Path:
        return Path(self.data.data_root).expanduser().resolve() if self.data.data_root else paths().sample

    def reports_dir(self) -> Path:
        return self.workdir() / "reports"

    def vgg_face_mat(self) -> Path:
        return Path(self.paths.vgg_face_mat).expanduser().resolve() if self.paths.vgg_face_mat else paths().vgg_face_mat

    def vggface_model(self) -> Path:
        return Path(self.paths.vggface_model).expanduser().resolve() if self.paths.vggface_model else paths().vggface_model


def from_namespace(namespace: Mapping[str, Any], source: str = "notebook parameters") -> Config:
    """The config of a notebook: :data:`DEFAULT` with every parameter the namespace defines
    (its ``parameters`` cell, as papermill may have overridden it)."""
    known = Config.field_sections()
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
