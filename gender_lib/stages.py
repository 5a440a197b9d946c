"""The chain, one function per stage; notebooks, the CLI, the pipeline and tests all call these.

Each stage takes a :class:`~gender_lib.config.Config` and a work folder (default: the
config's), reads what the previous stage wrote there, writes its own artefacts atomically,
and returns a result whose ``summary()`` is the rounded, stable text a notebook prints. Each runs
in the config's store (:mod:`gender_lib.store`: descriptors, converted networks)::

    manifest   data folder -> <workdir>/manifest.csv, manifest.json, excluded.csv
    extract    manifest -> descriptors in the store, <workdir>/extractions/<output>.json
    train      descriptors -> <workdir>/model.npz + model.json, named in current_model.json
    evaluate   the current model + test split -> <workdir>/reports/evaluation.json|md
    cross_evaluate  a model + any labelled folder -> <workdir>/cross/<name>/, reports/evaluation_<name>.*
    predict    a model + photos -> faces, labels, P(female) (and a CSV)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from gender_lib.config import Config
from gender_lib.errors import GenderLibError, UserFileNotFoundError
from gender_lib.fileio import display_path

log = logging.getLogger(__name__)

MODEL_NAME = "model.npz"  # train's default output (its sidecar model.json beside it)
#: The work folder's current model, named by the last ``train`` (never picked by file time).
MODEL_RECORD = "current_model.json"
#: The age figures reported per source.
AGE_KEYS = ("n", "exact", "one_off", "mae_years")
#: One extraction record per backbone output: ``<workdir>/extractions/<output>.json``.
EXTRACTIONS = "extractions"

Stage = TypeVar("Stage", bound=Callable[..., Any])


class StageError(GenderLibError, ValueError):
    """A stage cannot run with what the work folder holds; the message says what to run first."""


def _stage(function: Stage) -> Stage:
    """Run the stage in the config's store, so every part of it reads and writes the same one."""

    @functools.wraps(function)
    def run(config: Config, *args: Any, **kwargs: Any) -> Any:
        from gender_lib import store

        with store.using(config.cache_dir()):
            return function(config, *args, **kwargs)

    return run  # type: ignore[return-value]


def _workdir(config: Config, workdir: str | os.PathLike[str] | None) -> Path:
    return Path(workdir).expanduser().resolve() if workdir else config.workdir()


# --------------------------------------------------------------------------- manifest


@dataclasses.dataclass
class ManifestResult:
    workdir: Path
    dataset: Any  # gender_lib.manifest.Dataset, as read back from disk
    n_read: int
    cleaning: str
    splits: str

    def summary(self) -> str:
        return f"{self.cleaning}\n\n{self.splits}"

    __str__ = summary


@_stage
def manifest(
    config: Config,
    workdir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    data_root: str | os.PathLike[str] | None = None,
    all_test: bool = False,
) -> ManifestResult:
    """Read, clean and split the config's data folders (seeded sample if asked), write the manifest."""
    from gender_lib import dataset as ds
    from gender_lib.manifest import read_manifest, write_manifest

    work = _workdir(config, workdir)
    roots = [Path(data_root).expanduser().resolve()] if data_root else config.data_roots()
    for root in roots:
        if not root.exists():
            from gender_lib.config import paths

            raise UserFileNotFoundError(
                f"{root}: no such data folder. Leave data_root empty for the embedded sample ({paths().sample}), "
                f"or point it at a face folder in a supported layout (see docs/data.md)"
            )
    d = config.data
    full = ds.build(
        roots, layout=d.layout or None, seed=config.seed, protocol=d.protocol, val=d.val_fraction, test=d.test_fraction, k=d.folds, progress=progress
    )
    data = full if all_test else ds.sample(full, d.sample_size, seed=config.seed)
    if all_test:
        data.table["split"] = "test"
    write_manifest(data, work)
    data = read_manifest(work / "manifest.csv")
    cleaning = ds.cleaning_summary(full.meta["n_read"], full.table, full.excluded)
    return ManifestResult(work, data, int(full.meta["n_read"]), cleaning, ds.split_report(data.table))


# --------------------------------------------------------------------------- extract


@dataclasses.dataclass
class ExtractResult:
    workdir: Path
    backbone: dict[str, Any]
    n_images: int
    dim: int
    report: Any  # features.ExtractReport: cache hits, rate (varies between runs)
    mean_norm: float

    def summary(self) -> str:
        return "\n".join(
            [
                f"backbone: {self.backbone['id']} ({self.backbone['name']}, {self.dim}-d, {self.backbone.get('preprocessing')})",
                f"descriptors: {self.n_images} images x {self.dim} dims; failed to decode: {len(self.report.failures)}",
                f"mean descriptor norm: {self.mean_norm:.3f}",
            ]
        )

    __str__ = summary


@_stage
def extract(config: Config, workdir: str | os.PathLike[str] | None = None, *, progress: bool = True, backbone: Any = None) -> ExtractResult:
    """Embed every manifest image not yet in the store, here or on Ray (``ray_address``); record
    which backbone made them. Images that fail to decode are added to ``excluded.csv`` with the
    reason and left out. ``backbone``: another than the config's (always run here)."""
    import pandas as pd

    from gender_lib import backbones, features
    from gender_lib.fileio import atomic_write, write_json
    from gender_lib.manifest import absolute_paths, read_manifest

    work = _workdir(config, workdir)
    data = read_manifest(work / "manifest.csv")
    net = backbone or backbones.from_config(config)
    cache = features.cache_for(net)
    keys = data.table["sha256"].tolist()
    description = net.describe()
    if config.backbone.ray_address and backbone is None:
        from gender_lib import distributed

        report = distributed.extract_ray(
            absolute_paths(data),
            keys,
            description,
            cache,
            address=config.backbone.ray_address,
            batch_size=config.backbone.batch_size,
            progress=progress,
            vggface_path=config.vggface_model(),
        )
    else:
        report = features.extract(absolute_paths(data), keys, net, cache, batch_size=config.backbone.batch_size, progress=progress)
    log.info(report.summary())
    if report.failures:
        root = Path(data.meta["root"])
        failed = pd.DataFrame(report.failures).assign(kind="extraction")
        failed["path"] = [str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else p for p in failed["path"]]
        excluded = pd.concat([data.excluded, failed], ignore_index=True).drop_duplicates()
        atomic_write(work / "excluded.csv", lambda tmp: excluded.to_csv(tmp, index=False))
    kept = data.table[data.table["sha256"].map(cache.__contains__)]
    x = cache.get(kept["sha256"].tolist())
    for output, other in extraction_records(work).items():  # a work folder's records are of one network and its manifest
        if not backbones.same_network(other["backbone"], description) or other.get("manifest_sha256") != data.meta.get("manifest_sha256"):
            (work / EXTRACTIONS / f"{output}.json").unlink()
            log.warning("%s: the %s rows of %s are not this work folder's any more (another network or manifest)", work, output, other["backbone"]["id"])
    record = {"backbone": description, "images": int(len(kept)), "failures": len(report.failures), "manifest_sha256": data.meta.get("manifest_sha256")}
    write_json(work / EXTRACTIONS / f"{backbones.output_of(description)}.json", record)
    return ExtractResult(work, description, int(len(kept)), int(x.shape[1]), report, float(np.linalg.norm(x, axis=1).mean()) if len(x) else 0.0)


def extraction_records(work: Path) -> dict[str, dict[str, Any]]:
    """The work folder's extraction records by backbone output (``extractions/<output>.json``)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((work / EXTRACTIONS).glob("*.json"))}


@dataclasses.dataclass
class Inputs:
    """A work folder's rows of one backbone output: the manifest rows that have them, the array,
    the extraction record and the manifest's metadata."""

    table: Any
    x: np.ndarray
    record: dict[str, Any]
    manifest_meta: dict[str, Any]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of one split; y is 0 (M) / 1 (F)."""
        from gender_lib.metrics import labels_from_genders

        rows = (self.table["split"] == name).to_numpy()
        return self.x[rows], labels_from_genders(self.table["gender"][rows])


@_stage
def load_descriptors(
    config: Config, workdir: str | os.PathLike[str] | None = None, output: str = "descriptor", backbone: dict[str, Any] | None = None
) -> Inputs:
    """A work folder's rows of the backbone ``output`` (:data:`gender_lib.backbones.OUTPUTS`).

    ``backbone`` (a model's recorded backbone) must be the one they were extracted with.
    Raises :class:`StageError` (nothing extracted, manifest changed, store elsewhere) or
    :class:`~gender_lib.features.CacheMismatchError` (another backbone)."""
    from gender_lib import features
    from gender_lib.manifest import read_manifest

    work = _workdir(config, workdir)
    data = read_manifest(work / "manifest.csv")
    info_path = work / EXTRACTIONS / f"{output}.json"
    if not info_path.is_file():
        done = ", ".join(extraction_records(work)) or "nothing"
        raise StageError(
            f"{info_path}: no {output} rows were extracted for this manifest (done: {done}); run notebooks/02_extract.ipynb or `gender-lib extract`"
        )
    info = json.loads(info_path.read_text())
    if info.get("manifest_sha256") != data.meta.get("manifest_sha256"):
        raise StageError(f"{work}: the manifest changed after extraction ({info_path.name} is for another manifest); run extraction again")
    if backbone is not None and backbone.get("id") != info["backbone"]["id"]:
        raise features.CacheMismatchError(
            f"the model was trained on {backbone.get('id')} rows but {work} was extracted with {info['backbone']['id']}; "
            "extract again with that backbone or evaluate a model trained on it"
        )
    used = info["backbone"]
    cache = features.open_cache(used["id"], int(used["dim"]))
    table = data.table[data.table["sha256"].map(cache.__contains__)].reset_index(drop=True)
    if len(table) != int(info["images"]):
        raise StageError(
            f"{cache.dir} holds descriptors for {len(table)} of the {info['images']} images {work} was extracted with: "
            "is cache_dir (or GENDER_LIB_CACHE) the one used at extraction? Run extraction again with this cache to fill it"
        )
    return Inputs(table, cache.get(table["sha256"].tolist()), info, data.meta)


@_stage
def inputs(config: Config, work: Path, output: str, *, backbone: dict[str, Any] | None = None, progress: bool = True) -> Inputs:
    """:func:`load_descriptors`, extracting the ``output`` rows first where the work folder holds
    another output of the same network (``backbone``'s, else its own): said at warning level, since
    a stage that extracts is never silent about it; cached by image, so only the first time costs."""
    from gender_lib import backbones
    from gender_lib.features import CacheMismatchError

    records = extraction_records(work)
    base = backbone or (next(iter(records.values()))["backbone"] if records else None)
    ours = [r for r in records.values() if base is not None and backbones.same_network(r["backbone"], base)]
    if records and not ours:
        raise CacheMismatchError(
            f"the model was trained on {base.get('id')} rows but {work} was extracted with {next(iter(records.values()))['backbone']['id']}, "
            "another network or preprocessing; extract again with that backbone or evaluate a model trained on it"
        )
    if output not in records and ours:
        log.warning("%s: extracting the %s output (the work folder holds %s)", work, output, ", ".join(records))
        extract(config, work, progress=progress, backbone=backbones.from_description(base, config.vggface_model(), output=output))
    return load_descriptors(config, work, output, backbone)


# --------------------------------------------------------------------------- train


@dataclasses.dataclass
class TrainResult:
    model: Any  # the saved estimator, loaded back (gender_lib.modeling)
    path: Path
    replaced: str | None = None  # the work folder's previous current model, where this one replaces another

    @property
    def meta(self) -> dict[str, Any]:
        return self.model.meta_

    @property
    def history(self) -> dict[str, list[float]]:
        return self.meta["history"]

    def best_epoch_line(self) -> str:
        h = self.history
        best = int(h["best_epoch"][0]) - 1
        return (
            f"at the best epoch: train accuracy {h['accuracy'][best]:.3f}, val accuracy {h['val_accuracy'][best]:.3f}, "
            f"train loss {h['loss'][best]:.3f}, val loss {h['val_loss'][best]:.3f}"
        )

    def summary(self) -> str:
        return self.model.summary()

    __str__ = summary


@_stage
def train(config: Config, workdir: str | os.PathLike[str] | None = None, *, output: str | os.PathLike[str] | None = None, progress: bool = True) -> TrainResult:
    """Fit the frozen head on the rows it reads (the descriptor, and of the mirror image with
    ``flip_tta``; extracted first where missing), threshold on val, then its age groups and
    P(correct); save it (default ``<workdir>/model.npz``) and name it the work folder's current model."""
    from gender_lib import modeling

    work = _workdir(config, workdir)
    path = Path(output) if output else work / MODEL_NAME
    if path.suffix != ".npz":  # before minutes of training, not after
        raise StageError(f"{path}: a model is saved as .npz (its .json sidecar beside it); name one with -o ...npz")
    estimator = modeling.estimator_for(config)
    data = inputs(config, work, estimator.backbone_output, progress=progress)
    estimator.fit(*data.split("train"), *data.split("val"), progress=progress)
    _fit_answers(config, estimator, data)
    saved = estimator.save(path, _train_meta(config, estimator, data))
    model = modeling.load(saved)
    return TrainResult(model, saved, _record_model(work, saved, model.kind))


def _fit_answers(config: Config, estimator: Any, data: Inputs) -> None:
    """Age groups and P(correct); on a validation split too small for a level, the shipped model's level."""
    train_rows, val_rows = (data.table["split"] == "train").to_numpy(), (data.table["split"] == "val").to_numpy()
    table = data.table
    estimator.fit_answers(
        data.x[train_rows],
        table["age_group"][train_rows],
        *data.split("val"),
        table["group"][val_rows],
        config.head.target_accuracy,
        table["source"][val_rows],
        _shipped_level(),
    )


def _shipped_level() -> float | None:
    """The committed model's level (the fallback of a validation split too small to choose one), if there is one."""
    from gender_lib.config import paths

    side = paths().default_head.with_suffix(".json")
    try:
        return float(json.loads(side.read_text())["answers"]["min_confidence"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@_stage
def fit_answers(config: Config, workdir: str | os.PathLike[str] | None = None, *, head: str | os.PathLike[str] | None = None) -> TrainResult:
    """Fit a trained model's age-group and correctness models again on the work folder's train and
    val splits, its gender head unchanged, and save it in place (for another ``target_accuracy``).
    The work folder must hold the manifest the model was trained on (:class:`StageError`
    otherwise: its val split would not be the one the threshold was chosen on)."""
    from gender_lib import modeling

    work = _workdir(config, workdir)
    head_path = _resolve_head(config, head, lambda: current_model(work))
    model = modeling.load(head_path)
    data = inputs(config, work, model.backbone_output, backbone=model.meta_["backbone"], progress=False)
    if (model.meta_.get("manifest") or {}).get("sha256") != data.manifest_meta.get("manifest_sha256"):
        raise StageError(f"{head_path} was trained on another manifest than {work}'s: fit its answers in the work folder it was trained in")
    _fit_answers(config, model, data)
    saved = model.save(head_path, {k: v for k, v in model.meta_.items() if k not in ("format", "weights_sha256", "weights_bytes")})
    return TrainResult(modeling.load(saved), saved)


def _train_meta(config: Config, estimator: Any, data: Inputs) -> dict[str, Any]:
    """What a model's sidecar records besides the model itself: backbone, split, val metrics and the baseline's."""
    from gender_lib import metrics
    from gender_lib.modeling.mlp import logistic_baseline

    (x_train, y_train), (x_val, y_val) = data.split("train"), data.split("val")
    val_metrics = metrics.classification_metrics(y_val, estimator.p_female(x_val), estimator.threshold_)
    baseline = logistic_baseline(estimator.descriptors(x_train), y_train, seed=config.seed)
    baseline_val = metrics.classification_metrics(y_val, baseline.predict_proba(estimator.descriptors(x_val))[:, 1], 0.5)
    meta = data.manifest_meta
    return {
        "backbone": data.record["backbone"],
        "descriptor_dim": int(data.x.shape[1]),
        "manifest": {
            "sha256": meta.get("manifest_sha256"),
            "protocol": meta.get("protocol"),
            "leaky": meta.get("leaky"),
            "seed": meta.get("seed"),
            "layout": meta.get("layout"),
            "data": Path(meta.get("root", "")).name,
            "sample_size": meta.get("sample_size", 0),
        },
        "counts": {s: int((data.table["split"] == s).sum()) for s in ("train", "val", "test")},
        "val_metrics": {k: val_metrics[k] for k in ("accuracy", "balanced_accuracy", "roc_auc", "ece")} | {"macro_f1": val_metrics["macro"]["f1"]},
        "baseline_val_metrics": {"accuracy": baseline_val["accuracy"], "macro_f1": baseline_val["macro"]["f1"], "roc_auc": baseline_val["roc_auc"]},
    }


def _record_model(work: Path, path: Path, kind: str) -> str | None:
    """Name ``path`` the current model of ``work`` (``current_model.json``); returns what it replaces, if another."""
    from gender_lib.fileio import write_json

    record_path = work / MODEL_RECORD
    previous = json.loads(record_path.read_text()) if record_path.is_file() else None
    path = path.resolve()
    shown = path.relative_to(work.resolve()).as_posix() if path.is_relative_to(work.resolve()) else str(path)
    write_json(record_path, {"path": shown, "kind": kind})
    if previous and (previous.get("path") != shown or previous.get("kind") != kind):
        return f"{previous.get('path')} (kind {previous.get('kind')})"
    return None


def current_model(work: Path) -> Path:
    """The current model of ``work``: the one its ``current_model.json`` names (written by every
    ``train``); :class:`StageError` where no model was trained there."""
    record = work / MODEL_RECORD
    if not record.is_file():
        raise StageError(
            f"{work}: no model was trained here ({MODEL_RECORD} is missing); run notebooks/03_train.ipynb or `gender-lib train`, or name one with --head"
        )
    return (work / json.loads(record.read_text())["path"]).resolve()


# --------------------------------------------------------------------------- evaluate


@dataclasses.dataclass
class EvaluateResult:
    results: dict[str, Any]
    reports: tuple[Path, Path]
    excluded: int = 0
    excluded_list: Path | None = None

    @property
    def head_report(self) -> dict[str, Any]:
        return self.results["models"]["mlp head"]

    def summary(self) -> str:
        from gender_lib import metrics

        lines = [line for name, report in self.results["models"].items() for line in metrics.summary_lines(report, name)]
        if self.results.get("selective"):
            lines += metrics.selective_lines(self.results["selective"])
        if self.results.get("age"):
            lines += metrics.age_lines(self.results["age"])
        lines += metrics.ethnicity_lines(self.results.get("ethnicity"))
        if self.excluded_list is not None:
            lines.append(
                f"left out: {self.excluded} images that could not be used (corrupt, missing, unlabelled or duplicate); listed in {self.excluded_list.name}"
            )
        return "\n".join(lines)

    __str__ = summary


def _results(config: Config, model: Any, data: Inputs, rows: np.ndarray, title: str, meta: dict[str, Any], baseline: bool) -> dict[str, Any]:
    """What ``evaluate`` and ``cross_evaluate`` report of ``model`` on ``data``'s ``rows``: both
    protocols (every face answered; selective), the age groups, per-face predictions, and (with
    ``baseline``) a logistic regression refitted on the train split, thresholded on val."""
    from gender_lib import metrics
    from gender_lib.modeling.mlp import choose_threshold, logistic_baseline

    n_boot, seed = config.evaluation.n_boot, model.seed
    table, x = data.table[rows], data.x[rows]
    y = metrics.labels_from_genders(table["gender"])
    said = model.answer(x, config.evaluation.min_confidence)
    p = said.p_female
    models = {"mlp head": metrics.evaluate(y, p, model.threshold_, table, n_boot=n_boot, seed=seed)}
    split = data.table["split"].to_numpy()
    if baseline and (split == "train").any() and (split == "val").any():
        y_all, xb = metrics.labels_from_genders(data.table["gender"]), model.descriptors(data.x)
        lr = logistic_baseline(xb[split == "train"], y_all[split == "train"], seed=seed)
        threshold = choose_threshold(y_all[split == "val"], lr.predict_proba(xb[split == "val"])[:, 1])
        models["logistic regression"] = metrics.evaluate(y, lr.predict_proba(xb[rows])[:, 1], threshold, table, n_boot=n_boot, seed=seed)
    correct = (p >= model.threshold_).astype(int) == y
    selective = metrics.selective_metrics(correct, said.answered, said.p_correct, said.level, table, n_boot, seed) if model.confidence_ else None
    age = metrics.age_metrics(table["age_group"], said.age_p, table.get("age"), table.get("group"), n_boot, seed) if said.age_p is not None else None
    if age and table["source"].nunique() > 1:  # each source's own figures (UTKFace's ages are in years, Adience's in ranges)
        sources = table["source"].to_numpy()
        age["by_source"] = {
            s: {k: v for k, v in metrics.age_metrics(table["age_group"][rows], said.age_p[rows], table["age"][rows], n_boot=0).items() if k in AGE_KEYS}
            for s in sorted(set(sources))
            if (rows := sources == s).any()
        }
    ethnicity = metrics.by_ethnicity(correct, said.answered, table, n_boot, seed)
    predictions = {
        "path": table["path"].tolist(),
        "gender": table["gender"].tolist(),
        "p_female": p.round(6).tolist(),
        "label": said.label.tolist(),
        "p_correct": [None if q != q else round(float(q), 6) for q in said.p_correct],
        "age_group": said.age_group,
    }
    return {
        "title": title,
        "meta": meta,
        "models": models,
        "selective": selective,
        "age": age,
        "ethnicity": ethnicity,
        "predictions": predictions,
        "root": data.manifest_meta.get("root"),
    }


def _resolve_head(config: Config, head: str | os.PathLike[str] | None, fallback: Any) -> Path:
    """The model named by ``head``, else by the config's ``head_path``, else ``fallback()``."""
    return Path(head or config.paths.head_path or fallback()).expanduser().resolve()


@_stage
def evaluate(config: Config, workdir: str | os.PathLike[str] | None = None, *, head: str | os.PathLike[str] | None = None) -> EvaluateResult:
    """Score a model on the work folder's **test** split, beside a logistic-regression baseline.

    The model defaults to the work folder's current one (:func:`current_model`): a model trained
    elsewhere may have seen these test people. The threshold is the model's (chosen on validation
    at training time); the baseline is refitted on the same train split (seconds). The rows the
    model reads are extracted first where missing (said at warning level).
    """
    from gender_lib import metrics, modeling

    work = _workdir(config, workdir)
    head_path = _resolve_head(config, head, lambda: current_model(work))
    model = modeling.load(head_path)
    recorded = model.meta_["backbone"]
    data = inputs(config, work, model.backbone_output, backbone=recorded, progress=False)
    if (model.meta_.get("manifest") or {}).get("sha256") != data.manifest_meta.get("manifest_sha256"):
        message = (
            f"{head_path} was trained on another manifest than {work}'s (the split may have changed since): its test split may hold people the model trained on"
        )
        if (work / MODEL_RECORD).is_file() and head_path == current_model(work):
            raise StageError(message + "; train again (notebook 03 or `gender-lib train`)")
        log.warning(message)
    test = (data.table["split"] == "test").to_numpy()
    if not test.any():
        raise StageError(f"{work}: the manifest has no test split")
    m = data.manifest_meta
    meta = {
        "head": head_path.name,
        "kind": model.kind,
        "backbone": recorded["id"],
        "protocol": m.get("protocol"),
        "leaky_split": m.get("leaky"),
        "threshold_from": "validation split",
    }
    results = _results(config, model, data, test, f"{head_path.name} on {Path(m['root']).name} (test split)", meta, baseline=True)
    return EvaluateResult(results, metrics.write_reports(results, work / "reports"))


@_stage
def cross_evaluate(
    config: Config,
    data_root: str | os.PathLike[str],
    workdir: str | os.PathLike[str] | None = None,
    *,
    head: str | os.PathLike[str] | None = None,
    progress: bool = True,
    backbone: Any = None,
) -> EvaluateResult:
    """Score a model (default: the committed one) on every image of another labelled folder.

    Runs the manifest and extract stages on that folder (in ``<workdir>/cross/<name>``) with the
    model's own backbone; images that cannot be used are counted and listed, never dropped silently.
    """
    import shutil

    from gender_lib import backbones, metrics, modeling
    from gender_lib.config import paths
    from gender_lib.manifest import read_manifest

    data_root = Path(data_root).expanduser().resolve()
    name = display_path(data_root.stem if data_root.is_file() else data_root.name)  # report names: valid UTF-8
    head_path = _resolve_head(config, head, lambda: paths().default_head)
    model = modeling.load(head_path)
    recorded = model.meta_["backbone"]
    work = _workdir(config, workdir)
    target = work / "cross" / name
    built = manifest(config, target, progress=progress, data_root=data_root, all_test=True)
    extract(config, target, progress=progress, backbone=backbone or backbones.from_description(recorded, config.vggface_model()))
    data = load_descriptors(config, target, model.backbone_output, backbone=recorded)
    meta = {"head": head_path.name, "backbone": recorded["id"], "data": name, "threshold_from": "validation split of the training data"}
    results = _results(config, model, data, np.ones(len(data.table), bool), f"{head_path.name} on {name} (all images)", meta, baseline=False)
    excluded = read_manifest(target / "manifest.csv").excluded
    counted = excluded[excluded.reindex(columns=["kind"])["kind"].fillna("") != "note"]  # notes are about images that were kept
    reports_dir = work / "reports"
    reports = metrics.write_reports(results, reports_dir, name=f"evaluation_{name}")
    listed = reports_dir / f"evaluation_{name}_excluded.csv"
    shutil.copyfile(target / "excluded.csv", listed) if (target / "excluded.csv").is_file() else listed.write_text("path,reason,detail\n")
    log.info("%s: %d images read, %d scored", name, built.n_read, len(data.table))
    return EvaluateResult(results, reports, int(len(counted)), listed)


@dataclasses.dataclass
class HeldOutResult:
    """:func:`leave_one_source_out`: per held-out source, what a model trained without it says of it."""

    sources: dict[str, dict[str, Any]]
    split: str
    report: Path

    def summary(self) -> str:
        lines = [f"leave one source out ({self.split} split of the held-out source; level chosen without it):"]
        for name, r in self.sources.items():
            lines.append(
                f"  {name:<8} n={r['n']}: every face {r['accuracy_all']:.3f}; at level {r['level']:.3f} coverage {r['coverage']:.3f}, "
                f"accuracy on answered {'-' if r['accuracy'] != r['accuracy'] else format(r['accuracy'], '.3f')}; ECE of P(correct) {r['ece_p_correct']:.3f}"
            )
        return "\n".join(lines)

    __str__ = summary


@_stage
def leave_one_source_out(
    config: Config, workdir: str | os.PathLike[str] | None = None, *, head: str | os.PathLike[str] | None = None, split: str = "test", progress: bool = True
) -> HeldOutResult:
    """For each source of the work folder's manifest (its ``source`` column: adience, imdb, wiki,
    utkface, ...), train the recipe of a model (default: the work folder's current one; its head
    settings, age groups, P(correct) and level rule) on the other sources' train and val splits,
    and score it on the held-out source's ``split``: how the model and its promised accuracy fare
    on faces of a source it has never seen. Writes ``<workdir>/reports/leave_one_source_out_<split>.json``.
    Choose with ``split="val"``; report ``test``. :class:`StageError` for a manifest of one source."""
    from gender_lib import metrics, modeling
    from gender_lib.fileio import write_json

    work = _workdir(config, workdir)
    shipped = modeling.load(_resolve_head(config, head, lambda: current_model(work)))
    config = dataclasses.replace(config, head=shipped.config, seed=shipped.seed)
    data = inputs(config, work, shipped.backbone_output, backbone=shipped.meta_["backbone"], progress=progress)
    source = data.table["source"].astype(str).to_numpy()
    if len(set(source)) < 2:
        raise StageError(f"{work}: the manifest has one source ({source[0] if len(source) else 'none'}); leaving it out leaves nothing to train on")
    out: dict[str, dict[str, Any]] = {}
    for held in sorted(set(source)):
        keep = source != held
        rest = Inputs(data.table[keep].reset_index(drop=True), data.x[keep], data.record, data.manifest_meta)
        model = modeling.estimator_for(config).fit(*rest.split("train"), *rest.split("val"), progress=False)
        _fit_answers(config, model, rest)
        rows = (source == held) & (data.table["split"] == split).to_numpy()
        said = model.answer(data.x[rows], config.evaluation.min_confidence)
        correct = (said.p_female >= model.threshold_).astype(int) == metrics.labels_from_genders(data.table["gender"][rows])
        answered = said.answered
        out[held] = {
            "n": int(rows.sum()),
            "accuracy_all": float(correct.mean()),
            "level": float(said.level),
            "coverage": float(answered.mean()),
            "accuracy": float(correct[answered].mean()) if answered.any() else float("nan"),
            "ece_p_correct": metrics.calibration_error(correct, said.p_correct),
            "target": float(config.head.target_accuracy),
        }
        log.info("held out %s: %s", held, out[held])
    report = write_json(work / "reports" / f"leave_one_source_out_{split}.json", {"split": split, "sources": out})
    return HeldOutResult(out, split, report)


def read_evaluation(config: Config, workdir: str | os.PathLike[str] | None = None, name: str = "evaluation") -> dict[str, Any]:
    """The results :func:`evaluate` wrote to ``<workdir>/reports/<name>.json``."""
    path = _workdir(config, workdir) / "reports" / f"{name}.json"
    if not path.is_file():
        raise StageError(f"{path}: no evaluation here yet; run notebooks/04_evaluate.ipynb or `gender-lib evaluate` first")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- predict


@_stage
def predict(
    config: Config,
    inputs: Sequence[str | os.PathLike[str]],
    *,
    head: str | os.PathLike[str] | None = None,
    detect: bool = True,
    csv: str | os.PathLike[str] | None = None,
    predictor: Any = None,
    on_rows: Callable[[list[dict[str, Any]]], Any] | None = None,
    output: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> Any:
    """Label the faces in photos; folders stand for the images below them (model default: the
    committed one). Returns a :class:`gender_lib.predict.PredictResult`.

    Each file's rows are written to ``csv`` (checked before any work) and passed to ``on_rows`` as
    soon as they are made, so a run that is interrupted, or whose CSV cannot be written on, has
    already shown and kept every answer it finished. With a Parquet ``output`` folder, or with
    ``ray_address`` set (the files then stream through Ray Data), the run is keyed by content and
    resumable: :func:`gender_lib.predict.run`."""
    from gender_lib import predict as pr

    paths, skipped = pr.expand_inputs(inputs)
    if not paths and not any(s.problem for s in skipped):
        raise StageError(f"no images found in {', '.join(map(display_path, inputs))} (looked for {', '.join(sorted(pr.IMAGE_EXTENSIONS))})")
    if output or config.backbone.ray_address:
        return pr.run(config, paths, skipped, head=head, detect=detect, csv=csv, output=output, predictor=predictor, on_rows=on_rows, progress=progress)
    sink = pr.CsvRows(csv) if csv else None
    rows: list[dict[str, Any]] = []
    try:
        if predictor is None:  # ONNX Runtime's threads spin between passes for one photo (latency), not for many (they would take the cores)
            from gender_lib.converters import onnx_graph

            onnx_graph.use(config.backbone.device)
            predictor = pr.Predictor(
                head or config.paths.head_path or None,
                config.vggface_model(),
                min_confidence=config.evaluation.min_confidence,
                min_face=config.backbone.min_face,
                spin=len(paths) == 1,
            )
        for path in paths:
            _emit(predictor.rows(path, detect), rows, sink, on_rows)
        _emit(pr.skipped_rows(skipped), rows, sink, on_rows)
    finally:
        if sink is not None:
            sink.close()
    return pr.PredictResult(rows, sink.path if sink else None)


def _emit(made: list[dict[str, Any]], rows: list[dict[str, Any]], sink: Any, on_rows: Any) -> None:
    """Keep a file's rows: into the CSV first (an answer shown is in it), then shown, even where the CSV fails."""
    rows += made
    try:
        if sink is not None:
            sink.write(made)
    finally:
        if on_rows is not None:
            on_rows(made)
