"""The chain, one function per stage; notebooks, the CLI, the pipeline and tests all call these.

Each stage takes a :class:`~gender_lib.config.Config` and a work folder (default: the
config's), reads what the previous stage wrote there, writes its own artefacts atomically,
and returns a result whose ``summary()`` is the rounded, stable text a notebook prints::

    manifest   data folder -> <workdir>/manifest.csv, manifest.json, excluded.csv
    extract    manifest -> descriptors in the shared cache, <workdir>/extractions/<output>.json
    train      the rows its estimator reads -> <workdir>/model.npz + model.json, named in current_model.json
    evaluate   the current model + test split -> <workdir>/reports/evaluation.json|md
    cross_evaluate  head + any labelled folder -> <workdir>/cross/<name>/, reports/evaluation_<name>.*
    predict    head + photos -> faces, labels, P(female) (and a CSV)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gender_lib.config import Config
from gender_lib.errors import GenderLibError, UserFileNotFoundError
from gender_lib.fileio import display_path

log = logging.getLogger(__name__)

MODEL_NAME = "model.npz"  # train's default output (any kind; its sidecar model.json beside it)
#: The work folder's current model, named by the last ``train`` (never picked by file time).
MODEL_RECORD = "current_model.json"
#: One extraction record per backbone output: ``<workdir>/extractions/<output>.json``.
EXTRACTIONS = "extractions"
FEW_PHOTOS = 20  # without ONNX Runtime, up to this many photos run on dlib's own engine, without TensorFlow (see stages.predict)


class StageError(GenderLibError, ValueError):
    """A stage cannot run with what the work folder holds; the message says what to run first."""


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


def manifest(
    config: Config,
    workdir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    data_root: str | os.PathLike[str] | None = None,
    all_test: bool = False,
) -> ManifestResult:
    """Read, clean and split the config's data folder (seeded sample if asked), write the manifest."""
    from gender_lib import dataset as ds
    from gender_lib.manifest import read_manifest, write_manifest

    work = _workdir(config, workdir)
    root = Path(data_root).expanduser().resolve() if data_root else config.data_root()
    if not root.exists():
        from gender_lib.config import paths

        raise UserFileNotFoundError(
            f"{root}: no such data folder. Leave data_root empty for the embedded sample ({paths().sample}), "
            f"or point it at a face folder in a supported layout (see docs/data.md)"
        )
    full = ds.build(
        root,
        layout=config.data.layout or None,
        seed=config.seed,
        protocol=config.data.protocol,
        val=config.data.val_fraction,
        test=config.data.test_fraction,
        k=config.data.folds,
        progress=progress,
    )
    data = full if all_test else ds.sample(full, config.data.sample_size, seed=config.seed)
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


def extract(config: Config, workdir: str | os.PathLike[str] | None = None, *, progress: bool = True, backbone: Any = None) -> ExtractResult:
    """Embed every manifest image not yet in the cache; record which backbone made them.

    Images that fail to decode are added to ``excluded.csv`` with the reason and left out.
    """
    import pandas as pd

    from gender_lib import backbones, features
    from gender_lib.fileio import atomic_write, write_json
    from gender_lib.manifest import absolute_paths, read_manifest

    work = _workdir(config, workdir)
    data = read_manifest(work / "manifest.csv")
    net = backbone or backbones.from_config(config)
    try:
        cache = features.cache_for(net, config.cache_dir())
        keys = data.table["sha256"].tolist()
        description = net.describe()
        if config.backbone.engine == "ray" and backbone is None:
            from gender_lib import distributed

            report = distributed.extract_ray(
                absolute_paths(data),
                keys,
                description,
                cache,
                address=config.backbone.ray_address or None,
                batch_size=config.backbone.batch_size,
                progress=progress,
                backbone_kwargs={"cache_root": str(config.cache_dir())},
            )
        else:
            report = features.extract(absolute_paths(data), keys, net, cache, batch_size=config.backbone.batch_size, progress=progress)
    finally:
        if backbone is None:
            net.close()
    log.info(report.summary())
    if report.failures:
        root = Path(data.meta["root"])
        failed = pd.DataFrame(report.failures)
        failed["path"] = [str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else p for p in failed["path"]]
        excluded = pd.concat([data.excluded, failed], ignore_index=True).drop_duplicates()
        atomic_write(work / "excluded.csv", lambda tmp: excluded.to_csv(tmp, index=False))
    kept = data.table[data.table["sha256"].map(cache.__contains__)]
    x = cache.get(kept["sha256"].tolist())
    from gender_lib.backbones import output_of, same_network

    for output, other in extraction_records(work).items():  # a work folder's records are of one network and its manifest
        if not same_network(other["backbone"], description) or other.get("manifest_sha256") != data.meta.get("manifest_sha256"):
            (work / EXTRACTIONS / f"{output}.json").unlink()
            log.warning("%s: the %s rows of %s are not this work folder's any more (another network or manifest)", work, output, other["backbone"]["id"])
    record = {"backbone": description, "images": int(len(kept)), "failures": len(report.failures), "manifest_sha256": data.meta.get("manifest_sha256")}
    write_json(work / EXTRACTIONS / f"{output_of(description)}.json", record)
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


def load_descriptors(
    config: Config, workdir: str | os.PathLike[str] | None = None, output: str = "descriptor", backbone: dict[str, Any] | None = None
) -> Inputs:
    """A work folder's rows of the backbone ``output`` (:data:`gender_lib.backbones.OUTPUTS`).

    ``backbone`` (a model's recorded backbone) must be the one they were extracted with.
    Raises :class:`StageError` (nothing extracted, manifest changed, cache elsewhere) or
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
    cache = features.open_cache(used["id"], int(used["dim"]), config.cache_dir())
    table = data.table[data.table["sha256"].map(cache.__contains__)].reset_index(drop=True)
    if len(table) != int(info["images"]):
        raise StageError(
            f"{cache.dir} holds descriptors for {len(table)} of the {info['images']} images {work} was extracted with: "
            "is cache_dir (or GENDER_LIB_CACHE) the one used at extraction? Run extraction again with this cache to fill it"
        )
    return Inputs(table, cache.get(table["sha256"].tolist()), info, data.meta)


def inputs(config: Config, work: Path, output: str, *, backbone: dict[str, Any] | None = None, progress: bool = True) -> Inputs:
    """:func:`load_descriptors`, extracting the ``output`` rows first where the work folder holds
    another output of the same network (``backbone``'s, else its own): said at warning level, since
    a stage that extracts is never silent about it; cached by image, so only the first time costs."""
    from gender_lib import backbones

    records = extraction_records(work)
    base = backbone or (next(iter(records.values()))["backbone"] if records else None)
    ours = [r for r in records.values() if base is not None and backbones.same_network(r["backbone"], base)]
    if records and not ours:
        from gender_lib.features import CacheMismatchError

        raise CacheMismatchError(
            f"the model was trained on {base.get('id')} rows but {work} was extracted with {next(iter(records.values()))['backbone']['id']}, "
            "another network or preprocessing; extract again with that backbone or evaluate a model trained on it"
        )
    if output not in records and ours:
        log.warning("%s: extracting the %s output (the work folder holds %s)", work, output, ", ".join(records))
        net = backbones.from_description(base, output=output, engine=backbones.local_engine(config.backbone.engine), cache_root=config.cache_dir())
        try:
            extract(config, work, progress=progress, backbone=net)
        finally:
            net.close()
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


def train(config: Config, workdir: str | os.PathLike[str] | None = None, *, output: str | os.PathLike[str] | None = None, progress: bool = True) -> TrainResult:
    """Fit the estimator ``config.head.mode`` names (:data:`gender_lib.modeling.KINDS`) on the rows of
    the backbone output it reads (extracted first where missing), threshold on val, save it
    (default ``<workdir>/model.npz``) and name it the work folder's current model."""
    from gender_lib import modeling

    work = _workdir(config, workdir)
    path = Path(output) if output else work / MODEL_NAME
    if path.suffix != ".npz":  # before minutes of training, not after
        raise StageError(f"{path}: a model is saved as .npz (its .json sidecar beside it); name one with -o ...npz")
    estimator = modeling.estimator_for(config, cache_root=config.cache_dir())
    data = inputs(config, work, estimator.backbone_output, progress=progress)
    estimator.fit(*data.split("train"), *data.split("val"), progress=progress)
    _fit_answers(config, estimator, data)
    saved = estimator.save(path, _train_meta(config, estimator, data))
    model = modeling.load(saved, config.cache_dir())
    return TrainResult(model, saved, _record_model(work, saved, model.kind))


def _fit_answers(config: Config, estimator: Any, data: Inputs) -> None:
    train_rows, val_rows = (data.table["split"] == "train").to_numpy(), (data.table["split"] == "val").to_numpy()
    estimator.fit_answers(
        data.x[train_rows], data.table["age_group"][train_rows], *data.split("val"), data.table["group"][val_rows], config.head.target_accuracy
    )


def fit_answers(config: Config, workdir: str | os.PathLike[str] | None = None, *, head: str | os.PathLike[str] | None = None) -> TrainResult:
    """Fit a trained model's age-group and correctness models (:meth:`~gender_lib.modeling.Estimator.fit_answers`)
    again on the work folder's train and val splits, its gender head unchanged, and save it in place.

    For a model trained before these existed, or with another ``target_accuracy``. The work folder
    must hold the manifest the model was trained on (:class:`StageError` otherwise: its val split
    would not be the one the threshold was chosen on)."""
    from gender_lib import modeling
    from gender_lib.backbones import output_of

    work = _workdir(config, workdir)
    head_path = _resolve_head(config, head, lambda: current_model(work))
    model = modeling.load(head_path, cache_root=config.cache_dir())
    recorded = model.meta_["backbone"]
    data = inputs(config, work, output_of(recorded), backbone=recorded, progress=False)
    if (model.meta_.get("manifest") or {}).get("sha256") != data.manifest_meta.get("manifest_sha256"):
        raise StageError(f"{head_path} was trained on another manifest than {work}'s: fit its answers in the work folder it was trained in")
    _fit_answers(config, model, data)
    meta = {k: v for k, v in model.meta_.items() if k not in ("format", "weights_sha256", "weights_bytes")}
    saved = model.save(head_path, meta)
    return TrainResult(modeling.load(saved, config.cache_dir()), saved)


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
        if self.excluded_list is not None:
            lines.append(
                f"left out: {self.excluded} images that could not be used (corrupt, missing, unlabelled or duplicate); listed in {self.excluded_list.name}"
            )
        return "\n".join(lines)

    __str__ = summary


def _score(model: Any, table: Any, x: np.ndarray, seed: int, n_boot: int, min_confidence: float = -1.0) -> dict[str, Any]:
    """Both protocols (every face answered; selective), the age groups, and per-face predictions."""
    from gender_lib import metrics

    y = metrics.labels_from_genders(table["gender"])
    said = model.answer(x, min_confidence)
    p = said.p_female
    out = {
        "report": metrics.evaluate(y, p, model.threshold_, table, n_boot=n_boot, seed=seed),
        "predictions": {
            "path": table["path"].tolist(),
            "gender": table["gender"].tolist(),
            "p_female": p.round(6).tolist(),
            "label": said.label.tolist(),
            "p_correct": [None if q != q else round(float(q), 6) for q in said.p_correct],
            "age_group": said.age_group,
        },
        "selective": None,
        "age": None,
    }
    correct = (p >= model.threshold_).astype(int) == y
    if model.confidence_ is not None:
        out["selective"] = metrics.selective_metrics(correct, said.answered, said.p_correct, said.level, table, n_boot=n_boot, seed=seed)
    if said.age_p is not None and "age_group" in table:
        out["age"] = metrics.age_metrics(table["age_group"], said.age_p, table.get("age"), table.get("group"), n_boot=n_boot, seed=seed)
    return out


def _resolve_head(config: Config, head: str | os.PathLike[str] | None, fallback: Any) -> Path:
    """The model named by ``head``, else by the config's ``head_path``, else ``fallback()``."""
    return Path(head or config.paths.head_path or fallback()).expanduser().resolve()


def evaluate(config: Config, workdir: str | os.PathLike[str] | None = None, *, head: str | os.PathLike[str] | None = None) -> EvaluateResult:
    """Score a model on the work folder's **test** split, beside a logistic-regression baseline.

    The model defaults to the work folder's current one (:func:`current_model`): a model trained
    elsewhere may have seen these test people. The threshold is the model's (chosen on validation
    at training time); the baseline is refitted on the same train split (seconds). The rows of the
    backbone output the model reads are extracted first where missing (said at warning level).
    """
    from gender_lib import metrics, modeling
    from gender_lib.backbones import output_of
    from gender_lib.modeling.mlp import choose_threshold, logistic_baseline

    work = _workdir(config, workdir)
    head_path = _resolve_head(config, head, lambda: current_model(work))
    model = modeling.load(head_path, cache_root=config.cache_dir())
    recorded = model.meta_["backbone"]
    data = inputs(config, work, output_of(recorded), backbone=recorded, progress=False)
    table, x, manifest_meta = data.table, data.x, data.manifest_meta
    if (model.meta_.get("manifest") or {}).get("sha256") != manifest_meta.get("manifest_sha256"):
        message = (
            f"{head_path} was trained on another manifest than {work}'s (the split may have changed since): its test split may hold people the model trained on"
        )
        if (work / MODEL_RECORD).is_file() and head_path == current_model(work):
            raise StageError(message + "; train again (notebook 03 or `gender-lib train`)")
        log.warning(message)
    split = table["split"].to_numpy()
    test, train_rows, val_rows = split == "test", split == "train", split == "val"
    if not test.any():
        raise StageError(f"{work}: the manifest has no test split")
    seed = model.seed
    scored = _score(model, table[test], x[test], seed, config.evaluation.n_boot, config.evaluation.min_confidence)
    results: dict[str, Any] = {
        "title": f"{head_path.name} on {Path(manifest_meta['root']).name} (test split)",
        "meta": {
            "head": head_path.name,
            "kind": model.kind,
            "backbone": recorded["id"],
            "protocol": manifest_meta.get("protocol"),
            "leaky_split": manifest_meta.get("leaky"),
            "threshold_from": "validation split",
        },
        "models": {"mlp head": scored["report"]},
    }
    if train_rows.any() and val_rows.any():
        y = metrics.labels_from_genders(table["gender"])
        xb = model.descriptors(x)
        baseline = logistic_baseline(xb[train_rows], y[train_rows], seed=seed)
        threshold = choose_threshold(y[val_rows], baseline.predict_proba(xb[val_rows])[:, 1])
        results["models"]["logistic regression"] = metrics.evaluate(
            y[test], baseline.predict_proba(xb[test])[:, 1], threshold, table[test], n_boot=config.evaluation.n_boot, seed=seed
        )
    results |= {"selective": scored["selective"], "age": scored["age"], "predictions": scored["predictions"]}
    results["root"] = manifest_meta.get("root")
    reports = metrics.write_reports(results, work / "reports")
    return EvaluateResult(results, reports)


def cross_evaluate(
    config: Config,
    data_root: str | os.PathLike[str],
    workdir: str | os.PathLike[str] | None = None,
    *,
    head: str | os.PathLike[str] | None = None,
    progress: bool = True,
    backbone: Any = None,
) -> EvaluateResult:
    """Score a head (default: the committed one) on every image of another labelled folder.

    Runs the manifest and extract stages on that folder (in ``<workdir>/cross/<name>``) with the
    head's own backbone; images that cannot be used are counted and listed, never dropped silently.
    """
    import shutil

    from gender_lib import backbones, metrics, modeling
    from gender_lib.backbones import output_of
    from gender_lib.config import paths

    data_root = Path(data_root).expanduser().resolve()
    name = display_path(data_root.stem if data_root.is_file() else data_root.name)  # report names: valid UTF-8
    head_path = _resolve_head(config, head, lambda: paths().default_head)
    model = modeling.load(head_path, cache_root=config.cache_dir())
    meta = model.meta_
    work = _workdir(config, workdir)
    target = work / "cross" / name
    built = manifest(config, target, progress=progress, data_root=data_root, all_test=True)
    engine = backbones.local_engine(config.backbone.engine)
    net = backbone or backbones.from_description(meta["backbone"], engine=engine, cache_root=config.cache_dir())
    try:
        extract(config, target, progress=progress, backbone=net)
    finally:
        if backbone is None:
            net.close()
    data = load_descriptors(config, target, output_of(meta["backbone"]), backbone=meta["backbone"])
    table, manifest_meta = data.table, data.manifest_meta
    scored = _score(model, table, data.x, model.seed, config.evaluation.n_boot, config.evaluation.min_confidence)
    results = {
        "title": f"{head_path.name} on {name} (all images)",
        "meta": {"head": head_path.name, "backbone": meta["backbone"]["id"], "data": name, "threshold_from": "validation split of the training data"},
        "models": {"mlp head": scored["report"]},
        "selective": scored["selective"],
        "age": scored["age"],
        "predictions": scored["predictions"],
        "root": manifest_meta.get("root"),
    }
    from gender_lib.manifest import read_manifest

    excluded = read_manifest(target / "manifest.csv").excluded
    counted = excluded[~excluded["reason"].astype(str).str.endswith("(kept)")] if len(excluded) else excluded
    reports_dir = work / "reports"
    reports = metrics.write_reports(results, reports_dir, name=f"evaluation_{name}")
    listed = reports_dir / f"evaluation_{name}_excluded.csv"
    shutil.copyfile(target / "excluded.csv", listed) if (target / "excluded.csv").is_file() else listed.write_text("path,reason,detail\n")
    log.info("%s: %d images read, %d scored", name, built.n_read, len(table))
    return EvaluateResult(results, reports, int(len(counted)), listed)


def read_evaluation(config: Config, workdir: str | os.PathLike[str] | None = None, name: str = "evaluation") -> dict[str, Any]:
    """The results :func:`evaluate` wrote to ``<workdir>/reports/<name>.json``."""
    path = _workdir(config, workdir) / "reports" / f"{name}.json"
    if not path.is_file():
        raise StageError(f"{path}: no evaluation here yet; run notebooks/04_evaluate.ipynb or `gender-lib evaluate` first")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- predict


@dataclasses.dataclass
class PredictResult:
    rows: list[dict[str, Any]]
    csv: Path | None = None

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Rows for files that could not be used (not an image, damaged, too large, missing, a
        broken link, an unsupported format, too small or blank for ``--no-detect``)."""
        return [r for r in self.rows if r.get("problem")]

    @property
    def other_files(self) -> list[dict[str, Any]]:
        """Rows for files a folder walk left out that are not images (notes, videos): named, not failures."""
        return [r for r in self.rows if r["message"] and not r.get("problem") and not r["message"].startswith("no face found")]

    @property
    def exit_code(self) -> int:
        """0 when every input was read (faces or not), 1 when any could not be read."""
        return 1 if self.failed else 0

    def lines(self) -> list[tuple[str, bool]]:
        """(text, is_problem) per row: faces go to stdout, problems to stderr."""
        out = []
        for row in self.rows:
            if row["message"]:
                out.append((f"{row['path']}: {row['message']}", True))
            else:
                words = {"F": "female", "M": "male"}
                word = words.get(row["label"], row["label"])
                if row["label"] not in words:
                    word += f" ({row['reason']}; would be {words[row['forced_label']]})"
                extra = f", P(correct) {row['p_correct']:.3f}" if row.get("p_correct", "") != "" else ""
                extra += f", age {row['age_group']} (P {row['age_group_p']:.3f})" if row.get("age_group") else ""
                p_text = f"P(female) {row['p_female']:.3f} (threshold {row['threshold']:.3f})"
                out.append((f"{row['path']}: face {row['face']}: {word}, {p_text}{extra}, box {row['box']}", False))
        return out

    def summary(self) -> str:
        """Images with a face + images without one + unreadable files = images; faces counted apart."""
        faces = sum(1 for r in self.rows if not r["message"])
        with_face = len({r["path"] for r in self.rows if not r["message"]})
        no_face = sum(1 for r in self.rows if r["message"].startswith("no face found"))
        images = with_face + no_face + len(self.failed)
        text = f"{images} images: {with_face} with a face ({faces} faces), {no_face} without a face, {len(self.failed)} could not be read"
        others = len(self.other_files)
        text += f"; {others} other file{'s' if others != 1 else ''} skipped" if others else ""
        return text + (f"; wrote {display_path(self.csv)}" if self.csv else "")

    __str__ = summary


def predict(
    config: Config,
    inputs: Sequence[str | os.PathLike[str]],
    *,
    head: str | os.PathLike[str] | None = None,
    detect: bool = True,
    csv: str | os.PathLike[str] | None = None,
    predictor: Any = None,
) -> PredictResult:
    """Label the faces in photos; folders stand for the images below them (head default: the committed one)."""
    from gender_lib import backbones
    from gender_lib import predict as pr

    paths, skipped = pr.expand_inputs(inputs)
    if not paths and not any(s.problem for s in skipped):
        raise StageError(f"no images found in {', '.join(map(display_path, inputs))} (looked for {', '.join(sorted(pr.IMAGE_EXTENSIONS))})")
    own = predictor is None
    # auto is the onnx engine where ONNX Runtime is installed: no TensorFlow import. Without it, a
    # handful of photos run on dlib's own engine, so a model on descriptors still never imports
    # TensorFlow (seconds); more run on Keras, faster per face. Models on dlib's inner levels use Keras anyway.
    engine = backbones.local_engine(config.backbone.engine)
    engine = "dlib" if engine == "auto" and backbones.resolve_engine(engine) == "keras" and len(paths) <= FEW_PHOTOS else engine
    predictor = predictor or pr.Predictor(
        head or config.paths.head_path or None, engine=engine, cache_root=config.cache_dir(), min_confidence=config.evaluation.min_confidence
    )
    try:
        rows = predictor.predict_paths(paths, detect=detect) + pr.skipped_rows(skipped)
    finally:
        if own:
            predictor.close()
    written = pr.write_csv(rows, csv) if csv else None
    return PredictResult(rows, written)


def example_image(config: Config) -> Path:
    """The image notebook 06 predicts by default: the config's, else the first adult woman of the
    embedded sample in whose crop dlib's detector finds a face (a demo should show a box)."""
    from gender_lib.config import paths
    from gender_lib.faces import detect_faces
    from gender_lib.images import load_rgb

    if config.paths.example_image:
        return Path(config.paths.example_image).expanduser()
    sample = paths().sample
    for path in sorted(sample.glob("[3-5]?_F/nm*.jpg")) + sorted(sample.glob("*/*.jpg")):
        if detect_faces(load_rgb(path)):
            return path
    raise UserFileNotFoundError(f"{sample}: no face of the embedded sample could be found; set example_image to a photo")
