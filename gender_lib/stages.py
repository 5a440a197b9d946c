"""The chain, one function per stage; notebooks, the CLI, the pipeline and tests all call these.

Each stage takes a :class:`~gender_lib.config.Config` and a work folder (default: the
config's), reads what the previous stage wrote there, writes its own artefacts atomically,
and returns a result whose ``summary()`` is the rounded, stable text a notebook prints::

    manifest   data folder -> <workdir>/manifest.csv, manifest.json, excluded.csv
    extract    manifest -> descriptors in the shared cache, <workdir>/extraction.json
    train      descriptors -> <workdir>/head.keras + head.json
    evaluate   head + test split -> <workdir>/reports/evaluation.json|md
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

HEAD_NAME = "head.keras"
CLASSIFIER_NAME = "classifier.npz"  # modes features and finetune (see gender_lib.finetune)
#: The work folder's current model, named by the last ``train`` (never picked by file time).
MODEL_RECORD = "model.json"
FEW_PHOTOS = 20  # up to this many photos, predict skips TensorFlow (see stages.predict)


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
    write_json(
        work / "extraction.json",
        {
            "backbone": description,
            "images": int(len(kept)),
            "failures": len(report.failures),
            "manifest_sha256": data.meta.get("manifest_sha256"),
        },
    )
    return ExtractResult(work, description, int(len(kept)), int(x.shape[1]), report, float(np.linalg.norm(x, axis=1).mean()) if len(x) else 0.0)


def load_descriptors(
    config: Config, workdir: str | os.PathLike[str] | None = None, backbone: dict[str, Any] | None = None
) -> tuple[Any, np.ndarray, dict[str, Any], dict[str, Any]]:
    """(manifest rows that have descriptors, descriptors, extraction record, manifest meta) of a work folder.

    ``backbone`` (a head's recorded backbone) must be the one the folder was extracted with.
    """
    from gender_lib import features
    from gender_lib.manifest import read_manifest

    work = _workdir(config, workdir)
    data = read_manifest(work / "manifest.csv")
    info_path = work / "extraction.json"
    if not info_path.is_file():
        raise StageError(f"{info_path}: no descriptors were extracted for this manifest; run notebooks/02_extract.ipynb or `gender-lib extract`")
    info = json.loads(info_path.read_text())
    if info.get("manifest_sha256") != data.meta.get("manifest_sha256"):
        raise StageError(f"{work}: the manifest changed after extraction (extraction.json is for another manifest); run extraction again")
    if backbone is not None and backbone.get("id") != info["backbone"]["id"]:
        raise features.CacheMismatchError(
            f"the head was trained on {backbone.get('id')} descriptors but {work} was extracted with {info['backbone']['id']}; "
            "extract again with that backbone or evaluate a head trained on it"
        )
    used = info["backbone"]
    cache = features.open_cache(used["id"], int(used["dim"]), config.cache_dir())
    table = data.table[data.table["sha256"].map(cache.__contains__)].reset_index(drop=True)
    if len(table) != int(info["images"]):
        raise StageError(
            f"{cache.dir} holds descriptors for {len(table)} of the {info['images']} images {work} was extracted with: "
            "is cache_dir (or GENDER_LIB_CACHE) the one used at extraction? Run extraction again with this cache to fill it"
        )
    return table, cache.get(table["sha256"].tolist()), info, data.meta


# --------------------------------------------------------------------------- train


@dataclasses.dataclass
class TrainResult:
    model: Any
    meta: dict[str, Any]
    path: Path
    replaced: str | None = None  # the work folder's previous current model, where this one replaces another

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
        from gender_lib import head

        return f"{head.describe(self.meta)}\nparameters: {self.model.count_params()}"

    __str__ = summary


def train(config: Config, workdir: str | os.PathLike[str] | None = None, *, output: str | os.PathLike[str] | None = None, progress: bool = True) -> TrainResult:
    """Train on the train split as ``config.head.mode`` says, choose the threshold on val, save
    (default ``<workdir>/head.keras``, or ``<workdir>/classifier.npz`` for modes features and finetune).

    Modes features and finetune need the backbone's level-2 maps: extracted here first when the
    work folder holds another output (cached, so once per image)."""
    from gender_lib import head, metrics

    work = _workdir(config, workdir)
    mode = config.head.mode
    suffix = ".keras" if mode == "frozen" else ".npz"
    if output is not None and Path(output).suffix != suffix:  # before minutes of training, not after
        raise StageError(f"{output}: mode {mode} saves a {suffix} file; name one (-o ...{suffix}) or choose another --mode")
    ensure_extracted(config, work, progress=progress)
    table, x, info, manifest_meta = load_descriptors(config, work)
    y = metrics.labels_from_genders(table["gender"])
    train_rows, val_rows = (table["split"] == "train").to_numpy(), (table["split"] == "val").to_numpy()
    record: dict[str, Any] = {}
    if mode == "frozen":
        model, history = head.train_head(x[train_rows], y[train_rows], x[val_rows], y[val_rows], config.head, seed=config.seed)
    else:
        from gender_lib import finetune

        model, record = finetune.train(
            x[train_rows], y[train_rows], x[val_rows], y[val_rows], mode, config.head, seed=config.seed, cache_root=config.cache_dir(), progress=progress
        )
        history = record["history"]
    p_val = head.predict_proba(model, x[val_rows])
    threshold = head.choose_threshold(y[val_rows], p_val)
    xb = baseline_inputs(x, info, config)
    baseline = head.logistic_baseline(xb[train_rows], y[train_rows], seed=config.seed)
    val_metrics = metrics.classification_metrics(y[val_rows], p_val, threshold)
    baseline_val = metrics.classification_metrics(y[val_rows], baseline.predict_proba(xb[val_rows])[:, 1], 0.5)
    meta = {
        "mode": mode,
        "backbone": info["backbone"],
        "descriptor_dim": int(x.shape[1]),
        "preprocessing": info["backbone"].get("preprocessing"),
        "manifest": {
            "sha256": manifest_meta.get("manifest_sha256"),
            "protocol": manifest_meta.get("protocol"),
            "leaky": manifest_meta.get("leaky"),
            "seed": manifest_meta.get("seed"),
            "layout": manifest_meta.get("layout"),
            "data": Path(manifest_meta.get("root", "")).name,
            "sample_size": manifest_meta.get("sample_size", 0),
        },
        "counts": {s: int((table["split"] == s).sum()) for s in ("train", "val", "test")},
        "threshold": threshold,
        "seed": config.seed,
        "config": config.head.to_dict(),
        "val_metrics": {k: val_metrics[k] for k in ("accuracy", "balanced_accuracy", "roc_auc", "ece")} | {"macro_f1": val_metrics["macro"]["f1"]},
        "baseline_val_metrics": {"accuracy": baseline_val["accuracy"], "macro_f1": baseline_val["macro"]["f1"], "roc_auc": baseline_val["roc_auc"]},
        "history": history,
    }
    if mode == "frozen":
        path = head.save_head(model, meta, Path(output) if output else work / HEAD_NAME)
    else:
        from gender_lib import finetune

        meta |= {"flip_tta": config.head.flip_tta, "train_seconds": round(record["train_seconds"], 1)}
        path = finetune.save(model, record, meta, Path(output) if output else work / CLASSIFIER_NAME)
    return TrainResult(model, json.loads(path.with_suffix(".json").read_text()), path, _record_model(work, path, mode))


def _record_model(work: Path, path: Path, mode: str) -> str | None:
    """Name ``path`` the current model of ``work`` (``model.json``); returns what it replaces, if another."""
    from gender_lib.fileio import write_json

    record_path = work / MODEL_RECORD
    previous = json.loads(record_path.read_text()) if record_path.is_file() else None
    path = path.resolve()
    shown = path.relative_to(work.resolve()).as_posix() if path.is_relative_to(work.resolve()) else str(path)
    write_json(record_path, {"path": shown, "mode": mode})
    if previous and (previous.get("path") != shown or previous.get("mode") != mode):
        return f"{previous.get('path')} (mode {previous.get('mode')})"
    return None


def output_kind(description: dict[str, Any]) -> str:
    """``level2`` or ``descriptor``: what a recorded backbone returns (see :data:`gender_lib.backbones.OUTPUTS`)."""
    return "level2" if str(description.get("output", "")).startswith("level2") else "descriptor"


def ensure_extracted(config: Config, workdir: str | os.PathLike[str] | None = None, *, progress: bool = True, backbone: dict[str, Any] | None = None) -> None:
    """Extract the kind of output ``config.head.mode`` reads (descriptors, or level-2 maps), or that
    the recorded ``backbone`` (a head's) returns, where the work folder's last extraction (notebook
    02's) was of the other kind. Cached by content, so switching modes costs once per image; a folder extracted with
    another backbone of the same kind is left alone (the stages that read it say so)."""
    from gender_lib import backbones

    work = _workdir(config, workdir)
    info = work / "extraction.json"
    if not info.is_file():
        return  # nothing extracted yet: the stage that reads says to run extraction (notebook 02)
    recorded = json.loads(info.read_text())["backbone"]
    done = output_kind(recorded)
    wanted_kind = output_kind(backbone) if backbone is not None else backbones.output_for(config.head.mode)
    if done == wanted_kind:
        return
    wanted = backbones.from_config(config) if backbone is None else backbones.from_description(backbone, cache_root=config.cache_dir())
    ignore = ("id", "engine", "output", "dim")
    if {k: v for k, v in wanted.describe().items() if k not in ignore} != {k: v for k, v in recorded.items() if k not in ignore}:
        wanted.close()  # another network or preprocessing, not just the other output: the reading stage says so
        return
    try:  # said at warning level: a stage that extracts is never silent about it
        log.warning(
            "%s: extracting the %s output that %s reads (cached by image: only the first time costs)",
            work,
            wanted_kind,
            f"mode {config.head.mode}" if backbone is None else "the head",
        )
        extract(config, work, progress=progress, backbone=wanted)
    finally:
        wanted.close()


def baseline_inputs(x: np.ndarray, info: dict[str, Any], config: Config) -> np.ndarray:
    """What the logistic-regression baseline reads: the descriptors, also where ``x`` holds
    level-2 maps (then the frozen network's descriptor of each face, as in mode frozen)."""
    if output_kind(info["backbone"]) != "level2":
        return x
    from gender_lib import finetune

    return finetune.frozen_descriptors(x, config.cache_dir())


def workdir_head(work: Path) -> Path:
    """The current model of ``work``: the one its ``model.json`` names (written by every ``train``).

    Without a record, the one model file there is (``head.keras`` or ``classifier.npz``); both is a
    :class:`StageError` asking to name one, never a guess by file time."""
    record = work / MODEL_RECORD
    if record.is_file():
        return (work / json.loads(record.read_text())["path"]).resolve()
    found = [p for p in (work / HEAD_NAME, work / CLASSIFIER_NAME) if p.is_file()]
    if len(found) > 1:
        raise StageError(f"{work} holds both {HEAD_NAME} and {CLASSIFIER_NAME} and no {MODEL_RECORD} saying which is current: name one with --head (head_path)")
    return found[0] if found else work / HEAD_NAME


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
        if self.excluded_list is not None:
            lines.append(
                f"left out: {self.excluded} images that could not be used (corrupt, missing, unlabelled or duplicate); listed in {self.excluded_list.name}"
            )
        return "\n".join(lines)

    __str__ = summary


def _score(model: Any, meta: dict[str, Any], table: Any, x: np.ndarray, seed: int, n_boot: int) -> dict[str, Any]:
    from gender_lib import head, metrics

    y = metrics.labels_from_genders(table["gender"])
    p = head.predict_proba(model, x)
    return {
        "report": metrics.evaluate(y, p, meta["threshold"], table, n_boot=n_boot, seed=seed),
        "predictions": {"path": table["path"].tolist(), "gender": table["gender"].tolist(), "p_female": p.round(6).tolist()},
    }


def _resolve_head(config: Config, head: str | os.PathLike[str] | None, fallback: Path) -> Path:
    return Path(head or config.paths.head_path or fallback).expanduser().resolve()


def evaluate(config: Config, workdir: str | os.PathLike[str] | None = None, *, head: str | os.PathLike[str] | None = None) -> EvaluateResult:
    """Score a head on the work folder's **test** split, beside a logistic-regression baseline.

    The head defaults to the one trained last in this work folder (``head.keras`` or
    ``classifier.npz``, see :func:`workdir_head`): a head
    trained elsewhere may have seen these test people. The threshold is the head's (chosen on
    validation at training time); the baseline is refitted on the same train split (seconds).
    """
    from gender_lib import finetune, metrics
    from gender_lib import head as hd

    work = _workdir(config, workdir)
    head_path = _resolve_head(config, head, workdir_head(work))
    model, meta = finetune.load_any(head_path, cache_root=config.cache_dir())
    ensure_extracted(config, work, progress=False, backbone=meta["backbone"])  # the head's kind of output, where missing
    table, x, _, manifest_meta = load_descriptors(config, work, backbone=meta["backbone"])
    trained_on = (meta.get("manifest") or {}).get("sha256")
    if trained_on != manifest_meta.get("manifest_sha256"):
        message = (
            f"{head_path} was trained on another manifest than {work}'s (the split may have changed since): its test split may hold people the head trained on"
        )
        if head_path == workdir_head(work):
            raise StageError(message + "; train again (notebook 03 or `gender-lib train`)")
        log.warning(message)
    split = table["split"].to_numpy()
    test, train_rows, val_rows = split == "test", split == "train", split == "val"
    if not test.any():
        raise StageError(f"{work}: the manifest has no test split")
    seed = int(meta.get("seed", config.seed))
    scored = _score(model, meta, table[test], x[test], seed, config.evaluation.n_boot)
    results: dict[str, Any] = {
        "title": f"{head_path.name} on {Path(manifest_meta['root']).name} (test split)",
        "meta": {
            "head": head_path.name,
            "backbone": meta["backbone"]["id"],
            "protocol": manifest_meta.get("protocol"),
            "leaky_split": manifest_meta.get("leaky"),
            "threshold_from": "validation split",
        },
        "models": {"mlp head": scored["report"]},
    }
    if train_rows.any() and val_rows.any():
        y = metrics.labels_from_genders(table["gender"])
        xb = baseline_inputs(x, {"backbone": meta["backbone"]}, config)
        baseline = hd.logistic_baseline(xb[train_rows], y[train_rows], seed=seed)
        threshold = hd.choose_threshold(y[val_rows], baseline.predict_proba(xb[val_rows])[:, 1])
        results["models"]["logistic regression"] = metrics.evaluate(
            y[test], baseline.predict_proba(xb[test])[:, 1], threshold, table[test], n_boot=config.evaluation.n_boot, seed=seed
        )
    results["predictions"] = scored["predictions"]
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

    from gender_lib import backbones, finetune, metrics
    from gender_lib.config import paths

    data_root = Path(data_root).expanduser().resolve()
    name = display_path(data_root.stem if data_root.is_file() else data_root.name)  # report names: valid UTF-8
    head_path = _resolve_head(config, head, paths().default_head)
    model, meta = finetune.load_any(head_path, cache_root=config.cache_dir())
    work = _workdir(config, workdir)
    target = work / "cross" / name
    built = manifest(config, target, progress=progress, data_root=data_root, all_test=True)
    engine = "keras" if config.backbone.engine == "ray" else config.backbone.engine
    net = backbone or backbones.from_description(meta["backbone"], engine=engine, cache_root=config.cache_dir())
    try:
        extract(config, target, progress=progress, backbone=net)
    finally:
        if backbone is None:
            net.close()
    table, x, _, manifest_meta = load_descriptors(config, target, backbone=meta["backbone"])
    scored = _score(model, meta, table, x, int(meta.get("seed", config.seed)), config.evaluation.n_boot)
    results = {
        "title": f"{head_path.name} on {name} (all images)",
        "meta": {"head": head_path.name, "backbone": meta["backbone"]["id"], "data": name, "threshold_from": "validation split of the training data"},
        "models": {"mlp head": scored["report"]},
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
                word = "female" if row["label"] == "F" else "male"
                out.append(
                    (
                        f"{row['path']}: face {row['face']}: {word}, P(female) {row['p_female']:.3f} (threshold {row['threshold']:.3f}), box {row['box']}",
                        False,
                    )
                )
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
    from gender_lib import predict as pr

    paths, skipped = pr.expand_inputs(inputs)
    if not paths and not any(s.problem for s in skipped):
        raise StageError(f"no images found in {', '.join(map(display_path, inputs))} (looked for {', '.join(sorted(pr.IMAGE_EXTENSIONS))})")
    own = predictor is None
    # A handful of photos with a frozen-descriptor head (checkpoints/dlib_gender_head.keras): dlib's own
    # engine, so the command never imports TensorFlow (seconds); more, or a features/finetune model
    # (the default; it runs dlib's inner levels, in Keras only): the Keras engine.
    engine = "keras" if config.backbone.engine == "ray" else config.backbone.engine
    engine = "dlib" if len(paths) <= FEW_PHOTOS and engine == "keras" else engine
    predictor = predictor or pr.Predictor(head or config.paths.head_path or None, engine=engine, cache_root=config.cache_dir())
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
